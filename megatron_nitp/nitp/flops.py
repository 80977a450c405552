"""Training FLOPs per token of the NTP baseline and of NITP's additions (paper App. G).

Shared by tools/flops_report.py, tools/list_configs.py and the overhead benchmark, so that the
numbers in the README, the report and the benchmark come from one set of formulas.

Convention (App. G, after Kaplan et al. / Hoffmann et al.): training FLOPs = 6 x the parameters a
token passes through (2 forward + 4 backward), counting only matrix multiplies:
  attention projections (Q, K, V, O with GQA)     6 x their parameters
  MLP: dense SwiGLU layers, or the shared expert + top-k routed experts of a MoE layer
  output layer                                    6 V d (tied or not: the matmul happens anyway)
The input embedding is a lookup (0 FLOPs). Norms, the router (6 d E per MoE layer) and the
attention score matmuls (12 s d per layer, no causal skipping) are reported separately and are
not in the headline, which is the paper-comparable number. Model FLOPs: activation recompute is
not counted (it is hardware FLOPs, not model FLOPs).

MTP (--mtp-num-layers, DeepSeek-V3; models/mtp.py) is part of the run without NITP, so each MTP
layer is in the baseline (as in Megatron-LM's FLOPs count) and reported on its own too:
  eh_proj (2d -> d, no bias)                      6 x 2 d^2
  one transformer layer built like the last decoder layer (its attention projections and its
  dense MLP, or shared + top-k routed experts)    6 x their parameters
  the shared output layer's logits                6 V d
enorm/hnorm/final norm are norms (not counted); its embedding is a lookup; its router and
attention scores join the separately reported terms.

NITP adds the head P (3 mult d^2 parameters -> 72 d^2 at mult 4; 96 d^2 with head recompute,
whose forward runs twice) and the loss (~6 d operations forward, x3 with backward -> 18 d; every
loss type is O(d) per token, so the paper's cosine estimate is used for all). The target needs no
FLOPs (stop-gradient; without it the gradient just adds into an existing backward). The shift is
a one-row halo exchange (communication, no FLOPs). Under pipeline parallelism the target rides
next to the hidden state on every stage boundary (megatron_nitp/parallel/pipeline.py): that is
communication volume, reported in bytes, not FLOPs.
"""

from megatron_nitp.models.layer_pattern import moe_layer_pattern
from megatron_nitp.models.param_count import count_parameters, nitp_uses_head


def paper_g3_flops(d, de, k, L, V, mult=4):
    """Eq. (28)-(31) literally: every layer MoE with k active experts of width de, attention
    as 3 d^2 parameters (8 query heads, 4 KV heads, head dim d/8). App. G.3: d=1280, de=640,
    k=9, L=24, V=152064 -> NITP ~1.18e8, NTP ~5.06e9, ~2.3%."""
    baseline = L * (18 * d * d + 18 * k * d * de) + 6 * V * d
    nitp = 18 * mult * d * d + 18 * d
    return {
        "baseline_flops_per_token": baseline,
        "nitp_flops_per_token": nitp,
        "overhead_pct": 100.0 * nitp / baseline,
    }


def _owner_and_chunks(args, target):
    """(index of the chunk whose output carries layer `target`, number of chunks), for even,
    uneven and layout splits (models/pipeline_layout.py)."""
    from megatron_nitp.models.pipeline_layout import chunk_layer_counts

    counts, done = chunk_layer_counts(args), 0
    for i, n in enumerate(counts):
        if target == 0 or done < target <= done + n:
            return i, len(counts)
        done += n
    return len(counts) - 1, len(counts)


def nitp_head_params(args):
    """3 mult d^2 (gate, up, down; no bias), or 0 when there is no head."""
    d = args.hidden_size
    return 3 * args.nitp_head_ffn_multiplier * d * d if nitp_uses_head(args) else 0


def nitp_head_flops(args):
    """6 x head parameters; 8 x when the head's forward is recomputed in backward."""
    return (8 if args.nitp_head_recompute else 6) * nitp_head_params(args)


