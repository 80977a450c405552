"""Canaries: the private megatron-core 0.16.1 seams NITP relies on. A megatron-core upgrade that
moves one of them fails the test named after it, instead of NITP silently training wrong.

- NITPGPTModel overrides `GPTModel._postprocess` with its parameters by name, and reads
  `hidden_states`, `labels`, `loss_mask` and `decoder_input` (models/gpt_nitp.py);
- NITP's per-forward inputs (geometry, the NITP base mask) cannot ride on GPTModel.forward's
  `extra_block_kwargs`: the blocks it is also splatted into take no unknown keys (ForwardInputs);
- the pipeline carries [h; z] by doubling `seq_length` given to the schedule, which sizes its
  p2p buffers from it (parallel/pipeline.py, TargetCarrier);
- the implicit target is captured by layer k itself, built from its own ModuleSpec: that needs
  TransformerBlock to build each layer from its spec with the spec's params, and
  TransformerLayer.forward to return (hidden_states, context) (nitp/target.py).
"""

import inspect
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def test_gpt_model_postprocess_takes_the_arguments_nitp_reads():
    from megatron.core.models.gpt import GPTModel

    from megatron_nitp.models.gpt_nitp import NITPGPTModel

    params = list(inspect.signature(GPTModel._postprocess).parameters)
    ours = [p for p in inspect.signature(NITPGPTModel._postprocess).parameters
            if p != "rest"]
    # The override names megatron's parameters in megatron's order, up to decoder_input.
    assert params[:len(ours)] == ours, (params, ours)
    for name in ("labels", "loss_mask", "decoder_input"):
        assert name in params, f"GPTModel._postprocess lost {name!r}"
    # ... and GPTModel.forward hands them over by keyword.
    forward = inspect.getsource(GPTModel.forward)
    for name in ("hidden_states", "labels", "loss_mask", "decoder_input"):
        assert f"{name}={name}" in forward, f"GPTModel.forward no longer passes {name}="


def test_extra_block_kwargs_reach_blocks_that_reject_unknown_keys():
    from megatron.core.transformer.multi_token_prediction import MultiTokenPredictionBlock
    from megatron.core.transformer.transformer_block import TransformerBlock

    # If this fails, megatron-core grew a pass-through: ForwardInputs could travel in
    # extra_block_kwargs instead of on the model (models/gpt_nitp.py).
    for forward in (TransformerBlock.forward, MultiTokenPredictionBlock.forward):
        kinds = [p.kind for p in inspect.signature(forward).parameters.values()]
        assert inspect.Parameter.VAR_KEYWORD not in kinds, forward.__qualname__


def test_pipeline_schedules_size_p2p_buffers_from_seq_length():
    from megatron.core.pipeline_parallel import schedules

    group = lambda n: SimpleNamespace(size=lambda: n)  # noqa: E731
    for sp, tp, cp, want in ((False, 2, 1, 64), (True, 2, 1, 32), (True, 2, 2, 16)):
        config = SimpleNamespace(sequence_parallel=sp, hidden_size=8)
        shapes = schedules.get_tensor_shapes(seq_length=64, micro_batch_size=3,
                                             decoder_seq_length=None, config=config,
                                             tp_group=group(tp), cp_group=group(cp))
        assert shapes == [(want, 3, 8)], (sp, tp, cp, shapes)
    # The interleaved schedule computes its shape inline from the same argument.
    interleaved = inspect.getsource(schedules.forward_backward_pipelining_with_interleaving)
    assert "tensor_shape = [seq_length, micro_batch_size, config.hidden_size]" in interleaved


def test_transformer_block_builds_layer_k_from_its_own_spec(mp):
    import dataclasses

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_block import (TransformerBlock,
                                                             TransformerBlockSubmodules)

    from megatron_nitp.nitp.target import (ImplicitTargetCapture, ImplicitTargetLayer,
                                           with_target_capture)

    config = TransformerConfig(num_layers=3, hidden_size=16, num_attention_heads=2,
                               add_bias_linear=False, gated_linear_unit=True,
                               activation_func=F.silu, bias_activation_fusion=False,
                               masked_softmax_fusion=False, apply_rope_fusion=False,
                               gradient_accumulation_fusion=False, persist_layer_norm=False)
    layer = get_gpt_layer_local_spec()
    capture = ImplicitTargetCapture()
    spec = with_target_capture(TransformerBlockSubmodules(layer_specs=[layer] * 3), 1, capture)
    block = TransformerBlock(config, spec)
    assert [type(l) for l in block.layers][1] is ImplicitTargetLayer
    assert block.layers[1].target_capture is capture and block.layers[1].layer_number == 2
    seen = []  # layer 3's input is layer 2's output
    block.layers[2].register_forward_pre_hook(lambda m, args, kw: seen.append(kw.get(
        "hidden_states", args[0] if args else None)), with_kwargs=True)
    capture.arm()
    out = block(torch.randn(5, 2, 16), attention_mask=None)
    z = capture.take()
    assert z is not None and z.shape == (5, 2, 16) and torch.equal(z, seen[0])
    assert out.shape == (5, 2, 16)
    assert dataclasses.is_dataclass(spec) and spec.layer_specs[0] is layer  # others untouched
