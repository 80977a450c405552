"""Checkpoint safety (issue #6.3): atomic saves survive SIGKILL mid-save, SIGTERM saves and exits 0,
resumes are exact (losses equal an uninterrupted run's, the JSONL has every iteration once), and
a damaged checkpoint is one clear error line before any model is built."""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.engine_runner import engine_command
from tests.e2e.reliability_runs import TINY, Run, env, run, tracker, train_records



class Reference:
    """The uninterrupted run: 8 steps, checkpoints at 4 and 8. It runs in the background while
    the first test's interrupted run does (2 cores); `records`/`ckpt` wait for it."""

    def __init__(self, d: Path):
        self._dir = d
        self._run = Run(d, "reference", TINY + ["--save", d / "ckpt", "--save-interval", "4",
                                                "--log-jsonl", d / "log.jsonl"])
        self._records = None

    def _finish(self):
        if self._records is None:
            self._run.wait()
            self._records = train_records(self._dir / "log.jsonl")
            assert [r["iteration"] for r in self._records] == list(range(1, 9))

    @property
    def records(self):
        self._finish()
        return self._records

    @property
    def ckpt(self):
        self._finish()
        return self._dir / "ckpt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("reference"))
    yield ref
    if ref._run.proc.poll() is None:
        ref._run.kill()


def assert_same_run(records, reference_records):
    """Each iteration exactly once, in order, with the uninterrupted run's exact losses."""
    assert [r["iteration"] for r in records] == list(range(1, 9))
    for mine, ref in zip(records, reference_records):
        assert (mine["lm_loss"], mine["nitp_loss"], mine["lr"]) == \
            (ref["lm_loss"], ref["nitp_loss"], ref["lr"]), mine["iteration"]


def test_sigkill_during_save_resumes_from_previous_checkpoint_without_log_gaps(tmp_path,
                                                                              reference):
    ckpt, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    args = TINY + ["--save", ckpt, "--load", ckpt, "--save-interval", "3", "--log-jsonl", log]
    killed = Run(tmp_path, "killed", args, MEGATRON_NITP_TEST_SLOW_SAVE="60@6")
    killed.wait_for(lambda: (ckpt / "iter_0000006.tmp").is_dir(), "the save of iteration 6")
    killed.kill()
    assert tracker(ckpt) == "3"  # the pointer never moved to the unfinished save
    assert not (ckpt / "iter_0000006").exists()
    assert [r["iteration"] for r in train_records(log)] == list(range(1, 7))
    (ckpt / "iter_0000005.tmp").mkdir()  # an older attempt's leftover, another save interval

    out = run(tmp_path, "resumed", args + ["--keep-last-n-checkpoints", "2"])
    assert f"resumed from {ckpt} at iteration 3" in out
    assert "dropped 3 records after iteration 3" in out
    assert_same_run(train_records(log), reference.records)
    assert tracker(ckpt) == "8"
    # No partial save survives, and --keep-last-n-checkpoints 2 kept 6 and 8.
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("iter_")) == \
        ["iter_0000006", "iter_0000008"]


def test_sigterm_saves_exits_zero_and_the_resume_is_exact(tmp_path, reference):
    ckpt, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    args = TINY + ["--save", ckpt, "--load", ckpt, "--exit-signal-handler", "--log-jsonl", log]
    first = Run(tmp_path, "preempted", args)
    # Deliver SIGTERM as soon as the engine's handler is installed (during setup): the run must
    # finish the step it is in, save, and exit 0 -- deterministic, however fast the steps are.
    first.wait_for(lambda: first.catches(signal.SIGTERM), "the SIGTERM handler")
    first.signal(signal.SIGTERM)
    out = first.wait(expect=0)
    assert "notice: --load" in out and "starting fresh" in out  # the requeue pattern
    assert "exiting at iteration 1 (SIGTERM)" in out
    assert tracker(ckpt) == "1"

    out = run(tmp_path, "requeued", args)
    assert f"resumed from {ckpt} at iteration 1" in out
    assert_same_run(train_records(log), reference.records)
    assert tracker(ckpt) == "8"


def _damaged_copy(reference, tmp_path, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference.ckpt, ckpt)
    damage(ckpt, ckpt / "iter_0000008")
    return ckpt


