"""The valid range of every numeric flag, checked in one loop before anything else is validated.

A value outside its range would otherwise reach megatron-core as a bare assertion (`--lr -1`
blamed on --min-lr), a torch traceback (`--lr nan`) or a silently odd model; here it is one
ConfigError naming the flag and the range. Every float flag must also be finite, whether or not
it is in the table.
"""

import math

# dest: (low, high, low_inclusive, high_inclusive); None = unbounded on that side.
AT_LEAST_0 = (0, None, True, True)
AT_LEAST_1 = (1, None, True, True)
POSITIVE = (0, None, False, True)
FRACTION = (0, 1, True, False)  # [0, 1)

RANGES = {
    # model
    "num_layers": AT_LEAST_1, "hidden_size": AT_LEAST_1, "ffn_hidden_size": AT_LEAST_1,
    "num_attention_heads": AT_LEAST_1, "num_query_groups": AT_LEAST_1,
    "kv_channels": AT_LEAST_1, "seq_length": AT_LEAST_1, "max_position_embeddings": AT_LEAST_1,
    "norm_epsilon": POSITIVE, "rotary_base": AT_LEAST_1, "init_method_std": POSITIVE,
    "attention_dropout": FRACTION, "hidden_dropout": FRACTION, "vocab_size": AT_LEAST_1,
    "make_vocab_size_divisible_by": AT_LEAST_1,
    "num_experts": AT_LEAST_1, "moe_ffn_hidden_size": AT_LEAST_1,
    "moe_shared_expert_intermediate_size": AT_LEAST_1, "moe_aux_loss_coeff": AT_LEAST_0,
    "rotary_percent": (0, 1, False, True), "moe_router_topk_scaling_factor": POSITIVE,
    "moe_router_bias_update_rate": AT_LEAST_0, "moe_router_num_groups": AT_LEAST_1,
    "moe_router_group_topk": AT_LEAST_1, "moe_z_loss_coeff": AT_LEAST_0,
    "moe_expert_capacity_factor": POSITIVE,
    "q_lora_rank": AT_LEAST_1, "kv_lora_rank": AT_LEAST_1, "qk_head_dim": AT_LEAST_1,
    "qk_pos_emb_head_dim": AT_LEAST_1, "v_head_dim": AT_LEAST_1,
    "rotary_scaling_factor": POSITIVE, "mscale": POSITIVE, "mscale_all_dim": AT_LEAST_0,
    # NITP
    "nitp_loss_weight": AT_LEAST_0, "nitp_start_step": AT_LEAST_0,
    "nitp_head_ffn_multiplier": AT_LEAST_1, "nitp_metrics_interval": AT_LEAST_0,
    "nitp_metrics_num_pairs": AT_LEAST_1,
    # training, optimizer, schedule
    "micro_batch_size": AT_LEAST_1, "global_batch_size": AT_LEAST_1, "train_iters": AT_LEAST_0,
    "seed": AT_LEAST_0, "recompute_num_layers": AT_LEAST_1,
    "lr": AT_LEAST_0, "min_lr": AT_LEAST_0, "lr_warmup_iters": AT_LEAST_0,
    "lr_wsd_decay_iters": AT_LEAST_1, "train_samples": AT_LEAST_1,
    "lr_decay_samples": AT_LEAST_1, "lr_warmup_samples": AT_LEAST_0,
    "lr_warmup_fraction": FRACTION, "lr_warmup_init": AT_LEAST_0,
    "decoupled_lr": AT_LEAST_0, "decoupled_min_lr": AT_LEAST_0, "weight_decay": AT_LEAST_0,
    "adam_beta1": FRACTION, "adam_beta2": FRACTION, "adam_eps": POSITIVE,
    "clip_grad": AT_LEAST_0, "max_bad_steps": AT_LEAST_1,
    # parallelism
    "tensor_model_parallel_size": AT_LEAST_1, "pipeline_model_parallel_size": AT_LEAST_1,
    "num_layers_per_virtual_pipeline_stage": AT_LEAST_1, "expert_model_parallel_size": AT_LEAST_1,
    "context_parallel_size": AT_LEAST_1, "distributed_timeout_minutes": AT_LEAST_1,
    "num_virtual_stages_per_pipeline_rank": AT_LEAST_1,
    "decoder_first_pipeline_num_layers": AT_LEAST_1, "decoder_last_pipeline_num_layers": AT_LEAST_1,
    "mtp_num_layers": AT_LEAST_1, "mtp_loss_scaling_factor": AT_LEAST_0,
    # checkpoints, exits, logs
    "num_workers": AT_LEAST_0,
    "save_interval": AT_LEAST_1, "keep_last_n_checkpoints": AT_LEAST_1,
    "exit_interval": AT_LEAST_1, "exit_duration_in_mins": POSITIVE,
    # --eval-iters 0 is Megatron-LM's way to skip evaluation.
    "eval_interval": AT_LEAST_1, "eval_iters": AT_LEAST_0, "log_interval": AT_LEAST_1,
}


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _describe(low, high, low_inc, high_inc) -> str:
    if (low, high, low_inc) == (0, None, False):
        return "positive (> 0)"
    if high is None:
        return f"{'>=' if low_inc else '>'} {low}"
    return f"in {'[' if low_inc else '('}{low}, {high}{']' if high_inc else ')'}"


def range_errors(args):
    """Yield one message per out-of-range numeric flag (None values are 'not given')."""
    for dest, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            bounds = RANGES.get(dest)
            valid = f"a finite number {_describe(*bounds)}" if bounds else "a finite number"
            yield f"{flag(dest)} {value}: must be {valid}"
    for dest, (low, high, low_inc, high_inc) in RANGES.items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue  # reported above
        too_low = value < low if low_inc else value <= low
        too_high = high is not None and (value > high if high_inc else value >= high)
        if too_low or too_high:
            yield f"{flag(dest)} {value}: must be {_describe(low, high, low_inc, high_inc)}"
