"""The ablation grid runner end to end at CI size: runs side by side, results, resume, failures.

What each switch does to the model is tested in tests/unit/test_ablation_switches.py; here only
the driver: three 4-iteration runs of a 4-layer model on the demo data.
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRID = os.path.join(REPO, "examples", "ablations", "run_grid.py")
SMALL = "--num-layers 4 --hidden-size 32 --seq-length 32 --micro-batch-size 2"
RUNS = ("nitp_default", "ntp_baseline", "shift_0")


def _grid(out, *extra, timeout=900):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, GRID, "--out", str(out), "--iters", "4",
                           "--eval-batches", "1", "--extra", SMALL, "--jobs", "2",
                           "--progress-interval", "1", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    proc = _grid(out, "--only", ",".join(RUNS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_every_run_has_a_finite_result_and_a_table_row(grid_dir):
    results = json.loads((grid_dir / "results.json").read_text())["runs"]
    assert set(results) == set(RUNS)
    for name, r in results.items():
        for key in ("valid_lm_loss", "train_lm_loss", "effective_rank", "pair_cosine"):
            assert math.isfinite(r[key]), (name, key)
        assert r["iters"] == 4
    assert results["ntp_baseline"]["valid_nitp_loss"] is None
    assert not results["ntp_baseline"]["nitp_config"]["enabled"]
    assert results["shift_0"]["nitp_config"]["shift"] == 0
    assert math.isfinite(results["shift_0"]["valid_nitp_loss"])
    # Every run is measured on the same held-out tokens.
    assert len({r["eval_tokens"] for r in results.values()}) == 1
    table = (grid_dir / "results.md").read_text()
    for name in RUNS:
        assert f"`{name}`" in table


def test_runs_train_two_at_a_time_with_progress(grid_dir):
    stdout = (grid_dir / "stdout.txt").read_text()
    first_done = stdout.index("done in")
    assert stdout.count("running:") == 3
    # The first two started before either finished; one thread each.
    assert stdout.index("[ntp_baseline] running:") < first_done
    assert stdout.index("[nitp_default] running:") < first_done
    assert "iter " in stdout
    assert "OMP_NUM_THREADS" not in stdout  # set in the environment, not on the command line


def test_a_rerun_skips_finished_runs(grid_dir):
    before = (grid_dir / "nitp_default" / "result.json").read_text()
    proc = _grid(grid_dir, "--only", ",".join(RUNS), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished earlier: skipped") == 3
    assert "running:" not in proc.stdout
    assert (grid_dir / "nitp_default" / "result.json").read_text() == before


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path):
    # target layer 14 does not exist in a 4-layer model: that run fails, the baseline finishes.
    proc = _grid(tmp_path, "--only", "target_layer_14,ntp_baseline")
    assert proc.returncode == 1
    assert "failed: target_layer_14" in proc.stderr
    assert (tmp_path / "ntp_baseline" / "result.json").is_file()
    assert not (tmp_path / "target_layer_14" / "result.json").exists()
    assert "--nitp-target-layer" in (tmp_path / "target_layer_14" / "train.log").read_text()
