"""megatron-nitp checkpoint -> a transformers directory that loads with no custom code.

Dense -> `LlamaForCausalLM`: RMSNorm, SwiGLU, RoPE (rotate-half), GQA, no biases anywhere, tied or
untied head: every megatron tensor has a Llama slot and Llama has nothing extra, so the export is
exact with no filler tensors. (Qwen2 would need zero q/k/v biases.)
MoE -> `Qwen2MoeForCausalLM`: routed experts with softmax over all experts then top-k,
`norm_topk_prob` = not megatron's `moe_router_pre_softmax` (see hf_mapping), dense layers listed in
`mlp_only_layers`, one shared expert whose sigmoid gate is neutralised exactly (see
hf_mapping), zero q/k/v biases.
With --qk-layernorm (Qwen3-like): dense -> `Qwen3ForCausalLM`, MoE without a shared expert ->
`Qwen3MoeForCausalLM` (per-head q/k RMSNorm; no biases, no filler tensors).
With --multi-latent-attention (DeepSeek-V2/V3-like) -> `DeepseekV3ForCausalLM` (hf_deepseek);
its `num_nextn_predict_layers` is 0 (no MTP layers are written).

The vocabulary is exported padded (megatron's `padded_vocab_size` rows, so logits match
megatron's); a checkpoint imported from HF with a vocabulary that needed TP padding is trimmed
back to the HF size. The NITP head is training-only and dropped unless asked for, then written
beside the model as `nitp_head.safetensors` + `nitp_head.json`.
"""

import json
import os
from typing import Callable, Dict, Optional

import torch

from ..nitp.config import saved_head_in_use
from . import ConversionError
from .hf_deepseek import deepseek_config_kwargs
from .hf_mapping import (DEEPSEEK_V3, LLAMA, QWEN3, QWEN3_MOE, ModelShape, hf_shared_expert_size, megatron_to_hf,
                         nitp_head_to_hf, shape_from_args)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CONFIG_KEY = "megatron_nitp"  # our provenance block inside config.json (transformers keeps it)


def parse_size(text: str) -> int:
    """'5GB', '200MB', '20KB' or bytes -> bytes."""
    s = str(text).strip().upper()
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def write_safetensors(tensors: Dict[str, torch.Tensor], out_dir: str, max_shard_bytes: int,
                      basename: str = "model", progress: Optional[Callable[[int], None]] = None):
    """transformers' layout: one `model.safetensors`, or shards + `model.safetensors.index.json`.
    Returns the written file names."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t.contiguous()
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        names = [f"{basename}.safetensors"]
    else:
        names = [f"{basename}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for shard, fname in zip(shards, names):
        save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
        if progress:
            progress(len(shard))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {n: fname for shard, fname in zip(shards, names) for n in shard}}
        with open(os.path.join(out_dir, f"{basename}.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=1)
        names.append(f"{basename}.safetensors.index.json")
    return names


def hf_config(shape: ModelShape, dtype: torch.dtype, ids: dict, provenance: dict):
    """A transformers config object for the shape (its class writes the version's config.json)."""
    from transformers import (DeepseekV3Config, LlamaConfig, Qwen2MoeConfig, Qwen3Config,
                              Qwen3MoeConfig)

    common = dict(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_query_groups,
        head_dim=shape.head_dim, hidden_act="silu",
        max_position_embeddings=shape.max_position_embeddings, rms_norm_eps=shape.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(shape.rope_theta)},
        tie_word_embeddings=shape.tied, attention_dropout=0.0, dtype=str(dtype).split(".")[-1],
        **ids, **{CONFIG_KEY: provenance})
    moe = dict(num_experts=shape.num_experts, num_experts_per_tok=shape.topk,
               norm_topk_prob=shape.norm_topk_prob, moe_intermediate_size=shape.moe_ffn_hidden_size,
               decoder_sparse_step=1,
               mlp_only_layers=[i for i, m in enumerate(shape.moe_layers) if not m],
               use_sliding_window=False, router_aux_loss_coef=0.0)
    if shape.architecture == DEEPSEEK_V3:
        common.pop("head_dim")
        common.update(deepseek_config_kwargs(shape))  # its own rope, heads and routing fields
        config = DeepseekV3Config(**common)
    elif shape.architecture == LLAMA:
        config = LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    elif shape.architecture == QWEN3:
        config = Qwen3Config(attention_bias=False, use_sliding_window=False, **common)
    elif shape.architecture == QWEN3_MOE:
        config = Qwen3MoeConfig(attention_bias=False, **moe, **common)
    else:
        config = Qwen2MoeConfig(shared_expert_intermediate_size=hf_shared_expert_size(shape),
                                qkv_bias=True, **moe, **common)
    config.architectures = [shape.architecture]
    return config


