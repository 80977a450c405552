"""Analytic parameter count of the GPT / MoE backbone megatron-core builds, plus the NITP head.

Used by the paper configs' tests (sizes must match the model names), the FLOPs report and the
config table in examples/README.md, so that a 45B config can be sized without allocating it.
Input: the run's RunConfig or parse_args' Namespace, read as Megatron-LM's `args`: every flag is
there with the parser's (Megatron-LM's) default, so nothing here has a default of its own. None
keeps Megatron-LM's meaning (no experts, no MTP, no shared expert, a full-rank MLA query).

The count is exact for megatron-core 0.16.1's GPTModel built from `get_gpt_decoder_block_spec`
(local or Transformer Engine spec: TE fuses the norms into the following linear layers, but the
norm weights still exist once each, so the count does not change):
  embedding.word_embeddings   V_pad x d            (+ position_embeddings s_max x d if learned)
  per layer: input_layernorm d, linear_qkv (nh + 2 ng) hd x d, linear_proj d x nh hd,
             pre_mlp_layernorm d, and either a dense MLP or a MoE block
  dense MLP:  fc1 (2 f | f) x d, fc2 d x f                 (2 f with SwiGLU)
  MoE block:  router E x d, E experts as the dense MLP with f_moe, shared expert with f_shared
  decoder.final_layernorm d;  output_layer V_pad x d unless tied to the embedding
"""

import math

from .layer_pattern import moe_layer_pattern  # noqa: F401 (re-exported)


def padded_vocab_size(vocab_size, make_vocab_size_divisible_by=128, tensor_model_parallel_size=1):
    """Megatron-LM's `_vocab_size_with_padding`: round up to a multiple of divisor x TP, so each
    TP rank holds an equal, aligned slice of the embedding and output layer."""
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return int(math.ceil(vocab_size / multiple) * multiple)


def _mlp_params(d, f, swiglu, bias):
    fc1_out = 2 * f if swiglu else f
    return fc1_out * d + d * f + ((fc1_out + d) if bias else 0)


def _mla_layer(args, d, nh, bias, layernorm_has_bias, qk_layernorm):
    """(projection params, q/kv-layernorm params) of one megatron-core MLASelfAttention: the
    down/up projections have no bias whatever the flags; only linear_proj follows them."""
    q_lora, kv_lora = args.q_lora_rank, args.kv_lora_rank
    qk, pos, v = args.qk_head_dim, args.qk_pos_emb_head_dim, args.v_head_dim
    q = nh * (qk + pos) * (q_lora if q_lora else d) + (q_lora * d if q_lora else 0)
    kv = (kv_lora + pos) * d + nh * (qk + v) * kv_lora
    proj = d * nh * v + (d if bias else 0)
    norm_dims = (kv_lora + (q_lora or 0)) if qk_layernorm else 0
    return q + kv + proj, norm_dims * (2 if layernorm_has_bias else 1)


def nitp_uses_head(args):
    """The head exists unless --nitp-no-projector or the generic cosine baseline (no target)."""
    from ..nitp.config import head_in_use

    return head_in_use("none" if args.nitp_no_projector else "swiglu", args.nitp_loss_type)


def resolved_padded_vocab_size(args):
    """The run's padded vocabulary (resolved: a RunConfig), else the one resolution pads the
    flags' --vocab-size to (parse_args' Namespace holds no resolved values yet)."""
    vocab = getattr(args, "padded_vocab_size", None)
    if vocab:
        return vocab
    if not args.vocab_size:
        raise ValueError("count_parameters needs vocab_size (or padded_vocab_size)")
    return padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by,
                             args.tensor_model_parallel_size)


