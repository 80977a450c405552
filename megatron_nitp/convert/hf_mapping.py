"""Tensor names and layouts between a TP1/PP1 megatron-core GPT and transformers' Llama, Qwen2-MoE,
Qwen3 and Qwen3-MoE.

Pure torch on full (unsharded) tensors; both directions are exact (reshapes, concatenations and
multiplications by 2 or 1/2 only), so megatron -> HF -> megatron is bit-identical.

Layouts that differ between the two (read from megatron-core 0.16.1):
- `linear_qkv.weight` is grouped per KV head: rows are [q heads of group 0, k0, v0, q heads of
  group 1, k1, v1, ...] (`SelfAttention.get_query_key_value_tensors`), each head `kv_channels`
  rows. Query head h belongs to group h // (heads / groups), which is also transformers'
  `repeat_kv` convention, so q/k/v split per group and concatenate in order.
- SwiGLU `linear_fc1.weight` at TP1 is [gate; up] (dist-ckpt's swiglu factory re-interleaves a
  TP-sharded fc1 on load), = HF gate_proj / up_proj.
- RoPE: megatron's default (non-interleaved) rotary = Llama's rotate_half, same inv_freq.
- Qwen2-MoE's shared expert output is multiplied by sigmoid(shared_expert_gate(x)); megatron's
  DeepSeek-V2-style shared expert has no gate. The gate weight is written as zeros
  (sigmoid(0) = 0.5 exactly) and the shared down_proj as 2 x megatron's linear_fc2: scaling by a
  power of two is exact in floating point, so the HF model computes bit-for-bit the same shared
  expert output (barring overflow at the top of the fp range).
- --qk-layernorm: megatron's per-head `q_layernorm` / `k_layernorm` (RMSNorm over head_dim,
  applied before RoPE) are Qwen3's `q_norm` / `k_norm`, same place, same shape.
- Routing: megatron's pre-softmax top-k (softmax over all experts, then top-k) is Qwen's
  `norm_topk_prob=False`; without pre-softmax (top-k logits, softmax over the k) it is the
  renormalised top-k of the full softmax, `norm_topk_prob=True` (softmax is shift-invariant).
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import torch

from . import (DEEPSEEK_V3, LLAMA, MOE_ARCHITECTURES, QWEN2_MOE, QWEN3,  # noqa: F401
               QWEN3_MOE, SUPPORTED, ConversionError, hf_architecture)
from .hf_deepseek import (deepseek_moe, deepseek_problems, deepseek_shape_from_hf_config,
                          mla_attention, mla_shape_fields)
from .tensor_map import (FROM_HF, TO_HF, Experts, Rename, Tensors, ZeroOnly, apply, convert,
                         gate_up, rules_for, swiglu_mlp)


@dataclass
class ModelShape:
    """What both sides must agree on (megatron args <-> HF config)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int  # dense MLP width (dense layers of an MoE model too)
    vocab_size: int  # embedding rows (megatron's padded vocabulary)
    tied: bool
    norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    num_experts: int = 0
    moe_layers: List[bool] = field(default_factory=list)  # per layer: MoE (True) or dense
    moe_ffn_hidden_size: int = 0
    shared_expert_size: int = 0  # 0: no shared expert
    topk: int = 0
    qk_layernorm: bool = False  # per-head q/k RMSNorm (Qwen3)
    norm_topk_prob: bool = False  # renormalised top-k (megatron without pre-softmax)
    mla: dict = field(default_factory=dict)  # multi-latent attention sizes (hf_deepseek)
    routing: dict = field(default_factory=dict)  # sigmoid routing: groups, scaling, expert bias

    @property
    def architecture(self) -> str:
        if self.mla:
            return DEEPSEEK_V3
        if self.num_experts:
            return QWEN3_MOE if self.qk_layernorm else QWEN2_MOE
        return QWEN3 if self.qk_layernorm else LLAMA


def moe_layer_pattern(moe_layer_freq, num_layers: int) -> List[bool]:
    """megatron-core's layer types (models/layer_pattern.py), as booleans (True = MoE)."""
    from ..models.layer_pattern import moe_layer_pattern as pattern

    try:
        return [bool(v) for v in pattern(moe_layer_freq, num_layers)]
    except ValueError as e:
        raise ConversionError(f"moe_layer_freq {e}")