def _trim_vocab(tensors, shape: ModelShape, hf_vocab: Optional[int]):
    """Undo the zero rows hf-to-megatron added for TP divisibility (only if they are zero)."""
    if not hf_vocab or hf_vocab >= shape.vocab_size:
        return
    names = ["model.embed_tokens.weight"] + ([] if shape.tied else ["lm_head.weight"])
    if any(torch.count_nonzero(tensors[n][hf_vocab:]) for n in names):
        return  # trained rows: keep the padded vocabulary
    for n in names:
        tensors[n] = tensors[n][:hf_vocab].contiguous()
    shape.vocab_size = hf_vocab


def export_to_hf(ckpt_dir: str, out_dir: str, iteration: Optional[int] = None,
                 keep_nitp_head: bool = False, dtype: Optional[str] = None,
                 max_shard_size: str = "5GB", progress_bar: bool = True,
                 keep_mtp_layers: bool = False) -> dict:
    """Write `out_dir`; returns a summary dict. MTP layers (models/mtp.py) train only, like
    the NITP head: dropped, or with `keep_mtp_layers` written beside the model as
    mtp_layers.safetensors in megatron's names (transformers' models have no MTP module)."""
    from ..parallel.distributed import destroy_distributed_model_parallel
    from ..training.checkpoint_io import load_model_single_process

    model, run, _ = load_model_single_process(ckpt_dir, iteration,
                                              drop_nitp_head=not keep_nitp_head)
    try:
        return _export(model, run, ckpt_dir, out_dir, keep_nitp_head, dtype,
                       max_shard_size, progress_bar, keep_mtp_layers)
    finally:
        destroy_distributed_model_parallel()  # the caller may load another checkpoint next


