"""Resumes and saves that must not go silently wrong or lose a checkpoint (issue #12.3-#12.6,
#12.8): a changed schedule (Megatron-LM's --override-opt_param-scheduler /
--use-checkpoint-opt_param-scheduler), a changed NITP setting, a switched optimizer, two runs
on one --save, a full disk during a save, and Ctrl-C with and without --exit-signal-handler."""

import math
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.reliability_runs import TINY, Run, run, tmpfs, tracker, train_records

LOCK = ".megatron_nitp.lock"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 4-iteration run's checkpoint (cosine decay over 4 iterations, lr 1e-3 -> 0)."""
    d = tmp_path_factory.mktemp("base")
    run(d, "base", TINY + ["--train-iters", "4", "--save", d / "ckpt"])
    assert tracker(d / "ckpt") == "4"
    return d / "ckpt"


def _copy(base, tmp_path):
    shutil.copytree(base, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _error_lines(out):
    return [line for line in out.splitlines() if line.startswith("error:")]


def _resume(tmp_path, base, name, extra, expect=0):
    ckpt = _copy(base, tmp_path)
    log = tmp_path / "log.jsonl"
    out = run(tmp_path, name, TINY + ["--load", ckpt, "--save", ckpt, "--log-jsonl", log]
              + extra, expect=expect)
    return out, ckpt, log


def _cosine_lr(step, decay_steps, max_lr=1e-3):
    return max_lr * 0.5 * (math.cos(math.pi * min(step, decay_steps) / decay_steps) + 1)


def test_a_changed_schedule_without_a_flag_is_refused_naming_both_flags(tmp_path, base):
    out, ckpt, _ = _resume(tmp_path, base, "refused", ["--train-iters", "8"], expect=2)
    (line,) = _error_lines(out)
    assert "lr_decay_steps 4 in the checkpoint, 8 from --lr-decay-iters" in line
    assert "--override-opt_param-scheduler" in line
    assert "--use-checkpoint-opt_param-scheduler" in line
    assert "Traceback" not in out and "training gpt model" not in out
    assert tracker(ckpt) == "4" and not (ckpt / LOCK).exists()


def test_a_changed_global_batch_size_is_a_schedule_change_as_in_megatron_lm(tmp_path, base):
    # Megatron-LM counts schedule steps in samples: a new batch size trips its schedule check.
    out, _, _ = _resume(tmp_path, base, "gbs", ["--global-batch-size", "4"], expect=2)
    (line,) = _error_lines(out)
    assert "global_batch_size 2 in the checkpoint, 4 from --global-batch-size" in line


def test_override_takes_the_flags_schedule_with_a_notice(tmp_path, base):
    out, ckpt, log = _resume(tmp_path, base, "override",
                             ["--train-iters", "8", "--override-opt_param-scheduler"])
    assert "notice: resume changes the schedule: lr_decay_steps 4 in the checkpoint, 8" in out
    assert "using the flags' values (--override-opt_param-scheduler)" in out
    lrs = {r["iteration"]: r["lr"] for r in train_records(log)}
    assert sorted(lrs) == [5, 6, 7, 8]
    for it, lr in lrs.items():  # the 8-iteration cosine, continued from step 4
        assert lr == pytest.approx(_cosine_lr(it, 8), rel=1e-6, abs=1e-12), it
    assert lrs[5] > 0 and tracker(ckpt) == "8"


def test_use_checkpoint_keeps_the_checkpoints_schedule_with_a_notice(tmp_path, base):
    out, _, log = _resume(tmp_path, base, "keep",
                          ["--train-iters", "6", "--use-checkpoint-opt-param-scheduler"])
    assert "using the checkpoint's values (--use-checkpoint-opt_param-scheduler)" in out
    # The checkpoint's 4-iteration decay has ended: min lr (0) for the extra steps, as announced.
    assert [r["lr"] for r in train_records(log)] == [0.0, 0.0]


@pytest.mark.parametrize("change,expected", [
    (["--no-nitp"], "notice: resume changes NITP: enabled True -> False (the checkpoint's NITP "
                    "head is not loaded"),
    (["--nitp-target-layer", "0", "--nitp-shift", "0"],
     "notice: resume changes NITP: shift 1 -> 0; target_layer 1 -> 0"),
])
def test_a_resume_that_changes_nitp_says_what_changed(tmp_path, base, change, expected):
    # Two more steps (at the checkpoint's ended schedule) so the changed model really trains.
    out, _, log = _resume(tmp_path, base, "nitp", ["--train-iters", "6",
                                                   "--use-checkpoint-opt_param-scheduler"] + change)
    assert expected in out
    assert "resumed from" in out and "at iteration 4" in out
    records = train_records(log)
    assert [r["iteration"] for r in records] == [5, 6]
    assert all(math.isfinite(r["lm_loss"]) for r in records)


def test_an_ntp_checkpoint_resumed_with_nitp_continues_its_schedule(tmp_path):
    # A fresh NITP head means a fresh optimizer, but the lr schedule and iteration go on.
    ckpt, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    run(tmp_path, "ntp", TINY + ["--no-nitp", "--train-iters", "8", "--exit-interval", "4",
                                 "--save", ckpt])
    out = run(tmp_path, "nitp", TINY + ["--train-iters", "8", "--load", ckpt, "--save", ckpt,
                                        "--log-jsonl", log])
    assert "starting a fresh head and a fresh optimizer state" in out
    lrs = {r["iteration"]: r["lr"] for r in train_records(log)}
    assert sorted(lrs) == [5, 6, 7, 8]
    for it, lr in lrs.items():
        assert lr == pytest.approx(_cosine_lr(it, 8), rel=1e-6, abs=1e-12), it


def test_switching_to_the_distributed_optimizer_is_refused_naming_the_flag(tmp_path, base):
    out, _, _ = _resume(tmp_path, base, "distopt", ["--use-distributed-optimizer"], expect=2)
    (line,) = _error_lines(out)
    assert line.startswith("error: --use-distributed-optimizer: the checkpoint in ")
    assert "saved without it" in line and "drop --use-distributed-optimizer" in line
    assert "Traceback" not in out


def test_a_second_run_on_the_same_save_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = Run(tmp_path, "first", TINY + ["--save", ckpt, "--save-interval", "2"],
                MEGATRON_NITP_TEST_SLOW_SAVE="120@2")
    first.wait_for(lambda: (ckpt / "iter_0000002.tmp").is_dir(), "the first run's save")
    assert str(first.proc.pid) in (ckpt / LOCK).read_text()

    out = run(tmp_path, "second", TINY + ["--save", ckpt], expect=2)
    (line,) = _error_lines(out)
    assert f"in use by another run (pid {first.proc.pid} on this host" in line, line
    assert "Traceback" not in out

    first.kill()  # SIGKILL: the lock stays behind, its pid is gone
    assert (ckpt / LOCK).exists()
    out = run(tmp_path, "third", TINY + ["--train-iters", "2", "--save", ckpt])
    assert f"taking over the lock of pid {first.proc.pid}" in out
    assert tracker(ckpt) == "2" and not (ckpt / LOCK).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1.2 MB tmpfs: one checkpoint of TINY (~0.8 MB) fits, a second does not."""
    with tmpfs(tmp_path / "disk", "size=1200k") as disk:
        yield disk


def test_disk_full_during_a_save_is_one_line_and_the_previous_checkpoint_survives(tmp_path,
                                                                                   small_disk):
    from megatron_nitp.training.checkpointing import verify_checkpoint_files

    ckpt = small_disk / "ckpt"
    out = run(tmp_path, "full", TINY + ["--train-iters", "4", "--save", ckpt,
                                        "--save-interval", "2"], expect=2)
    (line,) = _error_lines(out)
    assert line == (f"error: no space left on device while saving iteration 4 to {ckpt} (the "
                    "partial save was removed; the latest checkpoint is still iteration 2)"), out
    assert "Traceback" not in out
    assert tracker(ckpt) == "2"
    assert sorted(p.name for p in ckpt.iterdir()) == ["iter_0000002",
                                                     "latest_checkpointed_iteration.txt"]
    verify_checkpoint_files(str(ckpt / "iter_0000002"))


def test_a_file_size_limit_during_a_save_is_the_same_one_line(tmp_path):
    """`ulimit -f` (RLIMIT_FSIZE): every shard file is larger than the limit, the log is not
    (it goes to a pipe). The write fails with EFBIG instead of SIGXFSZ killing the run."""
    import resource

    from tests.e2e.engine_runner import engine_command
    from tests.e2e.reliability_runs import env

    ckpt = tmp_path / "ckpt"
    limit = 100_000  # bytes; a TINY shard is ~370 kB

    proc = subprocess.run(
        engine_command(TINY + ["--train-iters", "2", "--save", ckpt, "--save-interval", "1"]),
        capture_output=True, text=True, env=env(), timeout=240, cwd=tmp_path,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert _error_lines(proc.stderr) == [
        f"error: no space left on device while saving iteration 1 to {ckpt} (the partial save "
        "was removed; there is no earlier checkpoint)"], out
    assert "Traceback" not in out
    assert not ckpt.exists()  # the save directory this run created held nothing: removed


def test_ctrl_c_with_the_exit_signal_handler_saves_and_exits_zero(tmp_path):
    ckpt = tmp_path / "ckpt"
    r = Run(tmp_path, "handled", TINY + ["--save", ckpt, "--exit-signal-handler"])
    r.wait_for(lambda: r.catches(signal.SIGTERM), "the engine's signal handler")
    r.signal(signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    out = r.wait(expect=0)
    assert "exiting at iteration 1 (SIGINT)" in out and tracker(ckpt) == "1"


def test_exit_signal_selects_the_signal_the_handler_saves_on(tmp_path):
    ckpt = tmp_path / "ckpt"
    r = Run(tmp_path, "usr1", TINY + ["--save", ckpt, "--exit-signal-handler",
                                      "--exit-signal", "SIGUSR1"])
    r.wait_for(lambda: r.catches(signal.SIGUSR1), "the SIGUSR1 handler")
    r.signal(signal.SIGUSR1)
    out = r.wait(expect=0)
    assert "exiting at iteration 1 (SIGUSR1)" in out and tracker(ckpt) == "1"


def test_ctrl_c_without_the_handler_is_one_line_and_exit_130(tmp_path):
    ckpt = tmp_path / "ckpt"
    r = Run(tmp_path, "interrupted", TINY + ["--train-iters", "100000", "--save", ckpt,
                                             "--save-interval", "100000"])
    r.wait_for(lambda: "iter      2/" in r.output, "training steps")
    r.signal(signal.SIGINT)
    out = r.wait(expect=130)
    assert _error_lines(out) == ["error: interrupted (SIGINT): exiting without saving; "
                                 "--exit-signal-handler makes Ctrl-C save a checkpoint and "
                                 "exit 0"], out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert not ckpt.exists()  # nothing saved: the lock and the directory it made are gone


def test_a_refused_lock_stops_every_rank_when_no_launcher_would(tmp_path):
    # Ranks started as srun starts them (no torchrun to kill the others when rank 0 exits):
    # rank 1 must learn rank 0's verdict, not wait for it until the distributed timeout.
    import json
    import os
    import socket

    from tests.e2e.engine_runner import engine_command
    from tests.e2e.reliability_runs import env

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        engine_command(TINY + ["--save", ckpt]), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port)))
        for r in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank kept waiting after rank 0 refused the lock")
    assert [p.returncode for p in procs] == [2, 2], outs
    assert _error_lines(outs[0]) == [_error_lines(outs[0])[0]]
    assert "in use by another run" in outs[0] and _error_lines(outs[1]) == []