def _truncate(path: Path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    "garbage tracker": (lambda c, it: (c / "latest_checkpointed_iteration.txt").write_text("x\x00"),
                        "corrupted tracker file"),
    "tracker names a missing iteration": (
        lambda c, it: (c / "latest_checkpointed_iteration.txt").write_text("12"),
        "iteration 12 is incomplete"),
    "run_config.json missing": (lambda c, it: (it / "run_config.json").unlink(),
                                "run_config.json: missing"),
    "run_config.json garbage": (lambda c, it: (it / "run_config.json").write_text("{"),
                                "run_config.json: corrupted"),
    "shard truncated": (lambda c, it: _truncate(it / "__0_1.distcp"),
                        "__0_1.distcp is truncated"),
    "shard deleted": (lambda c, it: (it / "__0_0.distcp").unlink(), "__0_0.distcp is missing"),
    "torch metadata deleted": (lambda c, it: (it / ".metadata").unlink(), ".metadata is missing"),
    "torch metadata garbage": (lambda c, it: (it / ".metadata").write_bytes(b"\x80garbage"),
                               ".metadata: corrupted"),
    "common.pt deleted": (lambda c, it: (it / "common.pt").unlink(), "common.pt is missing"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_one_clear_error_before_the_model_is_built(case, tmp_path,
                                                                         reference):
    from tests.helpers import suite_parse_args as parse_args
    from megatron_nitp.training.checkpoint_io import CheckpointError
    from megatron_nitp.training.resolve import _check_resume_target

    damage, message = DAMAGE[case]
    ckpt = _damaged_copy(reference, tmp_path, damage)
    args = parse_args(TINY + ["--load", str(ckpt)])
    with pytest.raises(CheckpointError) as e:
        _check_resume_target(args, vocab_size_known=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_of_a_different_architecture_names_the_field(tmp_path, reference):
    from tests.helpers import suite_parse_args as parse_args
    from megatron_nitp.training.resolve import _check_resume_target
    from megatron_nitp.training.validation import ConfigError

    args = parse_args(TINY + ["--load", str(reference.ckpt), "--hidden-size", "64"])
    with pytest.raises(ConfigError, match="hidden_size = 32 in the checkpoint, 64 here"):
        _check_resume_target(args, vocab_size_known=False)


def test_checkpoint_with_other_weight_shapes_or_model_settings(tmp_path, reference):
    """qk-layernorm (weights the checkpoint lacks) is an architecture change; a RoPE base is a
    setting a continuation may change (long context), said in one notice."""
    from tests.helpers import suite_parse_args as parse_args
    from megatron_nitp.training.resolve import _check_resume_target
    from megatron_nitp.training.validation import ConfigError

    args = parse_args(TINY + ["--load", str(reference.ckpt), "--qk-layernorm"])
    with pytest.raises(ConfigError, match="qk_layernorm = False in the checkpoint, True here"):
        _check_resume_target(args, vocab_size_known=False)
    notices = []
    args = parse_args(TINY + ["--load", str(reference.ckpt), "--rotary-base", "500000"])
    _check_resume_target(args, vocab_size_known=False, log=notices.append)
    assert [n for n in notices if "model settings" in n] == [
        "notice: resume changes model settings the checkpoint was trained with: "
        "--rotary-base 10000 -> 500000"]


def test_truncated_shard_through_the_cli_exits_2_with_one_line_and_writes_nothing(tmp_path,
                                                                                  reference):
    ckpt = _damaged_copy(reference, tmp_path, lambda c, it: _truncate(it / "__0_1.distcp"))
    save = tmp_path / "new_ckpt"
    proc = subprocess.run(
        engine_command(TINY + ["--load", ckpt, "--save", save, "--log-jsonl",
                               tmp_path / "l.jsonl"]),
        capture_output=True, text=True, env=env(), timeout=180, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: --load: checkpoint "), proc.stderr
    assert "__0_1.distcp is truncated" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not save.exists() and not (tmp_path / "l.jsonl").exists()


def test_exit_duration_counts_setup_time_and_saves_before_exiting_zero(tmp_path):
    """A 1.2 s budget is spent by the startup itself (imports, model build): the run stops after
    its first step with a checkpoint and exit 0, like a job that is about to hit its time
    limit. (The resume after such a stop is the SIGTERM test's: the same exit path.)"""
    ckpt = tmp_path / "ckpt"
    out = run(tmp_path, "timed", TINY + ["--save", ckpt, "--exit-duration-in-mins", "0.02"])
    assert "exiting at iteration 1 (--exit-duration-in-mins)" in out
    assert tracker(ckpt) == "1"