def family_option_problems(args) -> List[str]:
    """Options (models/options.py) that Llama / Qwen2-MoE / Qwen3(-MoE) cannot express: the
    export would otherwise write a model that computes something else. `args`: the run's
    configuration (a RunConfig; a saved one has today's default for a flag added since)."""
    a = args
    problems = [flag for flag, bad in (
        ("--add-qkv-bias", a.add_qkv_bias),
        ("--add-bias-linear", a.add_bias_linear),
        ("--apply-layernorm-1p", a.layernorm_zero_centered_gamma),
        (f"--rotary-percent {a.rotary_percent}", a.rotary_percent != 1.0),
    ) if bad]
    if a.multi_latent_attention:
        return problems + deepseek_problems(
            a, moe_layer_pattern(a.moe_layer_freq, a.num_layers) if a.num_experts else [])
    if a.num_experts:
        problems += [flag for flag, bad in (
            ("--qk-layernorm with --moe-shared-expert-intermediate-size (Qwen3-MoE has no "
             "shared expert, Qwen2-MoE no q/k norm)",
             a.qk_layernorm and a.moe_shared_expert_intermediate_size),
            ("--moe-router-score-function sigmoid", a.moe_router_score_function == "sigmoid"),
            ("--moe-router-enable-expert-bias", a.moe_router_enable_expert_bias),
            ("--moe-router-topk-scaling-factor", a.moe_router_topk_scaling_factor),
            ("--moe-router-group-topk", a.moe_router_group_topk),
        ) if bad]
    return problems


def shape_from_args(args) -> ModelShape:
    """The shape of a megatron-nitp run; rejects what Llama / Qwen2-MoE cannot express."""
    problems = []
    if args.normalization != "RMSNorm":
        problems.append(f"normalization {args.normalization} (only RMSNorm maps to Llama/Qwen2-MoE)")
    if not args.swiglu:
        problems.append("no SwiGLU (--no-swiglu)")
    if args.position_embedding_type != "rope":
        problems.append(f"position embedding {args.position_embedding_type} (only rope)")
    problems += family_option_problems(args)
    if problems:
        raise ConversionError("this model has no Hugging Face equivalent here: " + "; ".join(problems))
    experts = args.num_experts or 0
    mla = bool(args.multi_latent_attention)
    routing = dict(num_groups=args.moe_router_num_groups, group_topk=args.moe_router_group_topk,
                   scaling_factor=args.moe_router_topk_scaling_factor,
                   expert_bias=bool(args.moe_router_enable_expert_bias))
    return ModelShape(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups or args.num_attention_heads,
        head_dim=args.kv_channels or args.hidden_size // args.num_attention_heads,
        ffn_hidden_size=args.ffn_hidden_size, vocab_size=args.padded_vocab_size,
        tied=not args.untie_embeddings_and_output_weights, norm_eps=args.norm_epsilon,
        rope_theta=args.rotary_base, max_position_embeddings=args.max_position_embeddings,
        num_experts=experts,
        moe_layers=moe_layer_pattern(args.moe_layer_freq, args.num_layers) if experts else [],
        moe_ffn_hidden_size=(args.moe_ffn_hidden_size or 0) if experts else 0,
        shared_expert_size=(args.moe_shared_expert_intermediate_size or 0) if experts else 0,
        topk=args.moe_router_topk if experts else 0,
        qk_layernorm=bool(args.qk_layernorm),
        norm_topk_prob=bool(experts) and not args.moe_router_pre_softmax,
        mla=mla_shape_fields(args) if mla else {}, routing=routing if mla and experts else {},
    )


def _rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ConversionError(f"config.json: RoPE scaling {rope_type!r} is not supported "
                              "(megatron-nitp uses plain RoPE)")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return float(theta)


