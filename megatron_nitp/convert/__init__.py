"""Checkpoint conversion between megatron-nitp (megatron-core dist checkpoints) and Hugging Face.

hf_mapping: tensor names and layouts, both directions (pure torch, no process groups);
            hf_deepseek the same for multi-latent attention (DeepseekV3).
tensor_map: the rules a mapping is written in, once, and the walk that reads them either way.
hf_export:  a megatron-nitp checkpoint -> a transformers directory (+ optional NITP head files).
hf_import:  a transformers directory -> a megatron-nitp model-only ("release") checkpoint.
hf_tokenizer: the run's tokenizer as files `AutoTokenizer` loads.
"""

from ..errors import UserError


class ConversionError(UserError):
    """Bad input for a conversion; the message is one line for the user."""


LLAMA = "LlamaForCausalLM"
QWEN2_MOE = "Qwen2MoeForCausalLM"
QWEN3 = "Qwen3ForCausalLM"  # dense with per-head q/k RMSNorm (--qk-layernorm)
QWEN3_MOE = "Qwen3MoeForCausalLM"  # MoE with q/k RMSNorm, no shared expert
DEEPSEEK_V3 = "DeepseekV3ForCausalLM"  # multi-latent attention (dense or sigmoid-routed MoE)
SUPPORTED = (LLAMA, QWEN2_MOE, QWEN3, QWEN3_MOE, DEEPSEEK_V3)
MOE_ARCHITECTURES = (QWEN2_MOE, QWEN3_MOE)
_MODEL_TYPES = {"llama": LLAMA, "qwen2_moe": QWEN2_MOE, "qwen3": QWEN3, "qwen3_moe": QWEN3_MOE,
                "deepseek_v3": DEEPSEEK_V3}


def hf_architecture(config: dict) -> str:
    """One of SUPPORTED for a transformers config.json dict, else ConversionError.
    (No torch import: the CLI checks this before loading anything heavy.)"""
    arch = (config.get("architectures") or [None])[0]
    if arch in SUPPORTED:
        return arch
    if arch is None and config.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[config["model_type"]]
    raise ConversionError(f"config.json: unknown architecture {arch or config.get('model_type')!r} "
                          f"(supported: {', '.join(SUPPORTED)})")
