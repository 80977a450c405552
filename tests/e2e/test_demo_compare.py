"""The demo comparison end to end at CI size: two tiny runs, both measured, outputs written.

The effect (NITP's higher effective rank / lower pair cosine) is checked by the full run
(docs/demo_results.md), not here: 20 iterations of a 2-layer model only prove the plumbing.
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "demo_compare",
                                                        "run.py"),
                           "--tiny", "--iters", "20", "--out", str(out), "--jobs", "2",
                           "--progress-interval", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_outputs_exist_and_metrics_are_finite(compare_dir):
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (compare_dir / name).stat().st_size > 0, name
    summary = json.loads((compare_dir / "compare.json").read_text())
    assert set(summary) == {"ntp", "nitp"}
    for run in ("ntp", "nitp"):
        for key in ("effective_rank", "pair_cosine", "valid_lm_loss"):
            assert math.isfinite(summary[run][key]), (run, key)
        assert summary[run]["iterations"] == 20
        assert summary[run]["effective_rank"] >= 1.0
        assert -1.0 <= summary[run]["pair_cosine"] <= 1.0
    assert math.isfinite(summary["nitp"]["nitp_loss"])
    assert "nitp_loss" not in summary["ntp"]
    # Both models are measured on the same held-out tokens.
    assert summary["ntp"]["eval_tokens"] == summary["nitp"]["eval_tokens"] > 0
    md = (compare_dir / "compare.md").read_text()
    assert "effective rank" in md and "pair cosine" in md


def test_runs_train_side_by_side_and_show_progress(compare_dir):
    stdout = (compare_dir / "stdout.txt").read_text()
    for run in ("ntp", "nitp"):
        done = json.loads((compare_dir / run / "done.json").read_text())
        assert done["concurrent_runs"] == 2
        assert f"[{run}] iter " in stdout, stdout[-2000:]
    # Both started before either finished.
    starts = [stdout.index(f"[{run}] running:") for run in ("ntp", "nitp")]
    assert max(starts) < stdout.index("trained in")


def test_same_seed_and_data_order_for_both_runs(compare_dir):
    """Identical data order: the first step's LM loss at initialisation is the same."""
    first = {}
    for run in ("ntp", "nitp"):
        with open(compare_dir / run / "train.jsonl") as f:
            first[run] = json.loads(f.readline())
    assert first["ntp"]["lm_loss"] == pytest.approx(first["nitp"]["lm_loss"], rel=1e-6)
    assert first["ntp"]["consumed_samples"] == first["nitp"]["consumed_samples"]


def test_a_finished_comparison_is_not_retrained(compare_dir):
    before = (compare_dir / "ntp" / "train.jsonl").read_text()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "demo_compare",
                                                        "run.py"),
                           "--tiny", "--iters", "20", "--out", str(compare_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already trained" in proc.stdout
    assert (compare_dir / "ntp" / "train.jsonl").read_text() == before


def test_eval_representations_probes_a_tiny_checkpoint(compare_dir, tmp_path):
    out = tmp_path / "repr.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools",
                                                        "eval_representations.py"),
                           "--load", str(compare_dir / "nitp" / "ckpt"),
                           "--geometry-batches", "2", "--micro-batch-size", "2",
                           "--per-topic", "4", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["nitp"] is True and report["iteration"] == 20
    assert math.isfinite(report["geometry"]["effective_rank"])
    cls = report["probe"]["topic_classification"]
    ret = report["probe"]["half_document_retrieval"]
    assert len(cls["topics"]) >= 2
    for v in (cls["nearest_centroid_accuracy"], cls["logistic_regression_accuracy"],
              ret["recall_at_1"], ret["mrr"]):
        assert 0.0 <= v <= 1.0


def test_target_alignment_diagnostic(compare_dir):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "demo_compare",
                                                        "target_alignment.py"),
                           "--out", str(compare_dir), "--batches", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((compare_dir / "target_alignment.json").read_text())
    assert report["target_layer"] == 1
    for run in ("ntp", "nitp"):
        ranks = report[run]["effective_rank"]
        assert list(ranks) == ["layer 1", "layer 2", "h (final norm)"]  # the tiny model: 2 layers
        values = list(ranks.values()) + list(report[run]["pair_cosine"].values()) + list(
            report[run]["alignment"].values())
        assert all(math.isfinite(v) for v in values)
    assert "layer 1 (target z)" in proc.stdout
