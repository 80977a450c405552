"""benchmarks/metrics_overhead.py end to end on the micro shape: metrics steps are measured
(the step asserts an effective rank came back) and the record has the per-interval overheads,
the paper configs' interval among them. Timings themselves are not checked (shared machine)."""

import json
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_micro_run_reports_the_overhead_at_the_configs_interval(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "metrics_overhead.py"),
                           "--micro", "--repeats", "2", "--warmup", "0",
                           "--out", str(tmp_path / "m.json"), "--markdown", str(tmp_path / "m.md")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (rec,) = json.loads((tmp_path / "m.json").read_text())
    assert rec["config_interval"] == 100
    assert set(rec["overhead_at_interval"]) == {"1", "10", "100"}
    assert len(rec["times_on"]) == len(rec["times_off"]) == 2
    extra = rec["metrics_step_extra_s"]
    assert extra > 0  # the measurement itself was timed
    assert "overhead every 100" in (tmp_path / "m.md").read_text()
