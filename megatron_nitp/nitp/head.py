"""The NITP projection head P: SwiGLU d -> mult*d -> d without bias (paper §3.4, App. G).

Built as megatron-core's `MLP` from a ModuleSpec, so it is tensor-parallel (column-parallel
gate/up, row-parallel down; sequence-parallel aware) and its sharded_state_dict reshards across
TP sizes like any MLP (gated fc1 uses the SwiGLU sharded factory). Training only: it is built on
the last pipeline stage and dropped at export.
"""

import dataclasses

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec, build_module


def get_nitp_head_spec(use_transformer_engine: bool = False) -> ModuleSpec:
    if use_transformer_engine:
        from megatron.core.extensions.transformer_engine import (
            TEColumnParallelLinear,
            TERowParallelLinear,
        )

        fc1, fc2 = TEColumnParallelLinear, TERowParallelLinear
    else:
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

        fc1, fc2 = ColumnParallelLinear, RowParallelLinear
    return ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=fc1, linear_fc2=fc2))


def head_transformer_config(config, multiplier: int):
    """The backbone's TransformerConfig with the head's MLP settings (SwiGLU, no bias)."""
    return dataclasses.replace(
        config,
        ffn_hidden_size=multiplier * config.hidden_size,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        bias_activation_fusion=False,
    )


class NITPHead(torch.nn.Module):
    """P(h). `recompute` keeps only the input and reruns the head in backward: the 12d-wide
    intermediate activations are the head's whole memory cost."""

    def __init__(self, config, spec: ModuleSpec, multiplier: int = 4, recompute: bool = False):
        super().__init__()
        head_config = head_transformer_config(config, multiplier)
        self.mlp = build_module(spec, config=head_config,
                                ffn_hidden_size=head_config.ffn_hidden_size)
        self.recompute = recompute

    def _forward(self, h):
        out, bias = self.mlp(h)
        return out if bias is None else out + bias

    def forward(self, h):
        if self.recompute and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, h, use_reentrant=False)
        return self._forward(h)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        return self.mlp.sharded_state_dict(f"{prefix}mlp.", sharded_offsets, metadata)
