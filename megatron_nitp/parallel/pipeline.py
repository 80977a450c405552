"""Carrying the implicit target z through the pipeline.

megatron-core's schedules send one tensor of one shape between stages. When layer k is not on
the last model chunk, every boundary carries cat([h, z], dim=0): the schedule is given a doubled
sequence length (so p2p buffers are [2s/(tp*cp), b, d]) and each chunk splits the received tensor
in `set_input_tensor`. Chunks before the one that owns layer k send zeros in the z half (the
interleaved schedule needs one shape for every boundary). Gradients flow back through the z half
only when stop-grad is off (the ablation).
"""

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


def schedule_seq_length(seq_length: int, carried: bool) -> int:
    """The sequence length to give megatron's schedule (it sizes the p2p buffers)."""
    return 2 * seq_length if carried else seq_length
