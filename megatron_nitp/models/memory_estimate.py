"""Per-rank memory estimate in the manner of Megatron-LM 0.16.1's theoretical memory report
(megatron/training/theoretical_memory_usage.py), plus what NITP adds.

The backbone numbers follow Megatron-LM's formulas, so a user compares like with like:
  weights + grads + optimizer: the most loaded model shard (first pipeline stage: its layers,
    the MTP block and the embedding; the output layer too when untied and PP = 1), divided by
    TP, times 18 bytes per parameter (bf16 weight 2 + fp32 grad 4 + fp32 master, Adam m, v 12),
    or 6 + 12 / DP with the distributed optimizer. Megatron-LM's count of a layer has no biases
    and does not divide the experts by EP (it is an upper bound for MoE).
  activations: Korthikanti et al. 2022 (arXiv 2205.05198) Table 2 per layer, for the first
    stage with PP microbatches in flight; with sequence parallelism and selective recompute
    s b h (18 + 4 f / h) per layer over TP, otherwise s b h (10 + 24 / TP) per layer and a 5 %
    margin, as Megatron-LM chooses between the two.
NITP: the head P (3 mult d^2 parameters, TP-sharded, on the last pipeline stage) costs the same
bytes per parameter; its activations per microbatch are the stored input, gate/up outputs and
SwiGLU output (2 bytes each: s b d (1 + 3 mult) / TP), only the input with --nitp-head-recompute,
and the detached target z_{t+1} (s b d, 2 bytes).

Input: the run's RunConfig (its resolved data_parallel_size and padded_vocab_size included), read
plainly as in param_count.py.
"""

from .param_count import moe_layer_pattern, nitp_uses_head

MIB = 1024 * 1024


def _virtual_pipeline_size(args):
    chunk = args.num_layers_per_virtual_pipeline_stage
    if not chunk:
        return None
    return args.num_layers // args.pipeline_model_parallel_size // chunk


def megatron_layer_params(args):
    """(dense layer, MoE layer) parameters as Megatron-LM's report counts them (no biases)."""
    d, nh, hd = args.hidden_size, args.num_attention_heads, args.kv_channels
    groups = args.num_query_groups if args.group_query_attention else nh
    norm = 1 if args.normalization == "RMSNorm" else 2
    glu = 1.5 if args.swiglu else 1.0
    if args.multi_latent_attention:
        qk = args.qk_head_dim + args.qk_pos_emb_head_dim
        q_lora, kv_lora = args.q_lora_rank, args.kv_lora_rank
        q = d * nh * qk if q_lora is None else q_lora * (d + nh * qk + norm)
        kv = kv_lora * (d + nh * (args.qk_head_dim + args.v_head_dim) + norm)
        attention = q + kv + d * args.qk_pos_emb_head_dim + nh * args.v_head_dim * d
    else:
        # Q and O (nh hd each) plus K and V (groups hd each), relative to d x d.
        attention = 2 * d * d * (1 + groups / nh) * (nh * hd / d)
    ffn = args.ffn_hidden_size
    dense = 2 * d * (ffn * glu + norm) + attention
    experts = args.num_experts or 1
    moe_ffn = args.moe_ffn_hidden_size if args.num_experts else 0
    shared = args.moe_shared_expert_intermediate_size or 0
    moe = 2 * d * (moe_ffn * experts * glu + shared * glu + norm) + attention
    return dense, moe


def megatron_weight_and_optimizer(args):
    """(parameters on the most loaded shard, their bytes with grads and optimizer state)."""
    L, d = args.num_layers, args.hidden_size
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    norm = 1 if args.normalization == "RMSNorm" else 2
    dense, moe = megatron_layer_params(args)
    pattern = moe_layer_pattern(args.moe_layer_freq, L) if args.num_experts else [0] * L
    n_moe = sum(pattern)
    block = dense * (L - n_moe) + moe * n_moe + norm * d
    mtp_block = (args.mtp_num_layers or 0) * (moe if pattern[-1] else dense)
    embedding = d * args.padded_vocab_size
    shard = (block / pp + mtp_block + embedding) / tp
    if args.untie_embeddings_and_output_weights and pp == 1:
        shard += embedding / tp
    return shard, shard * _bytes_per_param(args)


def _bytes_per_param(args):
    """bf16 weight + fp32 grad + fp32 master, Adam m, v; the last 12 over DP when distributed."""
    return 6 + 12 / args.data_parallel_size if args.use_distributed_optimizer else 18


