"""tools/eval_lm_loss.py (App. E's validation cross-entropy): on a tiny trained checkpoint and an
indexed dataset of 7 documents (61 tokens in all: the windows of 16 cross documents and the last
one is short), the tool's nats/token equal an independent computation from the model's logits,
every token is scored exactly once, and a bad prefix is one error line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.e2e.engine_runner import REPO_ROOT, TINY_GPT, engine_env, run_engine

TOOL = str(REPO_ROOT / "tools" / "eval_lm_loss.py")
REF = str(REPO_ROOT / "tests" / "e2e" / "workers" / "reference_lm_loss.py")


def test_cross_entropy_equals_an_independent_computation(tmp_path):
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    run_engine(TINY_GPT + ["--nitp", "--train-iters", "2", "--save", tmp_path / "ck"])
    rng = np.random.default_rng(0)
    prefix = str(tmp_path / "val_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(256))
    lengths = [5, 12, 9, 3, 17, 8, 7]  # 61 tokens
    import torch

    for n in lengths:
        builder.add_document(torch.from_numpy(rng.integers(0, 255, n)), [n])
    builder.finalize(prefix + ".idx")
    env = engine_env()
    out = subprocess.run([sys.executable, TOOL, "--load", str(tmp_path / "ck"), "--data-path",
                          prefix, "--seq-length", "16", "--micro-batch-size", "3",
                          "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())["datasets"][prefix]
    assert r["tokens"] == sum(lengths) - 1 and r["windows"] == 4  # 16 + 16 + 16 + 12
    ref = subprocess.run([sys.executable, REF, str(tmp_path / "ck"), prefix, "16", str(REPO_ROOT)],
                         capture_output=True, text=True, env=env, timeout=300)
    line = [l for l in ref.stdout.splitlines() if l.startswith("REFERENCE ")]
    assert line, ref.stdout[-2000:] + ref.stderr[-2000:]
    _, value, count = line[0].split()
    assert int(count) == r["tokens"]
    assert r["cross_entropy"] == pytest.approx(float(value), rel=1e-5)
    assert r["perplexity"] == pytest.approx(np.exp(float(value)), rel=1e-5)


def test_a_missing_dataset_is_one_error_line(tmp_path):
    out = subprocess.run([sys.executable, TOOL, "--load", str(tmp_path), "--data-path",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no " in out.stderr and len(out.stderr.strip().splitlines()) == 1
