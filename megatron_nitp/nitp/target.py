"""Capturing the implicit token source: the output of transformer layer k.

TransformerBlock has no callback, so a forward hook sits on the layer whose global
`layer_number == k`. Full activation recompute re-runs that layer in backward, which would fire
the hook a second time: capture is armed only during the model's own forward and takes the first
output, so z is captured exactly once per microbatch. CUDA graphs and MoE all-to-all overlap
bypass `nn.Module.__call__` (hooks never fire); they are rejected at validation.
"""

import torch


class ImplicitTargetCapture:
    def __init__(self):
        self._armed = False
        self.value = None

    def arm(self):
        self._armed, self.value = True, None

    def disarm(self):
        self._armed = False

    def take(self):
        value, self.value = self.value, None
        return value

    def offer(self, value: torch.Tensor):
        if self._armed and self.value is None:
            self.value = value

    def hook(self, module, inputs, output):
        # TransformerLayer returns (hidden_states, context).
        self.offer(output[0] if isinstance(output, (tuple, list)) else output)

    def attach(self, decoder, target_layer: int) -> bool:
        """Hook the local layer numbered `target_layer`; False if this chunk does not hold it."""
        for layer in decoder.layers:
            if layer.layer_number == target_layer:
                layer.register_forward_hook(self.hook)
                return True
        return False
