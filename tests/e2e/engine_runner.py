"""Running pretrain_gpt_nitp.py / pretrain_moe_nitp.py as a user would, from the e2e tests.

`run_engine` launches the entry point with `python` (1 process) or `torch.distributed.run
--standalone` (N processes) in its own process group, kills the whole group at the timeout, and
on failure raises an AssertionError carrying the command and the output's tail. `start_engine`
returns the Popen for tests that kill the run themselves. `read_log` splits a --log-jsonl file
into train and eval records.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tests.helpers import suite_flags

REPO_ROOT = Path(__file__).resolve().parents[2]
TAIL_LINES = 40

# A tiny dense model on mock data: every option the tests do not care about stays small.
# Vocabulary 255 (+ EOD) padded to a multiple of 64 x TP: 256 rows at TP1 and TP2 alike, so
# checkpoints reshard between them.
TINY_GPT = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
            "--seq-length", "32", "--micro-batch-size", "2", "--mock-data", "--vocab-size", "255",
            "--make-vocab-size-divisible-by", "64", "--lr", "1e-3", "--lr-warmup-iters", "1",
            "--nitp-target-layer", "1", "--ffn-hidden-size", "128"]
# The MoE layout: one dense layer, then three MoE layers of 4 experts (top-2) + shared.
TINY_MOE = ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "2",
            "--seq-length", "32", "--micro-batch-size", "2", "--mock-data", "--vocab-size", "255",
            "--make-vocab-size-divisible-by", "64", "--lr", "1e-3", "--nitp-target-layer", "1",
            "--ffn-hidden-size", "128", "--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
            "--moe-shared-expert-intermediate-size", "32", "--moe-layer-freq", "([0]*1+[1]*3)"]
TRAIN_KEYS = ("iteration", "lm_loss", "nitp_loss", "lr", "grad_norm", "tokens_per_sec")


def engine_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a launched run: one intra-op thread, the repo importable, and no
    launcher or test-hook variable leaked from the calling process."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",  # 2 shared cores: oversubscribed intra-op threads crawl
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    for k in ("WORLD_SIZE", "RANK", "MEGATRON_NITP_TEST_SLOW_SAVE",
              "MEGATRON_NITP_TEST_NAN_ITERS"):
        env.pop(k, None)  # a leaked variable would change validation or inject faults
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def engine_command(args: Sequence[str], nproc: int = 1, family: str = "gpt") -> List[str]:
    """The command line; the suite's explicit settings (tests.helpers.suite_flags) go first."""
    script = str(REPO_ROOT / f"pretrain_{family}_nitp.py")
    args = suite_flags(args) + [str(a) for a in args]
    if nproc == 1:
        return [sys.executable, script, *map(str, args)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", script, *map(str, args)]


def start_engine(args: Sequence[str], nproc: int = 1, family: str = "gpt", cwd=None,
                 env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    return subprocess.Popen(
        engine_command(args, nproc, family), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=engine_env(env), cwd=str(cwd or REPO_ROOT),
        start_new_session=True)  # own process group: a kill reaches the launcher and ranks


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> str:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    out, _ = proc.communicate()
    return out or ""


def run_engine(args: Sequence[str], nproc: int = 1, family: str = "gpt", cwd=None,
               timeout: float = 240, env: Optional[Dict[str, str]] = None,
               expect_code: Optional[int] = 0) -> subprocess.CompletedProcess:
    """Run to completion; assert the exit code (None: any). Output is stdout+stderr merged."""
    proc = start_engine(args, nproc, family, cwd, env)
    try:
        out, _ = proc.communicate(timeout=timeout)
        what = f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        out = kill_group(proc)
        what = f"timed out after {timeout} s"
        proc.returncode = None
    cmd = " ".join(engine_command(args, nproc, family))
    if proc.returncode is None or (expect_code is not None and proc.returncode != expect_code):
        lines = (out or "").splitlines()
        # torchrun ends with its own summary: lift the ranks' error lines above the tail.
        errors = [ln for ln in lines if "Error" in ln or "error:" in ln][:20]
        raise AssertionError(f"{what} (expected {expect_code}): {cmd}\n"
                             + "\n".join(errors + ["-----"] + lines[-TAIL_LINES:]))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def read_log(path) -> Tuple[List[dict], List[dict]]:
    """(train records, eval records) of a --log-jsonl file, in file order."""
    train, valid = [], []
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        (valid if rec.get("split") == "valid" else train).append(rec)
    return train, valid


def losses_by_iteration(records: List[dict], keys=("lm_loss", "nitp_loss", "grad_norm")
                        ) -> Dict[int, tuple]:
    """{iteration: (lm_loss, nitp_loss, grad_norm)}: the numbers a resumed step must reproduce."""
    return {r["iteration"]: tuple(r[k] for k in keys) for r in records}


def checkpoint_at(ckpt_dir, iteration: int, dest) -> Path:
    """A checkpoint directory holding only `ckpt_dir`'s iteration `iteration` (copied), so a
    run can --load an earlier save of a run that went on saving."""
    import shutil

    name = f"iter_{iteration:07d}"
    dest = Path(dest)
    shutil.copytree(Path(ckpt_dir) / name, dest / name)
    (dest / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return dest


def metrics_landed() -> bool:
    """effective_rank / pair_cosine come from megatron_nitp/nitp/metrics.py (another change)."""
    return (REPO_ROOT / "megatron_nitp" / "nitp" / "metrics.py").is_file()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def check_train_log(train: List[dict], iterations: Sequence[int], nitp: bool,
                    metrics_interval: int = 0) -> None:
    """The issue's JSONL schema: one record per logged iteration with the training numbers,
    nitp_loss null without NITP, effective_rank/pair_cosine exactly on the metrics iterations."""
    assert [r["iteration"] for r in train] == list(iterations), train
    for r in train:
        for key in TRAIN_KEYS:
            assert key in r, f"iteration {r['iteration']}: no {key!r} in {r}"
        for key in ("lm_loss", "lr", "grad_norm", "tokens_per_sec"):
            assert _number(r[key]), f"iteration {r['iteration']}: {key} = {r[key]!r}"
        assert r["tokens_per_sec"] > 0 and r["lm_loss"] > 0
        if nitp:
            assert _number(r["nitp_loss"]) and 0 <= r["nitp_loss"] <= 2, r
        else:
            assert r["nitp_loss"] is None, r
        measured = bool(metrics_interval) and r["iteration"] % metrics_interval == 0
        for key in ("effective_rank", "pair_cosine"):
            if measured:
                assert _number(r.get(key)), f"iteration {r['iteration']}: {key} missing: {r}"
            else:
                assert r.get(key) is None, f"iteration {r['iteration']}: unexpected {key}: {r}"
        if measured:
            assert r["effective_rank"] >= 1 and -1 <= r["pair_cosine"] <= 1, r


def check_eval_log(valid: List[dict], iterations: Sequence[int], nitp: bool) -> None:
    assert [r["iteration"] for r in valid] == list(iterations), valid
    for r in valid:
        assert r["split"] == "valid" and _number(r["lm_loss"]), r
        assert _number(r["nitp_loss"]) if nitp else r["nitp_loss"] is None, r
