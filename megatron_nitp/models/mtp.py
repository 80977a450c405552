"""Multi-token prediction (DeepSeek-V3) next to NITP: megatron-core's MultiTokenPredictionBlock.

The block is built as Megatron-LM's gpt_builders builds it (get_gpt_mtp_block_spec from the spec
of the model's last decoder layer) and lives on the last pipeline stage. megatron-core applies it
inside GPTModel._postprocess to the decoder output, i.e. the main model's h_t after the final
norm (with MTP the final norm sits with the last decoder layer), which is also what the NITP head
reads (nitp/objective.py): the two objectives share h_t and nothing else. The MTP losses reach
the gradients through megatron's MTPLossAutoScaler (scaled by the schedule) and the log through
its MTPLossLoggingHelper tracker, read here as Megatron-LM's training loop reads it.
"""

import torch

# megatron-core is imported inside the functions: validation (mtp_errors) runs before it is needed.

MTP_PREFIX = "mtp."  # state-dict prefix of the MTP layers (training only, like the NITP head)


def mtp_loss_names(num_layers):
    """Megatron-LM's log names (MTPLossLoggingHelper.track_mtp_metrics)."""
    return [f"mtp_{i + 1} loss" for i in range(num_layers or 0)]


def mtp_errors(args):
    n = args.mtp_num_layers
    if n is None:
        return []
    if n < 1:
        return [f"--mtp-num-layers {n}: must be >= 1 (omit it to turn MTP off)"]
    if args.position_embedding_type not in ("rope", "none"):
        return [f"--mtp-num-layers: needs --position-embedding-type rope or none (got "
                f"{args.position_embedding_type}), as in Megatron-LM"]
    if (args.recompute_granularity == "full" and args.recompute_method == "uniform"
            and args.recompute_num_layers != 1):
        # megatron-core asserts it in the first forward (block: it warns and skips MTP's).
        return [f"--recompute-num-layers {args.recompute_num_layers}: must be 1 with "
                "--mtp-num-layers and --recompute-method uniform (megatron-core's MTP recompute)"]
    return []


def _last_decoder_layer_spec(config, use_te):
    """The spec of the model's last decoder layer (dense or MoE), whichever stage holds it."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_decoder_layer_specs,
        get_gpt_layer_local_spec,
    )

    if config.num_moe_experts:
        return get_gpt_decoder_layer_specs(config, use_transformer_engine=use_te,
                                           normalization=config.normalization)[-1]
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return get_gpt_layer_with_transformer_engine_spec(
            qk_layernorm=config.qk_layernorm, multi_latent_attention=config.multi_latent_attention)
    return get_gpt_layer_local_spec(normalization=config.normalization,
                                    qk_layernorm=config.qk_layernorm,
                                    multi_latent_attention=config.multi_latent_attention)


def get_mtp_spec(config, use_te: bool, vp_stage=None, pp_rank=None, local_fixups=None):
    """MultiTokenPredictionBlockSubmodules for this chunk, or None (no MTP on it).
    local_fixups: what specs.py applies to every local spec (SP norms, MLA attention)."""
    if config.mtp_num_layers is None:
        return None
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

    block = get_gpt_mtp_block_spec(config, _last_decoder_layer_spec(config, use_te),
                                   use_transformer_engine=use_te, vp_stage=vp_stage,
                                   pp_rank=pp_rank)
    if block is None or use_te or local_fixups is None:
        return block
    return local_fixups(block)


def take_mtp_losses(num_microbatches):
    """{"mtp_1 loss": mean, ...} of the step just run (mean over microbatches and DP x CP, as
    Megatron-LM logs it), and reset megatron's tracker; {} when nothing was tracked (no MTP, a
    stage without it, or an evaluation: megatron tracks training forwards only)."""
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    tracker = MTPLossLoggingHelper.tracker
    if "values" not in tracker or tracker.get("avg_group") is None:
        return {}
    values = tracker["values"].clone()
    group = tracker["avg_group"]
    # megatron's reduce_loss_in_tracker averages with ReduceOp.AVG, which gloo lacks.
    torch.distributed.all_reduce(values, group=group)
    values = (values / (group.size() * max(num_microbatches, 1))).tolist()
    MTPLossLoggingHelper.clean_loss_in_tracker()
    return {name: v for name, v in zip(mtp_loss_names(len(values)), values)}


def drop_mtp(state_dict):
    """The state dict without the MTP layers (HF export: transformers has no MTP module)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(MTP_PREFIX)}


def mtp_tensors(state_dict):
    return {k: v for k, v in state_dict.items() if k.startswith(MTP_PREFIX)}
