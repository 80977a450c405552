"""benchmarks/gpu_check.py (issue #17) on its CPU dry path: the same code as on the H200 (the
CPU reference, the continuation checks through the CLI, the NTP-vs-NITP benchmark of both
shapes), tiny shapes; the JSON has exactly the issue's keys."""

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.engine_runner import REPO_ROOT, engine_env

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
SHAPE_KEYS = {"shape", "step_time_ratio", "flops_ratio", "memory_ratio", "tokens_per_sec_ntp",
              "tokens_per_sec_nitp", "mfu_ntp", "mfu_nitp", "peak_gib_ntp", "peak_gib_nitp"}


def _run(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=engine_env(), start_new_session=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_gpu_check_dry_run_writes_the_issue_keys(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "results" / "gpu_check.json"
    _run("prepare", "--ref", ref)
    _run("run", "--ref", ref, "--dry-run", "--repeats", "1", "--out", out)
    result = json.loads(out.read_text())
    assert set(result) == {"device_name", "cuda_vs_cpu_max_rel", "shapes"}
    assert result["cuda_vs_cpu_max_rel"] < 1e-4  # here both runs are CPU runs: 0
    assert [s["shape"] for s in result["shapes"]] == ["dense_0.5b", "moe_1.9b_a0.3b"]
    for s in result["shapes"]:
        assert set(s) == SHAPE_KEYS
        assert s["flops_ratio"] > 1 and s["step_time_ratio"] > 0 and s["memory_ratio"] > 1
        assert s["tokens_per_sec_ntp"] > 0 and s["peak_gib_nitp"] > s["peak_gib_ntp"] > 0
        assert s["mfu_ntp"] is None  # no GPU peak to divide by on CPU
    details = json.loads(Path(str(out).replace(".json", "_details.json")).read_text())
    assert details["continuation"]["bf16_vs_fp32_max_rel"] < 0.05
