"""Capturing the implicit token source: the output of transformer layer k.

Layer k is built from its own ModuleSpec (`with_target_capture`), the way megatron-core builds
every module: an `ImplicitTargetLayer` is a TransformerLayer that offers its output hidden states
to the model's `ImplicitTargetCapture`, handed over as a spec param. Full activation recompute
re-runs that layer in backward, which offers a second time: capture is armed only during the
model's own forward and takes the first output, so z is captured exactly once per microbatch.
CUDA graphs replay a layer without running its Python forward; they are rejected at validation.
"""

import dataclasses

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer


class ImplicitTargetCapture:
    def __init__(self):
        self._armed = False
        self.value = None

    def arm(self):
        self._armed, self.value = True, None

    def disarm(self):
        self._armed, self.value = False, None

    def take(self):
        value, self.value = self.value, None
        return value

    def offer(self, value: torch.Tensor):
        if self._armed and self.value is None:
            self.value = value


class ImplicitTargetLayer(TransformerLayer):
    """TransformerLayer k of the NITP objective: its output hidden states are z."""

    def __init__(self, *args, target_capture: ImplicitTargetCapture, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_capture = target_capture

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        # TransformerLayer returns (hidden_states, context).
        self.target_capture.offer(output[0] if isinstance(output, (tuple, list)) else output)
        return output


def with_target_capture(block, local_index: int, capture: ImplicitTargetCapture):
    """A copy of a TransformerBlockSubmodules whose layer `local_index` captures into `capture`."""
    spec = block.layer_specs[local_index]
    assert spec.module is TransformerLayer, \
        f"the NITP target layer must be megatron's TransformerLayer, not {spec.module.__name__}"
    layers = list(block.layer_specs)
    layers[local_index] = dataclasses.replace(
        spec, module=ImplicitTargetLayer, params={**spec.params, "target_capture": capture})
    return dataclasses.replace(block, layer_specs=layers)
