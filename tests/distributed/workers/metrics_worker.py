"""Worker for tests/distributed/test_metrics_sharding.py: App. D's metrics of a mini-batch
measured the way training measures them (per-microbatch sums -> reduce_geometry) equal the
metrics of the whole unsharded mini-batch, for sequence-parallel shards, context-parallel chunks,
data-parallel ranks with several microbatches each, and a list of groups. Plain gloo world, no
megatron state. Prints "PASS <case>" on rank 0."""

import math

import torch
import torch.distributed as dist

from megatron_nitp.nitp.metrics import (GeometryProbe, MicrobatchGeometry, effective_rank,
                                        reduce_geometry, sample_pairs)
from megatron_nitp.nitp.shift import local_global_positions

S, B, D, PAIRS = 8, 8, 6, 200


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    world_group = dist.new_group([0, 1])
    self_groups = [dist.new_group([r]) for r in range(world)]  # size-1 groups: must be no-ops

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(S, B, D, generator=g) @ torch.randn(D, D, generator=g)  # [s, b, d]
    mask = torch.rand(S, B, generator=g) > 0.3
    plan = sample_pairs(B, S, PAIRS, seed=11)
    whole = reduce_geometry([MicrobatchGeometry(plan, 0, B).sums(hidden, mask, torch.arange(S))],
                            plan)
    assert whole["effective_rank"] == effective_rank(hidden, mask)
    assert math.isfinite(whole["pair_cosine"])

    def rows(positions):  # one microbatch of every sequence, this rank's rows
        return [MicrobatchGeometry(plan, 0, B).sums(hidden[positions], mask[positions], positions)]

    def data_parallel():  # mbs 2, 2 microbatches per rank, Megatron's sample order
        probe, out = GeometryProbe(plan, 2, rank, world), []
        for _ in range(2):
            mb = probe.next_microbatch()
            seqs = slice(mb.first_sequence, mb.first_sequence + 2)
            out.append(mb.sums(hidden[:, seqs], mask[:, seqs], torch.arange(S)))
        return out

    cases = {
        "sequence_shards": rows(local_global_positions(S, rank, world, 0, 1, True)),
        "context_chunks": rows(local_global_positions(S, 0, 1, rank, world, False)),
        "batch_shards": data_parallel(),
    }
    for name, reports in cases.items():
        for group in (world_group, [world_group, self_groups[rank]]):
            got = reduce_geometry(reports, plan, group)
            assert math.isclose(got["effective_rank"], whole["effective_rank"], rel_tol=1e-12), name
            assert got["pair_cosine"] == whole["pair_cosine"], (name, got, whole)  # bit-identical
        # Without the group each rank only sees its shard: different numbers (the test can fail).
        alone = reduce_geometry(reports, plan)
        assert not math.isclose(alone["effective_rank"], whole["effective_rank"], rel_tol=1e-6)
        assert not alone["pair_cosine"] == whole["pair_cosine"], name
        if rank == 0:
            print(f"PASS {name}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
