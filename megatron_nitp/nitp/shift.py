"""The NITP one-token shift z_{t} -> z_{t+shift} on sequence-parallel and context-parallel shards.

Layout (megatron-core's): with context parallelism (CP) the sequence is cut into 2*cp chunks and
CP rank r holds [chunk r ; chunk 2cp-1-r] (load balancing for causal attention; see
`get_batch_on_this_cp_rank` and `roll_tensor(..., cp_group)` in transformer/multi_token_prediction.py).
With sequence parallelism (SP) that CP-local sequence is further split into contiguous TP shards,
so hidden states are [s/(cp*tp), b, d]. Each rank's rows therefore form at most two contiguous runs
("segments") of global positions.

The shift is a halo exchange, not a gather of the sequence: every rank publishes the first `shift`
rows of each of its segments (a fixed-size table, zero-padded), the tables are all-gathered over
the ranks that share the sequence (TP under SP, then CP), and each row takes its target from its
own rows when the target is local and from the table otherwise. Positions past the end of the
sequence get zeros; `valid_target_mask` drops them from the loss. Gradients flow back through the
gather (stop-gradient off ablation). The table positions are a function of the layout, so every
rank computes them instead of gathering them.
"""

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

# ----------------------------------------------------------------------------------------------
# positions
# ----------------------------------------------------------------------------------------------


def local_global_positions(
    seq_length: int,
    tp_rank: int,
    tp_size: int,
    cp_rank: int,
    cp_size: int,
    sequence_parallel: bool,
) -> torch.LongTensor:
    """Global sequence position of each local row (the rows of a [s_local, ...] hidden state)."""
    if cp_size > 1:
        if seq_length % (2 * cp_size):
            raise ValueError(f"seq_length {seq_length} is not divisible by 2*cp = {2 * cp_size}")
        chunk = seq_length // (2 * cp_size)
        first, second = cp_rank, 2 * cp_size - 1 - cp_rank
        positions = torch.cat(
            [
                torch.arange(first * chunk, (first + 1) * chunk),
                torch.arange(second * chunk, (second + 1) * chunk),
            ]
        )
    else:
        positions = torch.arange(seq_length)
    if sequence_parallel and tp_size > 1:
        if positions.numel() % tp_size:
            raise ValueError(
                f"CP-local sequence length {positions.numel()} is not divisible by tp = {tp_size}"
            )
        rows = positions.numel() // tp_size
        positions = positions[tp_rank * rows : (tp_rank + 1) * rows]
    return positions


def valid_target_mask(
    loss_mask_local: torch.Tensor, seq_length: int, cp_rank: int, cp_size: int, shift: int = 1
) -> torch.Tensor:
    """`loss_mask_local` ([b, s/cp], CP-local, CP chunk order, not SP-split) with the positions
    whose target t+shift lies past the sequence end also masked out. Same dtype as the input."""
    if shift == 0:
        return loss_mask_local
    positions = local_global_positions(seq_length, 0, 1, cp_rank, cp_size, False)
    has_target = (positions + shift < seq_length).to(loss_mask_local.device)
    return loss_mask_local.masked_fill(~has_target.unsqueeze(0), 0)


def _segments(positions: torch.Tensor) -> List[Tuple[int, int]]:
    """(first local row, length) of each run of consecutive positions."""
    breaks = (torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1).tolist()
    starts = [0] + breaks
    ends = breaks + [positions.numel()]
    return [(s, e - s) for s, e in zip(starts, ends)]


_MAX_SEGMENTS = 2  # [chunk r ; chunk 2cp-1-r], possibly cut by an SP shard boundary


def _table_rows(positions: torch.Tensor, shift: int) -> torch.LongTensor:
    """Local row indices this rank publishes (first `shift` rows of each segment), -1 = padding."""
    rows = torch.full((_MAX_SEGMENTS * shift,), -1, dtype=torch.long)
    segments = _segments(positions)
    assert len(segments) <= _MAX_SEGMENTS, segments
    for k, (start, length) in enumerate(segments):
        n = min(shift, length)
        rows[k * shift : k * shift + n] = torch.arange(start, start + n)
    return rows


def _table_positions(positions: torch.Tensor, shift: int) -> torch.LongTensor:
    rows = _table_rows(positions, shift)
    return torch.where(rows >= 0, positions[rows.clamp(min=0)], torch.full_like(rows, -1))


