"""benchmarks/overhead.py end to end on a micro shape, one repeat: the JSON schema and sane ratios.

Timing targets are not checked here (timings on a shared machine are flaky); the README's numbers
come from the full run, `python benchmarks/overhead.py --out runs/overhead.json`.
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(REPO, "benchmarks", "overhead.py")


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("overhead")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--micro", "--repeats", "1", "--warmup", "0",
         "--out", str(out / "overhead.json"), "--markdown", str(out / "overhead.md")],
        capture_output=True, text=True, env=env, timeout=300, cwd=str(out))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(out / "overhead.json") as fh:
        records = json.load(fh)
    with open(out / "overhead.md") as fh:
        md = fh.read()
    return records, md, proc.stdout


def test_single_process_record_has_the_three_ratios_and_raw_numbers(run):
    records, _, _ = run
    singles = [r for r in records if r["kind"] == "single_process"]
    assert [r["shape"] for r in singles] == ["micro_dense"]
    r = singles[0]
    for key in ("step_time_ratio", "memory_ratio", "flops_ratio", "cpu_time_ratio",
                "persistent_memory_ratio", "memory_ratio_head_recompute"):
        assert _positive(r[key]), (key, r[key])
    for variant in ("ntp", "nitp"):
        v = r[variant]
        assert len(v["step_time_s"]) == 1 and all(_positive(t) for t in v["step_time_s"])
        assert _positive(v["step_time_median_s"])
        assert v["peak_bytes"] >= v["persistent_bytes"] > 0
    assert r["nitp_recompute"]["peak_bytes"] > 0
    # NITP adds the head's parameters, gradients and Adam state: never less memory.
    assert r["nitp"]["persistent_bytes"] > r["ntp"]["persistent_bytes"]
    assert r["flops_ratio"] > 1
    assert r["flops"]["nitp_head_params"] == 3 * 4 * r["hidden_size"] ** 2


def test_pipeline_record_counts_the_carried_target(run):
    records, _, _ = run
    pipes = [r for r in records if r["kind"] == "pipeline_p2p"]
    assert len(pipes) == 1
    r = pipes[0]
    assert r["nitp_target_layer"] == 1 and r["pipeline_model_parallel_size"] == 2
    assert _positive(r["step_time_ratio"]) and _positive(r["flops_ratio"])
    # Target on stage 0: every boundary carries [h; z], forward and backward.
    assert r["p2p_bytes_ratio"] == 2.0
    assert r["p2p_extra_bytes_per_step"] == r["p2p_extra_bytes_predicted"] > 0


def test_prints_the_three_ratios_and_writes_the_markdown_table(run):
    _, md, stdout = run
    for phrase in ("step-time ratio NITP/NTP", "peak-memory ratio", "FLOPs-predicted ratio"):
        assert phrase in stdout
        assert phrase in md
    assert "micro_dense" in md and "micro_dense_pp2" in md
