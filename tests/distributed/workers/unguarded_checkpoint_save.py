"""Deliberately WITHOUT an `if __name__ == "__main__":` guard: a user script like this one must be
able to save a megatron dist checkpoint on CPU. megatron-core's writer starts a multiprocessing
Manager with the *spawn* context, which re-imports this file; the CPU layer makes it fork.
Usage: python unguarded_checkpoint_save.py DIR  -> prints SAVED_AND_LOADED."""

import sys

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor

from megatron_nitp.parallel.distributed import initialize_distributed

initialize_distributed()
checkpoint_dir = sys.argv[1]
dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", torch.arange(6.0))}, checkpoint_dir)
loaded = dist_checkpointing.load(
    {"w": ShardedTensor.from_rank_offsets("w", torch.zeros(6))}, checkpoint_dir
)
assert torch.equal(loaded["w"], torch.arange(6.0)), loaded["w"]
print("SAVED_AND_LOADED", flush=True)
