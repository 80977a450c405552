"""Effective rank and pair cosine (App. D) are sharding-invariant: two gloo ranks holding sequence
(SP) shards, context-parallel chunks or data-parallel microbatches give the numbers of the whole
mini-batch (rank: to 1e-12; pair cosine: bit-identical). See workers/metrics_worker.py."""

from pathlib import Path

from tests.helpers import run_torchrun

WORKER = Path(__file__).parent / "workers" / "metrics_worker.py"


def test_sharded_metrics_equal_unsharded_metrics():
    out = run_torchrun(WORKER, 2, timeout=180).stdout
    for case in ("sequence_shards", "context_chunks", "batch_shards"):
        assert f"[rank 0] PASS {case}" in out, out
