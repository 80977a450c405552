"""MTP + NITP through the user's entry points: an uneven PP2 run logs both losses, saves the MTP
layers, resumes from them, and the HF export drops them (or writes them beside, on request).

Equality with the single process is the equivalence suite's job (tests/distributed); here the
run is the user's: pretrain_gpt_nitp.py under torchrun, then tools/convert_checkpoint.py.
"""

import json
import subprocess
import sys

import pytest
from safetensors import safe_open

from tests.e2e.engine_runner import (REPO_ROOT, checkpoint_at, engine_env, read_log,
                                     run_engine)

# Every model flag explicit (project defaults move to Megatron-LM's).
MODEL = ["--num-layers", "3", "--hidden-size", "32", "--num-attention-heads", "2",
         "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
         "--mock-data", "--vocab-size", "255", "--make-vocab-size-divisible-by", "64",
         "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
         "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
         "--lr", "1e-3", "--nitp", "--nitp-target-layer", "1",
         "--mtp-num-layers", "1", "--mtp-loss-scaling-factor", "0.1",
         "--pipeline-model-parallel-size", "2", "--decoder-first-pipeline-num-layers", "1"]


def _convert(*args):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"),
                           "megatron-to-hf", "--no-progress", *map(str, args)],
                          capture_output=True, text=True, env=engine_env(), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtp")
    ckpt, log = root / "ckpt", root / "log.jsonl"
    first = run_engine([*MODEL, "--train-iters", "3", "--save", ckpt, "--save-interval", "2",
                        "--log-interval", "1", "--log-jsonl", log], nproc=2)
    # Resume from iteration 2's save: iteration 3 again, from the loaded MTP layers.
    resumed = run_engine([*MODEL, "--train-iters", "3", "--load",
                          checkpoint_at(ckpt, 2, root / "at2"), "--log-interval", "1",
                          "--log-jsonl", root / "resumed.jsonl"], nproc=2)
    return dict(root=root, ckpt=ckpt, log=log, first=first, resumed=resumed)


def test_both_losses_logged(run):
    train, _ = read_log(run["log"])
    assert [r["iteration"] for r in train] == [1, 2, 3]
    for r in train:
        assert r["nitp_loss"] > 0 and 3.0 < r["mtp_1_loss"] < 8.0  # ~ ln 256 at init
    assert "mtp_1 loss" in run["first"].stdout and "nitp loss" in run["first"].stdout


def test_resume_reads_the_mtp_layers(run):
    train, _ = read_log(run["root"] / "resumed.jsonl")
    assert [r["iteration"] for r in train] == [3]
    straight = read_log(run["log"])[0][-1]
    # The same step from the same saved state: MTP layers (and all else) were restored.
    for key in ("lm_loss", "nitp_loss", "mtp_1_loss"):
        assert train[0][key] == pytest.approx(straight[key], rel=1e-5), key
    index = json.loads((run["ckpt"] / "iter_0000002" / "metadata.json").read_text())
    assert index  # a megatron dist checkpoint; its tensors include the MTP layer's:
    from megatron.core import dist_checkpointing

    keys = dist_checkpointing.load_tensors_metadata(str(run["ckpt"] / "iter_0000002")).keys()
    assert any(".mtp.layers.0.eh_proj.weight" in k or k.endswith("mtp.layers.0.eh_proj.weight")
               for k in keys), sorted(keys)[:20]


def test_hf_export_drops_mtp_layers_unless_asked(run):
    out = run["root"] / "hf"
    stdout = _convert("--load", run["ckpt"], "--save", out)
    assert not any(k.startswith("mtp") or "eh_proj" in k for k in _keys(out / "model.safetensors"))
    assert "MTP" in stdout
    kept = run["root"] / "hf_mtp"
    _convert("--load", run["ckpt"], "--save", kept, "--keep-mtp-layers")
    mtp = _keys(kept / "mtp_layers.safetensors")
    assert "mtp.layers.0.eh_proj.weight" in mtp and all(k.startswith("mtp.") for k in mtp)
    assert _keys(kept / "model.safetensors") == _keys(out / "model.safetensors")