def _table(z: torch.Tensor, positions: torch.Tensor, shift: int) -> torch.Tensor:
    """This rank's published rows, zero-padded to a fixed [2*shift, ...] (all-gather needs it)."""
    rows = _table_rows(positions, shift).to(z.device)
    table = z.index_select(0, rows.clamp(min=0))
    return table * (rows >= 0).to(z.dtype).view(-1, *([1] * (z.dim() - 1)))


def _shift_from_table(
    z: torch.Tensor,
    positions: torch.Tensor,
    table: torch.Tensor,
    table_positions: torch.Tensor,
    seq_length: int,
    shift: int,
) -> torch.Tensor:
    """out[i] = z_global[positions[i] + shift], from local rows or the gathered table, 0 past the end."""
    s_local = z.size(0)
    zero_row = s_local + table.size(0)
    lookup = torch.full((seq_length + shift + 1,), -1, dtype=torch.long)
    published = table_positions >= 0
    lookup[table_positions[published]] = s_local + torch.nonzero(published).flatten()
    lookup[positions] = torch.arange(s_local)  # local rows win: no communication in the backward
    wanted = positions + shift
    index = lookup[wanted]
    missing = (index < 0) & (wanted < seq_length)
    if missing.any():
        raise RuntimeError(f"halo table lacks positions {wanted[missing].tolist()}: layout bug")
    index = torch.where(index < 0, torch.full_like(index, zero_row), index).to(z.device)
    source = torch.cat([z, table, torch.zeros_like(z[:1])], dim=0)
    return source.index_select(0, index)


# ----------------------------------------------------------------------------------------------
# communication
# ----------------------------------------------------------------------------------------------


class _AllGatherFirstDim(torch.autograd.Function):
    """all_gather along dim 0; backward: all_reduce(sum) of the gathered grad, keep own slice.

    (The backward is a reduce-scatter; an all-reduce of the small halo table is as cheap and works
    on every backend.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = x.new_empty((group.size() * x.size(0),) + tuple(x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.group.size(), dim=0)[ctx.group.rank()], None


def _size(group) -> int:
    return 1 if group is None else group.size()


def _rank(group) -> int:
    return 0 if group is None else group.rank()


def _default_cp_group():
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_context_parallel_group()
    return None


def shift_implicit_target(
    z: torch.Tensor,
    seq_length: int,
    tp_group: Optional[dist.ProcessGroup] = None,
    cp_group: Optional[dist.ProcessGroup] = None,
    shift: int = 1,
) -> torch.Tensor:
    """z_next[i] = z_global[pos_i + shift] for each local row i (sequence on dim 0), 0 past the end.

    Args:
        z: local rows of the target hidden states, [s_local, ...].
        seq_length: global sequence length.
        tp_group: the group z's sequence is split over by sequence parallelism; None = z is not
            SP-split (SP off, whatever the TP size).
        cp_group: context-parallel group; None = parallel_state's CP group when model parallel is
            initialised (size 1 without CP), else no CP.
        shift: 0 returns z unchanged.

    Autograd-correct when z requires grad. Rank order inside the groups must be the shard order
    (true for megatron's groups: SP shard = TP rank, CP chunk pair = CP rank).
    """
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if shift == 0:
        return z
    if cp_group is None:
        cp_group = _default_cp_group()
    tp_size, tp_rank = _size(tp_group), _rank(tp_group)
    cp_size, cp_rank = _size(cp_group), _rank(cp_group)
    sp = tp_size > 1
    positions = local_global_positions(seq_length, tp_rank, tp_size, cp_rank, cp_size, sp)
    if positions.numel() != z.size(0):
        raise ValueError(
            f"z has {z.size(0)} rows, the layout (seq {seq_length}, tp {tp_size} SP, cp {cp_size}) "
            f"gives {positions.numel()}"
        )
    if tp_size == 1 and cp_size == 1:
        table = z[:0]
        table_positions = torch.empty(0, dtype=torch.long)
    else:
        table = _table(z, positions, shift)
        if tp_size > 1:
            table = _AllGatherFirstDim.apply(table, tp_group)
        if cp_size > 1:
            table = _AllGatherFirstDim.apply(table, cp_group)
        # Gather order: outer CP rank, inner TP rank.
        table_positions = torch.cat(
            [
                _table_positions(local_global_positions(seq_length, t, tp_size, c, cp_size, sp), shift)
                for c in range(cp_size)
                for t in range(tp_size)
            ]
        )
    return _shift_from_table(z, positions, table, table_positions, seq_length, shift)
