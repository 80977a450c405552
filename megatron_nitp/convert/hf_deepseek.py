"""Multi-latent attention models <-> transformers' `DeepseekV3ForCausalLM` (pure torch).

What maps, read from megatron-core 0.16.1 (MLASelfAttention, the sigmoid router) and transformers
5's DeepseekV3 modules:
- MLA: linear_q_down_proj / q_layernorm / linear_q_up_proj = q_a_proj / q_a_layernorm / q_b_proj
  (linear_q_proj = q_proj without --q-lora-rank); linear_kv_down_proj / kv_layernorm /
  linear_kv_up_proj = kv_a_proj_with_mqa / kv_a_layernorm / kv_b_proj. The per-head layouts agree
  ([nope | rope] per query head, [latent | rope] in the down-projection, [k_nope | v] per head in
  the up-projection), so every tensor is copied as is.
- RoPE: megatron applies MLA's RoPE to the de-interleaved (even, odd) halves of the rope part,
  which is transformers' `rope_interleave=True`; a YaRN factor of 1 is plain RoPE, a larger one
  is written as transformers' YaRN parameters (factor, original length, beta 32/1, mscale,
  mscale_all_dim; the softmax scale gets mscale_all_dim's square on both sides).
- Routing: sigmoid scores, + expert bias (`router.expert_bias` = `e_score_correction_bias`) for
  the choice only, optional group-limited top-k, the chosen sigmoid scores renormalised when
  top-k > 1, times --moe-router-topk-scaling-factor (`routed_scaling_factor`).
- Shared experts: one megatron shared expert of width n x --moe-ffn-hidden-size is transformers'
  n_shared_experts = n (one MLP of that width); dense first layers = first_k_dense_replace.
What does not map is refused by `deepseek_problems` (one line per flag); importing, by
`deepseek_shape_from_hf_config` (one line per config field). An imported MoE trains with the expert
bias on (DeepSeek-V3's aux-loss-free balancing; the exported bias is its starting value).
"""

from dataclasses import dataclass
from typing import List

import torch

from . import ConversionError
from .tensor_map import Experts, Rename, Tensors, rules_for, swiglu_mlp

# transformers builds the latent norms with RMSNorm's default eps (DeepseekV3RMSNorm(dim)).
HF_LATENT_NORM_EPS = 1e-6


def mla_shape_fields(args) -> dict:
    """ModelShape.mla of an MLA run."""
    return dict(q_lora_rank=args.q_lora_rank, kv_lora_rank=args.kv_lora_rank,
                qk_head_dim=args.qk_head_dim, qk_pos_emb_head_dim=args.qk_pos_emb_head_dim,
                v_head_dim=args.v_head_dim, rotary_scaling_factor=args.rotary_scaling_factor,
                mscale=args.mscale, mscale_all_dim=args.mscale_all_dim,
                original_max_position_embeddings=args.max_position_embeddings)


def deepseek_problems(args, moe_layers: List[bool]) -> List[str]:
    """What DeepseekV3ForCausalLM cannot express for an MLA run (flag-named, one line each)."""
    def on(name, default=None):  # unset (None) or not a flag here (moe_shared_expert_gate)
        value = getattr(args, name, default)
        return default if value is None else value

    problems = []
    if not on("qk_layernorm", False):
        problems.append("--multi-latent-attention without --qk-layernorm (DeepseekV3 always "
                        "normalises the q/kv latents)")
    if on("norm_epsilon", 1e-5) != HF_LATENT_NORM_EPS:
        problems.append(f"--norm-epsilon {on('norm_epsilon')} (DeepseekV3's latent norms use "
                        f"{HF_LATENT_NORM_EPS})")
    experts = on("num_experts", 0)
    if not experts:
        return problems
    if on("moe_router_score_function", "softmax") != "sigmoid":
        problems.append("--moe-router-score-function softmax (DeepseekV3 routes with sigmoid)")
    k = sum(1 for m in moe_layers if not m)
    if moe_layers != [False] * k + [True] * (len(moe_layers) - k):
        problems.append("--moe-layer-freq other than dense first layers then MoE "
                        "(DeepseekV3's first_k_dense_replace)")
    shared, f_moe = on("moe_shared_expert_intermediate_size", 0), on("moe_ffn_hidden_size", 0)
    if not shared or shared % f_moe:
        problems.append("--moe-shared-expert-intermediate-size not a positive multiple of "
                        "--moe-ffn-hidden-size (DeepseekV3's n_shared_experts)")
    if on("moe_shared_expert_gate", False):
        problems.append("--moe-shared-expert-gate (DeepseekV3's shared experts have no gate)")
    groups, group_topk = on("moe_router_num_groups"), on("moe_router_group_topk")
    if groups and group_topk and on("moe_router_topk", 2) // group_topk != 2:
        # megatron scores a group by its top (top-k / group-top-k) experts, transformers by 2
        problems.append(f"--moe-router-topk {args.moe_router_topk} with --moe-router-group-topk "
                        f"{group_topk} (DeepseekV3 scores each group by its top 2 experts)")
    return problems