def shape_from_hf_config(cfg: dict) -> ModelShape:
    """ModelShape of a transformers config.json (one of SUPPORTED); one-line errors."""
    arch = hf_architecture(cfg)
    if arch == DEEPSEEK_V3:
        return deepseek_shape_from_hf_config(cfg, ModelShape)
    is_moe = arch in MOE_ARCHITECTURES
    qk_norm = arch in (QWEN3, QWEN3_MOE)
    if qk_norm and cfg.get("attention_bias"):
        raise ConversionError("config.json: attention_bias=true (megatron-nitp's Qwen3 family "
                              "has no attention biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json: hidden_act {cfg['hidden_act']!r} (only silu/SwiGLU)")
    heads = cfg["num_attention_heads"]
    common = dict(
        num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
        num_attention_heads=heads, num_query_groups=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        ffn_hidden_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
        tied=bool(cfg.get("tie_word_embeddings", False)), norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(cfg), max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        qk_layernorm=qk_norm,
    )
    if not is_moe:
        if cfg.get("pretraining_tp", 1) not in (1, None):
            raise ConversionError("config.json: pretraining_tp > 1 is not supported")
        return ModelShape(**common)
    if cfg.get("use_sliding_window"):
        raise ConversionError("config.json: sliding-window attention is not supported")
    n = common["num_layers"]
    only = set(cfg.get("mlp_only_layers") or [])
    step = cfg.get("decoder_sparse_step", 1) or 1
    # transformers 5 writes Qwen3-MoE's num_experts under its attribute-map name.
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    moe = [i not in only and experts > 0 and (i + 1) % step == 0 for i in range(n)]
    return ModelShape(**common, num_experts=experts, moe_layers=moe,
                      moe_ffn_hidden_size=cfg["moe_intermediate_size"],
                      shared_expert_size=cfg.get("shared_expert_intermediate_size") or 0,
                      topk=cfg["num_experts_per_tok"],
                      norm_topk_prob=bool(cfg.get("norm_topk_prob", False)))


# -- tensors ---------------------------------------------------------------------------------
# Each layer's correspondence is written once, as rules (tensor_map), read in both directions.

