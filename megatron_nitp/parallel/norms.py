"""A torch LayerNorm/RMSNorm for megatron's local (non-Transformer-Engine) specs that supports
sequence parallelism, and a helper that puts it into an existing spec.

Why: megatron-core's `WrappedTorchNorm` (transformer/torch_norm.py) asserts
`not config.sequence_parallel`. Under SP each TP rank normalises its own `s/tp` rows, so the norm
weight's gradient on one rank only covers its rows; the full gradient is the sum over TP.
`finalize_model_grads` (`_allreduce_non_tensor_model_parallel_grads`) all-reduces exactly the
parameters marked `sequence_parallel = True` when `config.sequence_parallel` is on, which is how
TENorm works. Unmarked, TP2+SP silently drifts from TP2 (measured 4e-3 after two steps); marked,
they are bit-identical. The all-reduce needs megatron DDP (or a direct `finalize_model_grads`).
"""

import dataclasses

import torch
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_config import TransformerConfig


class SequenceParallelTorchNorm:
    """Drop-in for `WrappedTorchNorm`/`TENorm` in a `ModuleSpec`: same constructor, SP allowed.

    Builds `torch.nn.LayerNorm` or `torch.nn.RMSNorm` from `config.normalization` (like
    `WrappedTorchNorm`) and marks its parameters `sequence_parallel = config.sequence_parallel`.
    """

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ) -> torch.nn.Module:
        # Same limits as WrappedTorchNorm: torch's norms have no zero-centred gamma.
        assert not config.layernorm_zero_centered_gamma, "zero_centered_gamma needs TENorm"
        if config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(normalized_shape=hidden_size, eps=eps)
        elif config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(normalized_shape=hidden_size, eps=eps)
        else:
            raise ValueError(f"unsupported normalization {config.normalization!r}")
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def use_sequence_parallel_norms(spec):
    """Return a copy of a local GPT spec with every `WrappedTorchNorm` replaced.

    Accepts what megatron's spec builders return: a `ModuleSpec` (e.g.
    `get_gpt_layer_local_spec()`) or `TransformerBlockSubmodules` (e.g.
    `get_gpt_decoder_block_spec(config, use_transformer_engine=False)`). Note that a bare layer
    spec makes `TransformerBlock` pick its final norm itself (`WrappedTorchNorm` without apex), so
    under SP wrap the layer spec in `TransformerBlockSubmodules(layer_specs=[...], layer_norm=
    SequenceParallelTorchNorm)` or use a block spec.
    """
    if spec is WrappedTorchNorm:
        return SequenceParallelTorchNorm
    if isinstance(spec, ModuleSpec):
        module = SequenceParallelTorchNorm if spec.module is WrappedTorchNorm else spec.module
        return dataclasses.replace(
            spec, module=module, submodules=use_sequence_parallel_norms(spec.submodules)
        )
    if isinstance(spec, (list, tuple)):  # TransformerBlockSubmodules.layer_specs
        return type(spec)(use_sequence_parallel_norms(s) for s in spec)
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        changes = {
            f.name: use_sequence_parallel_norms(getattr(spec, f.name))
            for f in dataclasses.fields(spec)
            if f.init
        }
        return dataclasses.replace(spec, **changes)
    return spec
