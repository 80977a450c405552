"""Launching multi-process gloo workers from pytest.

`run_torchrun` starts `python -m torch.distributed.run --standalone` (a free rendezvous port per
launch, so tests can run back to back), one thread per rank, every rank's output in its own log
file. A hung run is killed as a whole process group at the timeout (hung gloo ranks otherwise
survive pytest as orphans). On failure the AssertionError carries the last lines of every rank.
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 60


def _tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-n:])


def _rank_logs(log_dir: Path) -> Dict[int, str]:
    """{local rank: stderr + stdout} from torchrun's <log_dir>/<run id>/attempt_<k>/<rank>/."""
    logs: Dict[int, str] = {}
    for rank_dir in sorted(log_dir.glob("*/attempt_*/*")):
        if not rank_dir.name.isdigit():
            continue
        parts = []
        for name in ("stderr.log", "stdout.log"):
            path = rank_dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        logs[int(rank_dir.name)] = "".join(parts)
    return logs


def _rank_stdouts(log_dir: Path) -> Dict[int, str]:
    out: Dict[int, str] = {}
    for path in sorted(log_dir.glob("*/attempt_*/*/stdout.log")):
        if path.parent.name.isdigit():
            out[int(path.parent.name)] = path.read_text(errors="replace")
    return out


def _child_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    run_env = dict(os.environ)
    run_env.update(
        OMP_NUM_THREADS="1",  # 2 cores, several ranks: oversubscribed intra-op threads crawl
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), run_env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    run_env.update(env or {})
    return run_env


def _communicate(proc: subprocess.Popen, timeout: float):
    """(output, timed_out); on timeout the whole process group dies, grandchildren included."""
    try:
        return proc.communicate(timeout=timeout)[0], False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0], True


