"""Carrying the implicit target z through the pipeline.

megatron-core's schedules send one tensor of one shape between stages. When layer k is not on
the last model chunk, every boundary carries cat([h, z], dim=0): the schedule is given a doubled
sequence length (so p2p buffers are [2s/(tp*cp), b, d]) and each chunk splits the received tensor
in `set_input_tensor`. Chunks before the one that owns layer k send zeros in the z half (the
interleaved schedule needs one shape for every boundary). Gradients flow back through the z half
only when stop-grad is off (the ablation). `TargetCarrier` owns the whole protocol: the packing,
the unpacking and the sequence length the schedule is given.
"""

import torch

from ..models.pipeline_layout import chunk_layer_range

BEFORE, OWNER, AFTER = "before", "owner", "after"


def _chunks(config):
    """Model chunks in pipeline order: (pp_rank, vp_stage) for vp-major, pp-minor order."""
    pp = config.pipeline_model_parallel_size
    vp = config.virtual_pipeline_model_parallel_size or 1
    return [(r, v if config.virtual_pipeline_model_parallel_size else None)
            for v in range(vp) for r in range(pp)]


def _layer_range(config, pp_rank, vp_stage):
    # Even, uneven (first/last stage counts) or an explicit layout: megatron-core's placement.
    return chunk_layer_range(config, pp_rank, vp_stage)


def owner_chunk_index(config, target_layer: int) -> int:
    """Index (in pipeline order) of the chunk whose output carries layer `target_layer`."""
    if target_layer == 0:
        return 0  # the embedding output lives on the first chunk
    for i, (r, v) in enumerate(_chunks(config)):
        lo, hi = _layer_range(config, r, v)
        if lo < target_layer <= hi:
            return i
    raise ValueError(f"layer {target_layer} is not built by any pipeline stage")


def target_is_carried(config, target_layer: int) -> bool:
    """True when z must travel to the last chunk (layer k lives on an earlier one)."""
    return owner_chunk_index(config, target_layer) != len(_chunks(config)) - 1


def chunk_role(config, target_layer: int, pp_rank: int, vp_stage) -> str:
    chunks = _chunks(config)
    me = chunks.index((pp_rank, vp_stage if config.virtual_pipeline_model_parallel_size else None))
    owner = owner_chunk_index(config, target_layer)
    return BEFORE if me < owner else OWNER if me == owner else AFTER


def layer_index_on_chunk(config, target_layer: int, pp_rank: int, vp_stage):
    """Local index of layer `target_layer` on chunk (pp_rank, vp_stage), None if not there."""
    lo, hi = _layer_range(config, pp_rank, vp_stage)
    return target_layer - 1 - lo if lo < target_layer <= hi else None


class TargetCarrier:
    """The [h; z] protocol of one model chunk: which part it plays (BEFORE the chunk owning
    layer k, the OWNER, AFTER it), what it receives and what it sends."""

    def __init__(self, config, nitp_config, pp_rank: int, vp_stage):
        k = nitp_config.target_layer
        self.carried = self.is_carried(config, nitp_config)
        self.role = chunk_role(config, k, pp_rank, vp_stage) if nitp_config.uses_target else None
        self._received = None

    @staticmethod
    def is_carried(config, nitp_config) -> bool:
        return (nitp_config.uses_target and config.pipeline_model_parallel_size > 1
                and target_is_carried(config, nitp_config.target_layer))

    @classmethod
    def schedule_seq_length(cls, config, nitp_config, seq_length: int) -> int:
        """The sequence length to give megatron's schedule (it sizes the p2p buffers)."""
        return 2 * seq_length if cls.is_carried(config, nitp_config) else seq_length

    def receive(self, input_tensor):
        """The previous chunk's output -> h (z kept for `received`)."""
        if self.carried and input_tensor is not None:
            h, self._received = input_tensor.chunk(2, dim=0)
            return h
        return input_tensor

    def received(self):
        return self._received

    def send(self, hidden_states, target):
        """h (and this chunk's z, or the one received) -> what the schedule sends on."""
        if not self.carried:
            return hidden_states
        if target is None:  # BEFORE the owner: zeros keep every boundary's shape
            target = torch.zeros_like(hidden_states)
        return torch.cat([hidden_states, target.to(hidden_states.dtype)], dim=0)

    def reset(self):
        self._received = None
