"""Where each local row of a sharded hidden state sits in the global sequence, and the halo shift
built on it, checked in one process (the multi-rank version is tests/distributed/test_shift.py)."""

import pytest
import torch
from megatron.core.utils import get_batch_on_this_cp_rank

from megatron_nitp.nitp import shift as S


class _FakeGroup:
    def __init__(self, rank, size):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


@pytest.mark.parametrize("seq, cp", [(8, 2), (12, 2), (16, 4), (24, 3)])
def test_cp_positions_follow_megatrons_get_batch_on_this_cp_rank(monkeypatch, seq, cp):
    # megatron only looks at the group when torch.distributed is initialised.
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    for rank in range(cp):
        batch = {"position_ids": torch.arange(seq).unsqueeze(0)}
        megatron_rows = get_batch_on_this_cp_rank(batch, cp_group=_FakeGroup(rank, cp))
        ours = S.local_global_positions(seq, 0, 1, rank, cp, sequence_parallel=False)
        assert torch.equal(ours, megatron_rows["position_ids"][0])


def test_sp_splits_the_cp_local_sequence_into_contiguous_tp_shards():
    # CP rank 1 of 2 with seq 12 holds positions [3,4,5, 6,7,8]; TP3 + SP cuts that into pairs.
    shards = [S.local_global_positions(12, t, 3, 1, 2, True).tolist() for t in range(3)]
    assert shards == [[3, 4], [5, 6], [7, 8]]
    # Without SP every TP rank holds the whole CP-local sequence.
    assert S.local_global_positions(12, 2, 3, 1, 2, False).tolist() == [3, 4, 5, 6, 7, 8]


def test_layouts_that_do_not_divide_are_rejected():
    with pytest.raises(ValueError):
        S.local_global_positions(10, 0, 1, 0, 4, False)  # 10 % (2*4)
    with pytest.raises(ValueError):
        S.local_global_positions(12, 0, 5, 0, 1, True)  # 12 % 5


def _expected(z_full, positions, seq, shift):
    out = torch.zeros((len(positions),) + tuple(z_full.shape[1:]), dtype=z_full.dtype)
    for i, p in enumerate(positions.tolist()):
        if p + shift < seq:
            out[i] = z_full[p + shift]
    return out


@pytest.mark.parametrize("seq, tp, cp", [(12, 3, 2), (24, 3, 4), (24, 4, 3), (10, 5, 1), (16, 2, 2)])
@pytest.mark.parametrize("shift", [1, 2, 3])
def test_halo_table_gives_every_rank_its_shifted_rows(seq, tp, cp, shift):
    """All ranks of a TP x CP layout simulated in one process, the all-gather replaced by a cat in
    the same (CP outer, TP inner) order. (12, 3, 2) has SP shards that straddle the two CP chunks
    of a rank, i.e. two segments per rank, which 2- and 4-rank launches cannot produce."""
    z_full = torch.randn(seq, 2, 3, dtype=torch.float64)
    ranks = [(c, t) for c in range(cp) for t in range(tp)]
    pos = {r: S.local_global_positions(seq, r[1], tp, r[0], cp, tp > 1) for r in ranks}
    table = torch.cat([S._table(z_full[pos[r]], pos[r], shift) for r in ranks])
    table_positions = torch.cat([S._table_positions(pos[r], shift) for r in ranks])
    for r in ranks:
        out = S._shift_from_table(z_full[pos[r]], pos[r], table, table_positions, seq, shift)
        assert torch.equal(out, _expected(z_full, pos[r], seq, shift)), r


def test_straddling_shard_has_two_segments():
    assert S._segments(S.local_global_positions(12, 1, 3, 0, 2, True)) == [(0, 1), (1, 1)]


def test_unsharded_shift_and_shift_zero():
    z = torch.randn(5, 2, 4, requires_grad=True)
    assert S.shift_implicit_target(z, 5, shift=0) is z
    out = S.shift_implicit_target(z, 5, shift=1)
    assert torch.equal(out[:4], z[1:]) and torch.equal(out[4], torch.zeros(2, 4))
    out.sum().backward()
    assert torch.equal(z.grad[0], torch.zeros(2, 4)) and torch.equal(z.grad[1:], torch.ones(4, 2, 4))


def test_valid_target_mask_drops_positions_without_a_target_in_cp_chunk_order():
    loss_mask = torch.ones(2, 8)  # seq 16, CP2 rank 1: positions 4..7 and 8..11 -> none at the end
    assert torch.equal(S.valid_target_mask(loss_mask, 16, 1, 2), loss_mask)
    # rank 0 holds 0..3 and 12..15: position 15 has no next token, 14 has none two ahead either
    mask = S.valid_target_mask(torch.ones(2, 8), 16, 0, 2, shift=2)
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    bool_mask = S.valid_target_mask(torch.ones(1, 16, dtype=torch.bool), 16, 0, 1)
    assert bool_mask.dtype == torch.bool and bool_mask[0].tolist() == [True] * 15 + [False]
