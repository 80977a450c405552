"""Attention and MoE-routing options of the Megatron-LM model families (Qwen3, DeepSeek-V3).

Flags -> megatron-core TransformerConfig fields (the modules are megatron-core's: the local and
TE specs build q/k layernorm from `config.qk_layernorm`, the router reads the moe_router_*
fields, and `finalize_model_grads` all-reduces q/k-layernorm grads over TP and updates the
expert bias). `option_errors` states, as one line naming the flag, the cross-flag rules that
TransformerConfig.__post_init__ would otherwise raise as a bare assertion mid-start-up.
"""

from .moe_parallel import moe_parallel_errors


def _get(args, name, default=None):
    value = getattr(args, name, default)
    return default if value is None else value


def attention_config(args) -> dict:
    bias = bool(_get(args, "add_bias_linear", False))
    return dict(
        add_bias_linear=bias,
        # Megatron-LM keeps the two in sync: biases everywhere include the QKV projection.
        add_qkv_bias=bias or bool(_get(args, "add_qkv_bias", False)),
        qk_layernorm=bool(_get(args, "qk_layernorm", False)),
        layernorm_zero_centered_gamma=bool(_get(args, "layernorm_zero_centered_gamma", False)),
    )


def mla_config(args) -> dict:
    """MLATransformerConfig's extra fields (empty without --multi-latent-attention). The RoPE
    type stays MLATransformerConfig's default (YaRN), as in Megatron-LM without --rope-type."""
    if not _get(args, "multi_latent_attention", False):
        return {}
    return dict(
        multi_latent_attention=True,
        q_lora_rank=_get(args, "q_lora_rank"),
        kv_lora_rank=args.kv_lora_rank, qk_head_dim=args.qk_head_dim,
        qk_pos_emb_head_dim=args.qk_pos_emb_head_dim, v_head_dim=args.v_head_dim,
        rotary_base=args.rotary_base, rotary_percent=_get(args, "rotary_percent", 1.0),
        rotary_scaling_factor=args.rotary_scaling_factor, mscale=args.mscale,
        mscale_all_dim=args.mscale_all_dim,
        original_max_position_embeddings=args.max_position_embeddings,
    )


def moe_routing_config(args) -> dict:
    return dict(
        moe_router_pre_softmax=bool(_get(args, "moe_router_pre_softmax", True)),
        moe_router_score_function=_get(args, "moe_router_score_function", "softmax"),
        moe_router_topk_scaling_factor=_get(args, "moe_router_topk_scaling_factor"),
        moe_router_enable_expert_bias=bool(_get(args, "moe_router_enable_expert_bias", False)),
        moe_router_bias_update_rate=_get(args, "moe_router_bias_update_rate", 1e-3),
        moe_router_num_groups=_get(args, "moe_router_num_groups"),
        moe_router_group_topk=_get(args, "moe_router_group_topk"),
        moe_z_loss_coeff=_get(args, "moe_z_loss_coeff"),
        moe_expert_capacity_factor=_get(args, "moe_expert_capacity_factor"),
        moe_token_drop_policy=_get(args, "moe_token_drop_policy", "probs"),
        moe_pad_expert_input_to_capacity=bool(
            _get(args, "moe_pad_expert_input_to_capacity", False)),
    )


# Flags meaningful only with --num-experts: (flag, is set).
def moe_routing_flags_set(args):
    return [f for f, v in (
        ("--moe-router-score-function", _get(args, "moe_router_score_function") == "sigmoid"),
        ("--moe-router-pre-softmax", _get(args, "moe_router_pre_softmax", False)),
        ("--moe-router-topk-scaling-factor", _get(args, "moe_router_topk_scaling_factor")),
        ("--moe-router-enable-expert-bias", _get(args, "moe_router_enable_expert_bias")),
        ("--moe-router-num-groups", _get(args, "moe_router_num_groups")),
        ("--moe-router-group-topk", _get(args, "moe_router_group_topk")),
        ("--moe-z-loss-coeff", _get(args, "moe_z_loss_coeff")),
        ("--moe-expert-capacity-factor", _get(args, "moe_expert_capacity_factor")),
        ("--moe-pad-expert-input-to-capacity", _get(args, "moe_pad_expert_input_to_capacity")),
        ("--moe-router-force-load-balancing", _get(args, "moe_router_force_load_balancing")),
    ) if v]