def run_python(
    script, args: Sequence[str] = (), timeout: float = 300, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """Run `python script args` as its own process group; AssertionError with the output tail
    unless it exits 0 in time. `stdout` holds stdout and stderr together."""
    cmd = [sys.executable, str(script), *map(str, args)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_child_env(env),
        cwd=str(REPO_ROOT), start_new_session=True,
    )  # fmt: skip
    out, timed_out = _communicate(proc, timeout)
    if timed_out or proc.returncode != 0:
        what = f"timed out after {timeout}s" if timed_out else f"exit code {proc.returncode}"
        raise AssertionError(f"{' '.join(cmd)} {what}:\n{_tail(out or '')}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def run_torchrun(
    worker_path,
    nproc: int,
    args: Sequence[str] = (),
    timeout: float = 300,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run `worker_path` on `nproc` local gloo ranks; raise AssertionError unless all succeed.

    Returns a CompletedProcess whose `stdout` is every rank's stdout, rank by rank, each line
    prefixed with "[rank N] ", and whose `stderr` is the launcher's own output.
    """
    with tempfile.TemporaryDirectory(prefix="torchrun_logs_") as tmp:
        log_dir = Path(tmp)
        cmd: List[str] = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", f"--log-dir={log_dir}", "--redirects=3",
            str(worker_path), *map(str, args),
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_child_env(env),
            cwd=str(REPO_ROOT),
            start_new_session=True,  # own process group: the timeout kills launcher and ranks
        )
        launcher_out, timed_out = _communicate(proc, timeout)
        logs = _rank_logs(log_dir)
        stdouts = _rank_stdouts(log_dir)

    if timed_out or proc.returncode != 0:
        what = f"timed out after {timeout}s" if timed_out else f"exit code {proc.returncode}"
        report = [f"{Path(worker_path).name} on {nproc} ranks {what}: {' '.join(cmd)}"]
        for rank in sorted(logs):
            report.append(f"----- rank {rank} (last {TAIL_LINES} lines) -----\n{_tail(logs[rank])}")
        report.append(f"----- launcher -----\n{_tail(launcher_out or '', 20)}")
        raise AssertionError("\n".join(report))
    stdout = "".join(
        "".join(f"[rank {rank}] {line}\n" for line in stdouts[rank].splitlines())
        for rank in sorted(stdouts)
    )
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, launcher_out)


# The suite's models and runs, set explicitly: the project's defaults are Megatron-LM 0.16.1's
# (LayerNorm, GeLU MLP, learned positions, linear biases, dropout 0.1, eps 1e-5, ...), the
# suite's tiny models are the paper's family (RMSNorm, SwiGLU, RoPE, no biases, no dropout, so
# that every parity test is exact) with the optimiser, logging and data-loading settings the
# tests were written for. Later flags on a command line win, so a test can still override one.
SUITE_MODEL_FLAGS = ["--normalization", "RMSNorm", "--norm-epsilon", "1e-6", "--swiglu",
                     "--position-embedding-type", "rope", "--disable-bias-linear",
                     "--attention-dropout", "0", "--hidden-dropout", "0"]
SUITE_TRAIN_FLAGS = ["--adam-beta2", "0.95", "--weight-decay", "0.1", "--lr-decay-style",
                     "cosine", "--num-workers", "0", "--log-interval", "1", "--eval-iters", "2"]
SUITE_MOE_FLAGS = ["--moe-router-pre-softmax", "--moe-token-dispatcher-type", "alltoall"]


# What Megatron-LM requires, with the values the suite's tests were written for (a test that
# gives the flag keeps its own).
SUITE_REQUIRED = {"--num-layers": "4", "--hidden-size": "64", "--num-attention-heads": "4",
                  "--seq-length": "128", "--micro-batch-size": "2", "--lr": "3e-4"}


def suite_flags(argv) -> list:
    """The suite's explicit settings for a run given `argv` (nothing for a --config run: the
    example configs set every value themselves): SUITE_*_FLAGS, the SUITE_REQUIRED values not
    in argv, --ffn-hidden-size 4 x hidden, --train-iters 10 unless a length is given, --split
    98,2,0 with --data-path."""
    argv = [str(a) for a in argv]
    if "--config" in argv:
        return []
    flags = SUITE_MODEL_FLAGS + SUITE_TRAIN_FLAGS
    if "--num-experts" in argv:
        flags = flags + SUITE_MOE_FLAGS
    for flag, value in SUITE_REQUIRED.items():
        if flag not in argv:
            flags = flags + [flag, value]
    if "--ffn-hidden-size" not in argv:
        hidden = argv[argv.index("--hidden-size") + 1] if "--hidden-size" in argv else \
            SUITE_REQUIRED["--hidden-size"]
        flags = flags + ["--ffn-hidden-size", str(4 * int(hidden))]
    if "--train-iters" not in argv and "--train-samples" not in argv:
        flags = flags + ["--train-iters", "10"]
    if "--data-path" in argv and "--split" not in argv:
        flags = flags + ["--split", "98,2,0"]
    return flags


def suite_parse_args(argv, model_family="gpt"):
    """megatron_nitp's parse_args with the suite's explicit settings before `argv`."""
    from megatron_nitp.training.arguments import parse_args

    return parse_args(suite_flags(argv) + [str(a) for a in argv], model_family)


def write_null_corpora(d, offsets: Dict[str, int], docs: int) -> Dict[str, str]:
    """Indexed corpora of short documents (NullTokenizer ids < 255, + EOD) in directory `d`,
    one per name, each shifted by its offset so that they differ; name -> prefix."""
    import json

    from megatron_nitp.data.preprocess import preprocess_jsonl

    out = {}
    for name, offset in offsets.items():
        lines = [json.dumps({"text": " ".join(str((offset + 7 * i + j) % 255)
                                              for j in range(3 + i % 11))}) for i in range(docs)]
        (d / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        preprocess_jsonl(str(d / f"{name}.jsonl"), str(d / name), "NullTokenizer",
                         vocab_size=255, append_eod=True, progress=False)
        out[name] = str(d / f"{name}_text_document")
    return out