def megatron_activation(args, num_microbatches=None):
    """Activation bytes of the first pipeline stage, Megatron-LM's choice of formula."""
    s, b = args.seq_length, args.micro_batch_size
    d, L = args.hidden_size, args.num_layers
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    vpp = _virtual_pipeline_size(args)
    ffn, vocab = args.ffn_hidden_size, args.padded_vocab_size
    sbh = s * b * d
    with_sp = args.sequence_parallel and args.recompute_granularity == "selective"
    per_layer = sbh * (18 + 4 * ffn / d) if with_sp else sbh * (10 + 24 / tp)
    total = per_layer * L + 8 * s * b * pp + sbh * pp  # + embedding input and its dropout
    if vpp is not None:
        total *= 1 + (pp - 1) / (pp * vpp)
    elif pp > 1 and num_microbatches is not None:
        total *= min(1, num_microbatches / pp)
    if with_sp:
        if pp == 1:
            total += sbh * 4 * (1 + vocab / d)  # output layer input and the cross entropy
        return total / tp
    if pp == 1:
        total += (s * b * vocab / tp + sbh) * 2  # logits and the final norm's output
    return total * 1.05


def nitp_overhead(args):
    """What the NITP head adds on the last pipeline stage (zeros when there is no head)."""
    if not (args.nitp and nitp_uses_head(args)):
        return dict(params_per_rank=0, weight_and_optimizer_bytes=0, activation_bytes=0)
    d, m = args.hidden_size, args.nitp_head_ffn_multiplier
    tp, s, b = args.tensor_model_parallel_size, args.seq_length, args.micro_batch_size
    params = 3 * m * d * d / tp
    stored = 1 if args.nitp_head_recompute else 1 + 3 * m
    activation = 2 * s * b * d * stored / tp + 2 * s * b * d  # + the detached target
    return dict(params_per_rank=params, weight_and_optimizer_bytes=params * _bytes_per_param(args),
                activation_bytes=activation)


def layout_parameters(args, counts) -> float:
    """About the parameters one rank of the first pipeline stage holds in this layout (even
    layer split): layers over PP and TP, routed experts over PP, EP and TP (expert TP = TP),
    the embedding over TP (and the untied output layer when PP = 1). Unlike Megatron-LM's
    report, the experts are divided by EP."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    ep = args.expert_model_parallel_size
    layers = (counts["attention"] + counts["norms"] + counts["dense_mlp"] + counts["router"]
              + counts["shared_experts"])
    rank = layers / pp / tp + counts["routed_experts"] / pp / (ep * tp)
    rank += counts["embedding"] / tp + (counts["output_layer"] / tp if pp == 1 else 0)
    return rank


def memory_estimate(args, num_microbatches=None) -> dict:
    """Megatron-LM's theoretical per-rank numbers plus the NITP head's (bytes, parameters)."""
    shard, weights = megatron_weight_and_optimizer(args)
    activation = megatron_activation(args, num_microbatches)
    nitp = nitp_overhead(args)
    return dict(params_most_loaded_shard=shard, weight_and_optimizer_bytes=weights,
                activation_bytes=activation, total_bytes=weights + activation,
                nitp_params_per_rank=nitp["params_per_rank"],
                nitp_weight_and_optimizer_bytes=nitp["weight_and_optimizer_bytes"],
                nitp_activation_bytes=nitp["activation_bytes"])


def report_lines(estimate, layout_params=None) -> list:
    e = {k: v / MIB if k.endswith("bytes") else v for k, v in estimate.items()}
    lines = [] if layout_params is None else [
        f"parameters per rank (this layout, first pipeline stage): about "
        f"{layout_params / 1e9:.3f}B"]
    lines += [f"memory per rank (Megatron-LM's theoretical estimate): "
             f"{estimate['params_most_loaded_shard'] / 1e9:.3f}B parameters on the most loaded "
             f"shard; weight and optimizer {e['weight_and_optimizer_bytes']:.0f} MB, activation "
             f"{e['activation_bytes']:.0f} MB, total {e['total_bytes']:.0f} MB"]
    if estimate["nitp_params_per_rank"]:
        lines.append(f"NITP overhead per rank (last pipeline stage): "
                     f"{estimate['nitp_params_per_rank'] / 1e6:.1f}M head parameters, weight and "
                     f"optimizer +{e['nitp_weight_and_optimizer_bytes']:.0f} MB, activation "
                     f"+{e['nitp_activation_bytes']:.0f} MB per microbatch")
    else:
        lines.append("NITP overhead per rank: none (NITP off, or no head)")
    return lines