def _export(model, run, ckpt_dir, out_dir, keep_nitp_head, dtype, max_shard_size,
            progress_bar, keep_mtp_layers=False):
    from tqdm import tqdm

    from ..models.mtp import drop_mtp, mtp_tensors
    from .hf_mapping import has_nitp_tensors
    from .hf_tokenizer import build_run_tokenizer, export_tokenizer, special_ids

    nitp = run.nitp_config  # the head's settings (disabled when the head was not loaded)

    shape = shape_from_args(run)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()
          if isinstance(v, torch.Tensor)}
    head = {k: v for k, v in sd.items() if k.startswith("nitp_head.")}
    mtp = {k: v for k, v in mtp_tensors(sd).items() if not k.endswith("_extra_state")}
    sd = drop_mtp(sd)
    if keep_mtp_layers and not mtp:
        raise ConversionError(f"--keep-mtp-layers: checkpoint {ckpt_dir} has no MTP layers")
    if keep_nitp_head and not head:
        raise ConversionError(f"--keep-nitp-head: checkpoint {ckpt_dir} has no NITP head "
                              "(NITP off, generic_cosine, or no projector)")
    run_config = run.run_config
    target_dtype = DTYPES[dtype] if dtype else sd["embedding.word_embeddings.weight"].dtype
    with tqdm(total=shape.num_layers, desc="mapping layers", unit="layer",
              disable=not progress_bar) as bar:
        tensors = megatron_to_hf(sd, shape, progress=bar.update)
    tensors = {k: v.to(target_dtype) for k, v in tensors.items()}
    _trim_vocab(tensors, shape, run_config.get("hf_vocab_size"))

    os.makedirs(out_dir, exist_ok=True)
    warnings = []
    if run.moe_expert_capacity_factor is not None:
        # Token dropping is a training-time limit; transformers' Qwen2-MoE routes every token.
        warnings.append(f"--moe-expert-capacity-factor {run.moe_expert_capacity_factor}: "
                        "trained with token dropping, exported as the dropless model")
    try:
        tokenizer = build_run_tokenizer(run_config, base_dir=ckpt_dir)
        ids = special_ids(tokenizer)
        tok_files, warning = export_tokenizer(tokenizer, out_dir)
        if warning:
            warnings.append(warning)
    except Exception as e:  # a tokenizer file that moved must not block the weights
        tokenizer, ids, tok_files = None, {}, []
        warnings.append(f"tokenizer not exported ({str(e).splitlines()[0][:200]})")
    provenance = {
        "source": os.path.abspath(ckpt_dir), "iteration": run.iteration,
        "padded_vocab_size": run.padded_vocab_size,
        "make_vocab_size_divisible_by": run.make_vocab_size_divisible_by,
        "tokenizer": {"type": tokenizer.tokenizer_type if tokenizer else None,
                      "vocab_size": tokenizer.vocab_size if tokenizer else run.vocab_size},
        "nitp": nitp.to_dict() if keep_nitp_head else None,
    }
    config = hf_config(shape, target_dtype, ids, provenance)
    config.save_pretrained(out_dir)
    _add_legacy_rope_theta(out_dir, shape.rope_theta)
    from transformers import GenerationConfig

    GenerationConfig(**{k: v for k, v in ids.items() if v is not None}).save_pretrained(out_dir)

    max_bytes = parse_size(max_shard_size)
    with tqdm(total=len(tensors), desc="writing safetensors", unit="tensor",
              disable=not progress_bar) as bar:
        files = write_safetensors(tensors, out_dir, max_bytes, progress=bar.update)
    if has_nitp_tensors(tensors):  # the mapping never emits one; keep the promise checked
        raise ConversionError("internal: NITP tensors in the exported model")

    head_params = sum(v.numel() for v in head.values())
    if keep_nitp_head:
        head_t = {k: v.to(target_dtype) for k, v in nitp_head_to_hf(head).items()}
        files += write_safetensors(head_t, out_dir, max_bytes, basename="nitp_head")
        with open(os.path.join(out_dir, "nitp_head.json"), "w") as f:
            json.dump({"target_layer": nitp.target_layer, "shift": nitp.shift,
                       "loss_type": nitp.loss_type, "loss_weight": nitp.loss_weight,
                       "head_ffn_multiplier": nitp.head_ffn_multiplier,
                       "hidden_size": shape.hidden_size, "projector": nitp.projector,
                       "stop_grad": nitp.stop_grad,
                       "layout": "SwiGLU: down_proj(silu(gate_proj(h)) * up_proj(h)), no bias; "
                                 "h = final-norm output; target = output of layer target_layer "
                                 "(0 = embeddings), shifted by `shift` positions"}, f, indent=1)
        files.append("nitp_head.json")

    if keep_mtp_layers:
        files += write_safetensors({k: v.to(target_dtype) for k, v in mtp.items()}, out_dir,
                                   max_bytes, basename="mtp_layers")
    dropped = []
    if mtp and not keep_mtp_layers:
        dropped.append(f"{run.mtp_num_layers} MTP layer(s) (training only; --keep-mtp-layers "
                       "writes them)")
    if not keep_nitp_head and saved_head_in_use(run_config.get("nitp")):
        dropped.append("NITP head (training only; --keep-nitp-head writes it)")
    summary = dict(
        architecture=shape.architecture, out_dir=out_dir, iteration=run.iteration,
        parameters=sum(t.numel() for t in tensors.values()), tensors=len(tensors),
        dtype=str(target_dtype).split(".")[-1], files=files + [os.path.basename(p) for p in tok_files],
        vocab_size=shape.vocab_size, nitp_head_parameters=head_params if keep_nitp_head else 0,
        dropped=dropped, warnings=warnings,
        saved_layout=run.saved_layout)
    return summary


def _add_legacy_rope_theta(out_dir: str, theta: float) -> None:
    """transformers 4.x reads a top-level rope_theta (5.x reads rope_parameters, ignores this)."""
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.setdefault("rope_theta", float(theta))
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
