"""The SP-aware torch norm marks its parameters for finalize_model_grads' TP all-reduce, and
`use_sequence_parallel_norms` puts it everywhere megatron's local specs have WrappedTorchNorm."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_layer_local_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_nitp.parallel.norms import SequenceParallelTorchNorm, use_sequence_parallel_norms


def config(**kw):
    base = dict(num_layers=4, hidden_size=16, num_attention_heads=2, tensor_model_parallel_size=2,
                sequence_parallel=True, normalization="RMSNorm", add_bias_linear=False,
                gated_linear_unit=True, activation_func=F.silu, bias_activation_fusion=False)
    base.update(kw)
    return TransformerConfig(**base)


@pytest.mark.parametrize("normalization, cls", [("RMSNorm", torch.nn.RMSNorm),
                                                ("LayerNorm", torch.nn.LayerNorm)])
def test_norm_parameters_are_marked_sequence_parallel_under_sp(normalization, cls):
    norm = SequenceParallelTorchNorm(config(normalization=normalization), 16, eps=1e-6)
    assert isinstance(norm, cls) and norm.eps == 1e-6
    params = list(norm.parameters())
    assert params and all(p.sequence_parallel is True for p in params)
    # WrappedTorchNorm refuses this config outright.
    with pytest.raises(AssertionError):
        WrappedTorchNorm(config(normalization=normalization), 16)


def test_without_sp_the_mark_is_false():
    norm = SequenceParallelTorchNorm(config(sequence_parallel=False), 16)
    assert all(p.sequence_parallel is False for p in norm.parameters())


def _modules(spec):
    """Every module class mentioned anywhere in a spec tree."""
    if isinstance(spec, ModuleSpec):
        yield spec.module
        yield from _modules(spec.submodules)
    elif isinstance(spec, (list, tuple)):
        for s in spec:
            yield from _modules(s)
    elif dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        for f in dataclasses.fields(spec):
            yield from _modules(getattr(spec, f.name))
    elif isinstance(spec, type):
        yield spec


def test_every_wrapped_torch_norm_of_a_moe_block_spec_is_replaced_without_mutating_it():
    cfg = config(num_moe_experts=4, moe_layer_freq=[0, 1, 0, 1], moe_grouped_gemm=False)
    spec = get_gpt_decoder_block_spec(cfg, use_transformer_engine=False, normalization="RMSNorm",
                                      pp_rank=0)
    assert WrappedTorchNorm in set(_modules(spec))
    replaced = use_sequence_parallel_norms(spec)
    assert WrappedTorchNorm not in set(_modules(replaced))
    assert SequenceParallelTorchNorm in set(_modules(replaced))
    assert replaced.layer_norm is SequenceParallelTorchNorm
    assert WrappedTorchNorm in set(_modules(spec)), "the input spec must not change"


def test_a_layer_spec_is_replaced_too():
    replaced = use_sequence_parallel_norms(get_gpt_layer_local_spec(normalization="RMSNorm"))
    assert replaced.submodules.input_layernorm is SequenceParallelTorchNorm
    assert replaced.submodules.pre_mlp_layernorm is SequenceParallelTorchNorm