def count_parameters(args) -> dict:
    """Parameter counts of the model described by `args` (a RunConfig or parse_args' Namespace).

    Returns a dict with
      total      all backbone parameters (what an exported checkpoint holds; no NITP head)
      active     parameters touched per token: attention, norms, dense MLPs, the router, the
                 shared expert, top-k routed experts, the embedding and the output layer
      embedding  the input embedding table (+ learned position table), counted once if tied
      nitp_head  the NITP projection head (3 x mult x d^2), training only, not in `total`;
                 0 when NITP is off, --nitp-no-projector or the generic cosine baseline
      mtp        the --mtp-num-layers MTP layers, training only, not in `total`
    and a breakdown: attention, norms, dense_mlp, router, shared_experts, routed_experts,
    routed_experts_active, output_layer, padded_vocab_size, num_moe_layers, num_dense_layers.
    """
    L, d, nh = args.num_layers, args.hidden_size, args.num_attention_heads
    f = args.ffn_hidden_size
    ng = args.num_query_groups if args.group_query_attention else nh
    hd = args.kv_channels
    swiglu = args.swiglu
    layernorm_has_bias = args.normalization == "LayerNorm"
    # Biases everywhere (--add-bias-linear, Megatron-LM's default) include the QKV ones.
    bias = bool(args.add_bias_linear)
    qkv_bias = bias or bool(args.add_qkv_bias)
    qk_layernorm = bool(args.qk_layernorm)
    vocab = resolved_padded_vocab_size(args)
    tied = not args.untie_embeddings_and_output_weights

    num_experts = args.num_experts or 0
    if num_experts:
        pattern = moe_layer_pattern(args.moe_layer_freq, L)
    else:
        pattern = [0] * L
    n_moe = sum(pattern)
    n_dense = L - n_moe

    norm = d * (2 if layernorm_has_bias else 1)
    q_out, kv_out = nh * hd, ng * hd
    attn_layer = (q_out + 2 * kv_out) * d + (q_out + 2 * kv_out if qkv_bias else 0)
    attn_layer += q_out * d + (d if bias else 0)
    qk_norm_layer = 2 * hd * (2 if layernorm_has_bias else 1) if qk_layernorm else 0

    if args.multi_latent_attention:
        attn_layer, qk_norm_layer = _mla_layer(args, d, nh, bias, layernorm_has_bias,
                                               qk_layernorm)

    attention = L * attn_layer
    norms = L * (2 * norm + qk_norm_layer) + norm  # + decoder.final_layernorm
    dense_mlp = n_dense * _mlp_params(d, f, swiglu, bias)

    router = shared = routed = routed_active = 0
    if n_moe:
        f_moe, topk = args.moe_ffn_hidden_size, args.moe_router_topk
        f_shared = args.moe_shared_expert_intermediate_size
        expert = _mlp_params(d, f_moe, swiglu, bias)
        router = n_moe * (num_experts * d + (num_experts if bias else 0))
        routed = n_moe * num_experts * expert
        routed_active = n_moe * topk * expert
        if f_shared:  # ungated: no flag sets TransformerConfig.moe_shared_expert_gate
            shared = n_moe * _mlp_params(d, f_shared, swiglu, bias)

    embedding = vocab * d
    if args.position_embedding_type == "learned_absolute":
        embedding += args.max_position_embeddings * d
    output_layer = 0 if tied else vocab * d

    # MTP layers (models/mtp.py), training only like the head: enorm, hnorm, eh_proj (2d -> d),
    # one layer built like the last decoder layer, final norm; embedding and output are shared.
    n_mtp = args.mtp_num_layers or 0
    last_mlp = _mlp_params(d, f, swiglu, bias)
    if pattern and pattern[-1]:
        last_mlp = (router + shared + routed) // n_moe
    mtp = n_mtp * (3 * norm + 2 * d * d + attn_layer + 2 * norm + qk_norm_layer + last_mlp)

    common = attention + norms + dense_mlp + router + shared + embedding + output_layer
    nitp_on = args.nitp and nitp_uses_head(args)
    mult = args.nitp_head_ffn_multiplier
    return {
        "total": common + routed,
        "active": common + routed_active,
        "embedding": embedding,
        "nitp_head": 3 * mult * d * d if nitp_on else 0,
        "mtp": mtp,
        "attention": attention,
        "norms": norms,
        "dense_mlp": dense_mlp,
        "router": router,
        "shared_experts": shared,
        "routed_experts": routed,
        "routed_experts_active": routed_active,
        "output_layer": output_layer,
        "padded_vocab_size": vocab,
        "num_moe_layers": n_moe,
        "num_dense_layers": n_dense,
    }