def deepseek_config_kwargs(s) -> dict:
    """DeepseekV3Config keyword arguments for a ModelShape with `mla`."""
    m = s.mla
    rope = {"rope_type": "default", "rope_theta": float(s.rope_theta)}
    if m["rotary_scaling_factor"] != 1.0:
        rope = {"rope_type": "yarn", "rope_theta": float(s.rope_theta),
                "factor": float(m["rotary_scaling_factor"]),
                "original_max_position_embeddings": m["original_max_position_embeddings"],
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": float(m["mscale"]),
                "mscale_all_dim": float(m["mscale_all_dim"])}
    moe = s.num_experts > 0
    r = s.routing
    return dict(
        q_lora_rank=m["q_lora_rank"], kv_lora_rank=m["kv_lora_rank"],
        qk_nope_head_dim=m["qk_head_dim"], qk_rope_head_dim=m["qk_pos_emb_head_dim"],
        v_head_dim=m["v_head_dim"], rope_interleave=True, rope_parameters=rope,
        num_key_value_heads=s.num_attention_heads, attention_bias=False,
        n_routed_experts=s.num_experts if moe else 1,
        num_experts_per_tok=s.topk if moe else 1,
        moe_intermediate_size=s.moe_ffn_hidden_size if moe else 1,
        n_shared_experts=(s.shared_expert_size // s.moe_ffn_hidden_size) if moe else 1,
        first_k_dense_replace=(sum(1 for x in s.moe_layers if not x) if moe else s.num_layers),
        n_group=r.get("num_groups") or 1, topk_group=r.get("group_topk") or 1,
        norm_topk_prob=moe and s.topk > 1,  # megatron renormalises sigmoid top-k when k > 1
        routed_scaling_factor=float(r.get("scaling_factor") or 1.0), num_mtp_layers=0)


# -- tensors (tensor_map: one table, both directions) -----------------------------------------

_Q_LORA = [("linear_q_down_proj.weight", "q_a_proj.weight"),
           ("q_layernorm.weight", "q_a_layernorm.weight"),
           ("linear_q_up_proj.weight", "q_b_proj.weight")]
_Q_FULL = [("linear_q_proj.weight", "q_proj.weight")]  # without --q-lora-rank
_KV_AND_OUT = [("linear_kv_down_proj.weight", "kv_a_proj_with_mqa.weight"),
               ("kv_layernorm.weight", "kv_a_layernorm.weight"),
               ("linear_kv_up_proj.weight", "kv_b_proj.weight"),
               ("linear_proj.weight", "o_proj.weight")]


def mla_attention(s, a: str, o: str) -> list:
    """Every MLA tensor copied as is, under `...self_attention.` / `...self_attn.`."""
    return rules_for((_Q_LORA if s.mla["q_lora_rank"] else _Q_FULL) + _KV_AND_OUT, a, o)


@dataclass(frozen=True)
class ExpertBias:
    """router.expert_bias = e_score_correction_bias; a run without --moe-router-enable-expert-bias
    has none and exports zeros (in the router's dtype)."""
    megatron: str
    hf: str
    router: str
    num_experts: int

    def to_hf(self, src: Tensors, out: dict) -> None:
        out[self.hf] = (src.take(self.megatron) if self.megatron in src
                        else torch.zeros(self.num_experts, dtype=src.take(self.router).dtype))

    def from_hf(self, src: Tensors, out: dict) -> None:
        out[self.megatron] = src.take(self.hf)


def deepseek_moe(s, m: str, h: str) -> list:
    """A sigmoid-routed MoE layer under `...mlp.`: router (+ bias), experts, shared experts."""
    return [Rename(m + "router.weight", h + "gate.weight"),
            ExpertBias(m + "router.expert_bias", h + "gate.e_score_correction_bias",
                       m + "router.weight", s.num_experts),
            Experts(m + "experts.", h + "experts.", s.num_experts),
            *swiglu_mlp(m + "shared_experts.", h + "shared_experts.")]


# -- HF config -> megatron ------------------------------------------------------------------

def deepseek_shape_from_hf_config(cfg: dict, shape_cls):
    """ModelShape of a DeepseekV3 config.json, or a one-line ConversionError for what megatron's
    MLA + sigmoid router cannot reproduce."""
    def bad(what):
        raise ConversionError(f"config.json: {what} (megatron-nitp's MLA family cannot express it)")

    heads = cfg["num_attention_heads"]
    if (cfg.get("num_key_value_heads") or heads) != heads:
        bad(f"num_key_value_heads {cfg['num_key_value_heads']} != num_attention_heads {heads}")
    if cfg.get("attention_bias"):
        bad("attention_bias=true")
    if not cfg.get("rope_interleave", True):
        bad("rope_interleave=false")
    if cfg.get("rms_norm_eps", 1e-6) != HF_LATENT_NORM_EPS:
        bad(f"rms_norm_eps {cfg['rms_norm_eps']} (its latent norms use {HF_LATENT_NORM_EPS})")
    if cfg.get("hidden_act", "silu") != "silu":
        bad(f"hidden_act {cfg['hidden_act']!r}")
    max_pos = cfg.get("max_position_embeddings", 4096)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    factor, mscale, mscale_all = 1.0, 1.0, 0.0
    if rope_type == "yarn":
        factor = float(rope["factor"])
        mscale, mscale_all = float(rope.get("mscale", 1.0)), float(rope.get("mscale_all_dim", 0.0))
        if (rope.get("beta_fast", 32), rope.get("beta_slow", 1)) != (32, 1):
            bad("YaRN beta_fast/beta_slow other than 32/1")
        if rope.get("original_max_position_embeddings", max_pos) != max_pos:
            bad("YaRN original_max_position_embeddings != max_position_embeddings")
    elif rope_type not in ("default", None):
        bad(f"RoPE type {rope_type!r}")
    layers = cfg["num_hidden_layers"]
    first_dense = cfg.get("first_k_dense_replace") or 0
    experts = cfg.get("n_routed_experts") or 0 if first_dense < layers else 0
    mla = dict(q_lora_rank=cfg.get("q_lora_rank"), kv_lora_rank=cfg["kv_lora_rank"],
               qk_head_dim=cfg["qk_nope_head_dim"], qk_pos_emb_head_dim=cfg["qk_rope_head_dim"],
               v_head_dim=cfg["v_head_dim"], rotary_scaling_factor=factor, mscale=mscale,
               mscale_all_dim=mscale_all, original_max_position_embeddings=max_pos)
    moe, routing = {}, {}
    if experts:
        topk = cfg["num_experts_per_tok"]
        if bool(cfg.get("norm_topk_prob", True)) != (topk > 1):
            bad(f"norm_topk_prob={cfg.get('norm_topk_prob')} with {topk} experts per token "
                "(megatron renormalises sigmoid top-k exactly when k > 1)")
        groups, group_topk = cfg.get("n_group") or 1, cfg.get("topk_group") or 1
        if groups > 1 and topk // group_topk != 2:
            bad(f"groups scored by their top 2 with num_experts_per_tok {topk} / topk_group "
                f"{group_topk} != 2")
        if not cfg.get("n_shared_experts"):
            bad("no shared experts")
        scaling = float(cfg.get("routed_scaling_factor", 1.0))
        routing = dict(num_groups=groups if groups > 1 else None,
                       group_topk=group_topk if groups > 1 else None,
                       scaling_factor=scaling if scaling != 1.0 else None, expert_bias=True)
        moe = dict(num_experts=experts, topk=topk, moe_ffn_hidden_size=cfg["moe_intermediate_size"],
                   moe_layers=[i >= first_dense for i in range(layers)],
                   shared_expert_size=cfg["n_shared_experts"] * cfg["moe_intermediate_size"])
    return shape_cls(
        num_layers=layers, hidden_size=cfg["hidden_size"], num_attention_heads=heads,
        num_query_groups=heads, head_dim=cfg["qk_nope_head_dim"],
        ffn_hidden_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
        tied=bool(cfg.get("tie_word_embeddings", False)), norm_eps=HF_LATENT_NORM_EPS,
        rope_theta=theta, max_position_embeddings=max_pos, qk_layernorm=True, mla=mla,
        routing=routing, **moe)


def deepseek_arch_values(s) -> dict:
    """The run configuration (flag dests, typed) of an MLA ModelShape (hf_import)."""
    m, r = s.mla, s.routing
    values = dict(multi_latent_attention=True, kv_lora_rank=m["kv_lora_rank"],
                  qk_head_dim=m["qk_head_dim"], qk_pos_emb_head_dim=m["qk_pos_emb_head_dim"],
                  v_head_dim=m["v_head_dim"], qk_layernorm=True,
                  rotary_scaling_factor=float(m["rotary_scaling_factor"]),
                  mscale=float(m["mscale"]), mscale_all_dim=float(m["mscale_all_dim"]),
                  q_lora_rank=m["q_lora_rank"] or None)
    if s.num_experts:
        values.update(moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                      moe_router_dtype="fp32")
        if r.get("num_groups"):
            values.update(moe_router_num_groups=r["num_groups"],
                          moe_router_group_topk=r["group_topk"])
        if r.get("scaling_factor"):
            values["moe_router_topk_scaling_factor"] = float(r["scaling_factor"])
    return values