def mtp_layer_matmul_params(args, counts):
    """(matmul parameters a token passes through in one MTP layer, excluding the output layer;
    its router parameters). The layer is built like the last decoder layer (models/mtp.py)."""
    d, L = args.hidden_size, args.num_layers
    attention = counts["attention"] // L
    if counts["num_moe_layers"] and moe_layer_pattern(args.moe_layer_freq, L)[-1]:
        n = counts["num_moe_layers"]
        mlp = (counts["shared_experts"] + counts["routed_experts_active"]) // n
        return 2 * d * d + attention + mlp, counts["router"] // n
    return 2 * d * d + attention + counts["dense_mlp"] // counts["num_dense_layers"], 0


def training_flops_per_token(args) -> dict:
    """Per-token training FLOPs of `args` (a RunConfig or parse_args' Namespace, read plainly).

    Returns baseline_flops_per_token (the run without NITP: NTP, plus the MTP layers when
    --mtp-num-layers), nitp_flops_per_token (what NITP adds; computed whether or not args.nitp
    is set, so a config can be compared with its own baseline), overhead_pct, and the parts:
    attention_proj, mlp, output_layer, mtp (in the baseline), router (not in the baseline),
    attention_score (not in the baseline), nitp_head, nitp_loss, and the pipeline
    carry of the target: pipeline_carry_boundaries, pipeline_carry_bytes_per_token_per_boundary
    (forward; the same again backward, since the gradient buffer has the doubled shape too) and
    pipeline_carry_bytes_per_microbatch_per_boundary.
    """
    c = count_parameters(args)
    d, s, nh, L = args.hidden_size, args.seq_length, args.num_attention_heads, args.num_layers
    # Scores (q.k) and context (p.v) per head: MLA's q/k heads carry the RoPE part too.
    qk_dim = v_dim = args.kv_channels
    if args.multi_latent_attention:
        qk_dim, v_dim = args.qk_head_dim + args.qk_pos_emb_head_dim, args.v_head_dim

    attention_proj = 6 * c["attention"]
    mlp = 6 * (c["dense_mlp"] + c["shared_experts"] + c["routed_experts_active"])
    output_layer = 6 * c["padded_vocab_size"] * d
    n_mtp = args.mtp_num_layers or 0
    mtp_matmul, mtp_router = mtp_layer_matmul_params(args, c) if n_mtp else (0, 0)
    mtp = n_mtp * (6 * mtp_matmul + output_layer)
    baseline = attention_proj + mlp + output_layer + mtp

    head = nitp_head_flops(args)
    loss = 18 * d
    nitp = head + loss

    owner, chunks = _owner_and_chunks(args, args.nitp_target_layer)
    uses_target = args.nitp_loss_type != "generic_cosine"
    # pipeline.py doubles every boundary once z has to travel at all (one p2p shape).
    boundaries = chunks - 1 if uses_target and owner != chunks - 1 else 0
    dtype_bytes = 2 if args.bf16 else 4
    mbs = args.micro_batch_size
    return {
        "baseline_flops_per_token": baseline,
        "nitp_flops_per_token": nitp,
        "overhead_pct": 100.0 * nitp / baseline,
        "attention_proj_flops_per_token": attention_proj,
        "mlp_flops_per_token": mlp,
        "output_layer_flops_per_token": output_layer,
        "mtp_flops_per_token": mtp,
        "router_flops_per_token": 6 * (c["router"] + n_mtp * mtp_router),
        "attention_score_flops_per_token": 6 * (L + n_mtp) * s * nh * (qk_dim + v_dim),
        "nitp_head_flops_per_token": head,
        "nitp_loss_flops_per_token": loss,
        "pipeline_carry_boundaries": boundaries,
        "pipeline_carry_bytes_per_token_per_boundary": d * dtype_bytes if boundaries else 0,
        "pipeline_carry_bytes_per_microbatch_per_boundary":
            s * mbs * d * dtype_bytes if boundaries else 0,
        "total_params": c["total"],
        "active_params": c["active"],
        "nitp_head_params": nitp_head_params(args),
    }
