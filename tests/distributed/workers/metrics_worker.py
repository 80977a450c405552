"""Worker for tests/distributed/test_metrics_sharding.py: metrics of sharded hidden states equal the
metrics of the whole tensor, for sequence shards (SP-style), batch shards (DP-style) and both
with a list of groups. Plain gloo world, no megatron state. Prints "PASS <case>" on rank 0."""

import math

import torch
import torch.distributed as dist

from megatron_nitp.nitp.metrics import effective_rank, pair_cosine


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    world_group = dist.new_group([0, 1])
    self_groups = [dist.new_group([r]) for r in range(world)]  # size-1 groups: must be no-ops

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(8, 4, 6, generator=g) @ torch.randn(6, 6, generator=g)  # [s, b, d]
    mask = torch.rand(8, 4, generator=g) > 0.3
    whole_rank = effective_rank(hidden, mask)
    whole_cos = pair_cosine(hidden, mask)

    shards = {
        "sequence_shards": (hidden.chunk(world, 0)[rank], mask.chunk(world, 0)[rank]),
        "batch_shards": (hidden.chunk(world, 1)[rank], mask.chunk(world, 1)[rank]),
    }
    for name, (h, m) in shards.items():
        for group in (world_group, [world_group, self_groups[rank]]):
            assert math.isclose(effective_rank(h, m, group), whole_rank, rel_tol=1e-9), name
            assert math.isclose(pair_cosine(h, m, group), whole_cos, rel_tol=1e-9, abs_tol=1e-12), name
        # Without the group each rank only sees its shard: a different number (the test can fail).
        assert not math.isclose(effective_rank(h, m), whole_rank, rel_tol=1e-6), name
        # Sampled: same value on every rank, close to the exact mean.
        sampled = pair_cosine(h, m, world_group, num_pairs=20000)
        both = [None, None]
        dist.all_gather_object(both, sampled)
        assert both[0] == both[1] and abs(sampled - whole_cos) < 0.02, (name, both, whole_cos)
        if rank == 0:
            print(f"PASS {name}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