def split_qkv(w: torch.Tensor, s: ModelShape):
    per_group = s.num_attention_heads // s.num_query_groups
    g = w.view(s.num_query_groups, per_group + 2, s.head_dim, -1)
    q = g[:, :per_group].reshape(s.num_attention_heads * s.head_dim, -1)
    k = g[:, per_group].reshape(s.num_query_groups * s.head_dim, -1)
    v = g[:, per_group + 1].reshape(s.num_query_groups * s.head_dim, -1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(q, k, v, s: ModelShape) -> torch.Tensor:
    per_group = s.num_attention_heads // s.num_query_groups
    d = q.shape[-1]
    q = q.view(s.num_query_groups, per_group, s.head_dim, d)
    k = k.view(s.num_query_groups, 1, s.head_dim, d)
    v = v.view(s.num_query_groups, 1, s.head_dim, d)
    return torch.cat([q, k, v], dim=1).reshape(-1, d).contiguous()


@dataclass
class QKV:
    """megatron's per-group linear_qkv = HF q/k/v_proj. Qwen2-MoE's attention has q/k/v biases:
    exported as zeros (exact); on import any family's must be zero or absent."""
    qkv: str
    o: str  # "model.layers.{i}.self_attn."
    shape: ModelShape
    zero_biases: bool

    def to_hf(self, src: Tensors, out: dict) -> None:
        for x, t in zip("qkv", split_qkv(src.take(self.qkv), self.shape)):
            out[f"{self.o}{x}_proj.weight"] = t
            if self.zero_biases:
                out[f"{self.o}{x}_proj.bias"] = torch.zeros(t.shape[0], dtype=t.dtype)

    def from_hf(self, src: Tensors, out: dict) -> None:
        q, k, v = (src.take(f"{self.o}{x}_proj.weight") for x in "qkv")
        for x in "qkv":
            src.zero_or_absent(f"{self.o}{x}_proj.bias", "attention bias")
        out[self.qkv] = merge_qkv(q, k, v, self.shape)


@dataclass(frozen=True)
class Qwen2SharedExpert:
    """Qwen2-MoE's shared expert is gated by sigmoid(shared_expert_gate(x)), megatron's is not:
    the gate is written as zeros and down_proj as 2 x linear_fc2 (exact, see the module
    docstring). Qwen2-MoE always has one: a model without it gets a width-1 all-zero one."""
    fc1: str
    fc2: str
    gate: str
    up: str
    down: str
    sigmoid_gate: str
    router: str
    size: int
    hidden_size: int

    @classmethod
    def at(cls, m: str, h: str, size: int = 0, hidden_size: int = 0) -> "Qwen2SharedExpert":
        """Under `decoder.layers.{i}.mlp.` / `model.layers.{i}.mlp.`."""
        e = h + "shared_expert."
        return cls(m + "shared_experts.linear_fc1.weight", m + "shared_experts.linear_fc2.weight",
                   e + "gate_proj.weight", e + "up_proj.weight", e + "down_proj.weight",
                   h + "shared_expert_gate.weight", m + "router.weight", size, hidden_size)

    def to_hf(self, src: Tensors, out: dict) -> None:
        if self.size:
            gate, up = gate_up(src.take(self.fc1))
            down = src.take(self.fc2) * 2  # sigmoid(0) = 0.5 undoes it
        else:  # a width-1 shared expert with zero weights adds 0
            dtype = src.take(self.router).dtype
            gate = up = torch.zeros(1, self.hidden_size, dtype=dtype)
            down = torch.zeros(self.hidden_size, 1, dtype=dtype)
        out[self.gate], out[self.up], out[self.down] = gate, up, down
        out[self.sigmoid_gate] = torch.zeros(1, self.hidden_size, dtype=down.dtype)

    def from_hf(self, src: Tensors, out: dict) -> None:
        src.zero_or_absent(self.sigmoid_gate, "shared_expert_gate (its sigmoid gate has no "
                           "megatron-nitp counterpart; only the zero gate this tool writes converts)")
        gate, up, down = src.take(self.gate), src.take(self.up), src.take(self.down)
        if self.size:
            out[self.fc1] = torch.cat([gate, up], dim=0)
            out[self.fc2] = down / 2  # exact: see the module docstring
        elif torch.count_nonzero(down):
            module = self.down.rsplit(".", 2)[0]  # model.layers.{i}.mlp.shared_expert
            raise ConversionError(f"{module}: non-zero weights but no shared expert size")


@dataclass
class OutputLayer:
    """lm_head; a tied model has none (some tied HF exports still carry the identical head)."""
    tied: bool

    def to_hf(self, src: Tensors, out: dict) -> None:
        if not self.tied:
            out["lm_head.weight"] = src.take("output_layer.weight")

    def from_hf(self, src: Tensors, out: dict) -> None:
        if not self.tied:
            out["output_layer.weight"] = src.take("lm_head.weight")
        elif "lm_head.weight" in src:
            src.take("lm_head.weight")


def _attention(s: ModelShape, a: str, o: str) -> list:
    rules = [QKV(a + "linear_qkv.weight", o, s, zero_biases=s.architecture == QWEN2_MOE),
             ZeroOnly(o + "o_proj.bias", "attention bias"),
             Rename(a + "linear_proj.weight", o + "o_proj.weight")]
    if s.qk_layernorm:  # Qwen3's q_norm / k_norm
        rules += rules_for([("q_layernorm.weight", "q_norm.weight"),
                            ("k_layernorm.weight", "k_norm.weight")], a, o)
    return rules


def _moe(s: ModelShape, m: str, h: str) -> list:
    rules = [Rename(m + "router.weight", h + "gate.weight"),
             Experts(m + "experts.", h + "experts.", s.num_experts)]
    if s.architecture != QWEN3_MOE:  # Qwen3-MoE has no shared expert (shape_from_args refuses one)
        rules.append(Qwen2SharedExpert.at(m, h, s.shared_expert_size, s.hidden_size))
    return rules


def _layer(s: ModelShape, i: int) -> list:
    m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
    a, o = m + "self_attention.", h + "self_attn."
    rules = [Rename(m + "input_layernorm.weight", h + "input_layernorm.weight")]
    rules += mla_attention(s, a, o) if s.mla else _attention(s, a, o)
    rules.append(Rename(m + "pre_mlp_layernorm.weight", h + "post_attention_layernorm.weight"))
    if s.num_experts and s.moe_layers[i]:
        rules += deepseek_moe(s, m + "mlp.", h + "mlp.") if s.mla else _moe(s, m + "mlp.", h + "mlp.")
    else:
        rules += swiglu_mlp(m + "mlp.", h + "mlp.")
        if not s.mla:
            rules += [ZeroOnly(f"{h}mlp.{x}_proj.bias", "MLP bias") for x in ("gate", "up", "down")]
    return rules


def _convert(src: Tensors, direction: str, s: ModelShape, progress) -> Dict[str, torch.Tensor]:
    return convert(src, direction,
                   embedding=[Rename("embedding.word_embeddings.weight", "model.embed_tokens.weight")],
                   layers=(_layer(s, i) for i in range(s.num_layers)),
                   final=[Rename("decoder.final_layernorm.weight", "model.norm.weight"),
                          OutputLayer(s.tied)],
                   progress=progress)


def megatron_to_hf(sd: Dict[str, torch.Tensor], s: ModelShape,
                   progress: Optional[Callable[[int], None]] = None) -> Dict[str, torch.Tensor]:
    """HF tensors of a TP1/PP1 megatron state dict (`_extra_state` and NITP keys ignored)."""
    src = Tensors(sd, "checkpoint has no tensor", "checkpoint tensors with no HF counterpart",
                  ignored=lambda k: (k.endswith("_extra_state") or k.startswith("nitp_head.")
                                     or k == "output_layer.weight"))
    return _convert(src, TO_HF, s, progress)


def hf_shared_expert_size(s: ModelShape) -> int:
    """shared_expert_intermediate_size to write into config.json."""
    return s.shared_expert_size or 1


def hf_to_megatron(hf: Dict[str, torch.Tensor], s: ModelShape,
                   progress: Optional[Callable[[int], None]] = None) -> Dict[str, torch.Tensor]:
    """A TP1/PP1 megatron state dict (without `_extra_state`) from HF tensors.

    Accepts Qwen2-MoE experts per expert (`experts.{e}.gate_proj.weight`, the on-disk format) or
    fused (`experts.gate_up_proj` [E, 2I, d], `experts.down_proj` [E, d, I], transformers 5's
    in-memory format). Rejects what megatron-nitp's model cannot express: non-zero attention or
    MLP biases, a non-zero shared-expert gate, unexpected tensors.
    """
    src = Tensors(hf, "HF weights have no tensor", "HF tensors megatron-nitp cannot represent",
                  ignored=lambda k: k.endswith("rotary_emb.inv_freq"))
    return _convert(src, FROM_HF, s, progress)


def effective_shared_expert_size(hf: Dict[str, torch.Tensor], s: ModelShape) -> int:
    """0 when every MoE layer's shared expert is the all-zero placeholder this tool writes for
    models without one; else the configured width."""
    if not s.num_experts:
        return 0
    if s.mla:  # DeepseekV3 always has its shared experts (n_shared_experts > 0 checked)
        return s.shared_expert_size
    for i, is_moe in enumerate(s.moe_layers):
        name = Qwen2SharedExpert.at("", f"model.layers.{i}.mlp.").down
        if is_moe and name in hf and torch.count_nonzero(hf[name]):
            return s.shared_expert_size
    return 0


# -- the NITP head ---------------------------------------------------------------------------

NITP_HEAD_PREFIX = "nitp_head.mlp."
_NITP_HEAD = swiglu_mlp(NITP_HEAD_PREFIX, "")  # SwiGLU: gate_proj, up_proj, down_proj


def nitp_head_to_hf(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return apply(_NITP_HEAD, Tensors(sd, "checkpoint has no tensor", ""), TO_HF)


def nitp_head_from_hf(t: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return apply(_NITP_HEAD, Tensors(t, "NITP head file has no tensor", ""), FROM_HF)


def has_nitp_tensors(names: Iterable[str]) -> bool:
    return any("nitp" in n for n in names)