def option_errors(args, transformer_impl):
    """One message per invalid combination (the first is raised by validation)."""
    if _get(args, "layernorm_zero_centered_gamma", False) and transformer_impl == "local":
        yield ("--apply-layernorm-1p: torch's norms (--transformer-impl local) have no "
               "zero-centred weight; use --transformer-impl transformer_engine")
    if _get(args, "multi_latent_attention", False):
        if _get(args, "group_query_attention", False):
            yield ("--multi-latent-attention: excludes --group-query-attention (the KV latent "
                   "replaces the KV heads), as in Megatron-LM")
        if transformer_impl == "local" and _get(args, "tensor_model_parallel_size", 1) > 1:
            # The local spec's down-projection is column-parallel and gathered; the RoPE key
            # part then feeds each rank's own heads, and the gather's backward keeps only this
            # rank's share of its gradient (TE's duplicated down-projection does not). Measured
            # on the CPU suite: gradients off by up to 7e-3 relative at TP2, losses equal.
            yield ("--multi-latent-attention: with --transformer-impl local needs "
                   "--tensor-model-parallel-size 1 (megatron-core 0.16.1's local MLA gets part of "
                   "the gradient wrong at TP > 1); use transformer_engine for TP")
        if _get(args, "position_embedding_type", "rope") != "rope":
            yield ("--multi-latent-attention: needs --position-embedding-type rope (MLA applies "
                   "its own YaRN RoPE)")
    yield from moe_parallel_errors(args, transformer_impl)
    experts = _get(args, "num_experts", 0)
    if not experts:
        flags = moe_routing_flags_set(args)
        if flags:
            yield f"{flags[0]}: given without --num-experts"
        return
    if _get(args, "add_bias_linear", False) and _get(args, "moe_shared_expert_intermediate_size"):
        yield ("--add-bias-linear: megatron-core's shared expert has no biases; drop "
               "--moe-shared-expert-intermediate-size or --add-bias-linear")
    score = _get(args, "moe_router_score_function", "softmax")
    lb = _get(args, "moe_router_load_balancing_type", "aux_loss")
    if _get(args, "moe_router_enable_expert_bias", False) and score != "sigmoid":
        yield ("--moe-router-enable-expert-bias: needs --moe-router-score-function sigmoid "
               "(megatron-core's aux-loss-free balancing)")
    if (_get(args, "moe_router_topk", 2) == 1 and score == "softmax"
            and not _get(args, "moe_router_pre_softmax", True) and lb != "sinkhorn"):
        yield ("--moe-router-topk 1: without --moe-router-pre-softmax the softmax over the one "
               "chosen expert is 1 and the router gets no gradient; add --moe-router-pre-softmax")
    groups, group_topk = _get(args, "moe_router_num_groups"), _get(args, "moe_router_group_topk")
    if group_topk and not groups:
        yield "--moe-router-group-topk: needs --moe-router-num-groups"
    if groups and not group_topk:
        yield "--moe-router-num-groups: needs --moe-router-group-topk (groups each token uses)"
    if groups and group_topk:
        if experts % groups:
            yield (f"--moe-router-num-groups {groups}: must divide --num-experts {experts}")
        elif group_topk > groups:
            yield (f"--moe-router-group-topk {group_topk}: must be <= --moe-router-num-groups "
                   f"{groups}")
        elif _get(args, "moe_router_topk", 2) > group_topk * (experts // groups):
            yield (f"--moe-router-topk {args.moe_router_topk}: more than the "
                   f"{group_topk} x {experts // groups} experts the selected groups hold")
    capacity = _get(args, "moe_expert_capacity_factor")
    if capacity is not None and lb == "sinkhorn":
        yield ("--moe-expert-capacity-factor: megatron-core drops tokens only with aux_loss, "
               "seq_aux_loss, global_aux_loss or none load balancing (not sinkhorn)")
    if _get(args, "moe_pad_expert_input_to_capacity", False) and capacity is None:
        yield "--moe-pad-expert-input-to-capacity: needs --moe-expert-capacity-factor"
