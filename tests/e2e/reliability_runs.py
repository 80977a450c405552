"""Launching the training CLI for the reliability tests (issue #6): tiny runs, output to a file.

Every run is `python pretrain_gpt_nitp.py` in its own session (so a kill reaches every process it
started), stdout+stderr to `<name>.log` in the test's directory (no pipe to fill while a test is
busy polling the checkpoint directory). Command and environment: `engine_runner`'s.
"""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.engine_runner import engine_command, engine_env, read_log

# A 2-layer NITP model on mock data; 8 steps of one microbatch. lr high enough that every step
# moves the loss, so a replayed or skipped step shows in the numbers.
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "16", "--micro-batch-size", "2", "--mock-data", "--vocab-size", "128",
        "--nitp", "--nitp-target-layer", "1", "--lr", "1e-3", "--train-iters", "8",
        "--log-interval", "1"]


def env(**extra):
    return engine_env(extra)


def _default_sigint():
    # A shell that starts pytest in the background leaves SIGINT ignored, and an ignored signal
    # is inherited across exec: the Ctrl-C tests need the disposition a terminal gives.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    def __init__(self, workdir: Path, name: str, args, family="gpt", **env_extra):
        self.log_path = Path(workdir) / f"{name}.log"
        self.cmd = engine_command(args, family=family)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env(**env_extra), cwd=str(workdir),
                                     start_new_session=True, preexec_fn=_default_sigint)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout=240, expect=0) -> str:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"timed out after {timeout} s: {' '.join(self.cmd)}\n"
                                 f"{self._tail()}")
        finally:
            self._log.close()
        if expect is not None and code != expect:
            raise AssertionError(f"exit code {code}, expected {expect}: {' '.join(self.cmd)}\n"
                                 f"{self._tail()}")
        return self.output

    def wait_for(self, predicate, what, timeout=180, poll=0.02):
        """Poll until predicate() holds; fail if the run exits first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended (code {self.proc.returncode}) before {what}\n"
                                     f"{self._tail()}")
            time.sleep(poll)
        self.kill()
        raise AssertionError(f"timed out waiting for {what}\n{self._tail()}")

    def signal(self, sig):
        os.killpg(self.proc.pid, sig)

    def kill(self):
        try:
            self.signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()

    def catches(self, sig) -> bool:
        """True once the process has a handler installed for `sig` (/proc SigCgt bitmask)."""
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
        except FileNotFoundError:
            pass
        return False

    def _tail(self, n=40):
        return "\n".join(self.output.splitlines()[-n:])


def run(workdir, name, args, expect=0, timeout=240, **env_extra) -> str:
    return Run(workdir, name, args, **env_extra).wait(timeout=timeout, expect=expect)


def train_records(path):
    return read_log(path)[0]


def tracker(ckpt: Path):
    p = Path(ckpt) / "latest_checkpointed_iteration.txt"
    return p.read_text().strip() if p.exists() else None


def checkpoint_tensors(iter_dir: Path, out: Path) -> dict:
    """Every tensor of a torch_dist checkpoint, flattened to {dotted key: tensor}, read without
    a process group (torch's dcp_to_torch_save)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(iter_dir), str(out))
    flat = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, torch.Tensor):
                flat[prefix + k] = v

    walk(torch.load(out, weights_only=False))
    return flat


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` (root only; the test is skipped elsewhere), unmounted after."""
    import pytest

    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
