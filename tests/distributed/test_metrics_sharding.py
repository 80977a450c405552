"""Effective rank and pair cosine are sharding-invariant: two gloo ranks holding sequence shards or
batch shards give the numbers of the whole tensor. See workers/metrics_worker.py."""

from pathlib import Path

from tests.helpers import run_torchrun

WORKER = Path(__file__).parent / "workers" / "metrics_worker.py"


def test_sharded_metrics_equal_unsharded_metrics():
    out = run_torchrun(WORKER, 2, timeout=180).stdout
    assert "[rank 0] PASS sequence_shards" in out and "[rank 0] PASS batch_shards" in out, out
