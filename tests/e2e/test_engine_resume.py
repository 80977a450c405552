"""Issue #3: an interrupted run resumes exactly.

6 iterations straight vs 3 iterations, an interruption, and a resume for iterations 4-6 from the
iteration-3 checkpoint: the resumed JSONL must repeat the straight run's numbers exactly (LM loss,
NITP loss, grad norm; and the eval at iteration 6). Interruptions: `--exit-interval 3` (a clean
exit that saves) and a real SIGKILL after the iteration-3 checkpoint is on disk; one process, and
two processes (data parallel with the distributed optimizer).
"""

import time

import pytest

from tests.e2e.engine_runner import (TINY_GPT, check_eval_log, check_train_log, kill_group,
                                     losses_by_iteration, read_log, run_engine, start_engine)

RUN = TINY_GPT + ["--nitp", "--train-iters", "6", "--eval-interval", "3", "--eval-iters", "1"]
DP2 = ["--use-distributed-optimizer", "--global-batch-size", "4"]


def _log(path):
    train, valid = read_log(path)
    return losses_by_iteration(train), losses_by_iteration(valid, ("lm_loss", "nitp_loss"))


@pytest.fixture(scope="module")
def straight_one_process(tmp_path_factory):
    log = tmp_path_factory.mktemp("straight") / "log.jsonl"
    run_engine(RUN + ["--log-jsonl", log])
    return _log(log)


def _assert_resumed_exactly(straight, first_log, resumed_log):
    train, valid = straight
    first_train, _ = _log(first_log)
    assert {i: first_train[i] for i in (1, 2, 3)} == {i: train[i] for i in (1, 2, 3)}
    resumed_train, resumed_valid = _log(resumed_log)
    assert resumed_train == {i: train[i] for i in (4, 5, 6)}  # exact, not approximate
    assert resumed_valid == {6: valid[6]}


def test_exit_interval_then_resume_repeats_the_straight_run(straight_one_process, tmp_path):
    ckpt = tmp_path / "ckpt"
    res = run_engine(RUN + ["--save", ckpt, "--exit-interval", "3",
                            "--log-jsonl", tmp_path / "first.jsonl"])
    assert "exiting at iteration 3 (--exit-interval)" in res.stdout
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    res = run_engine(RUN + ["--load", ckpt, "--log-jsonl", tmp_path / "resumed.jsonl"])
    assert "at iteration 3" in res.stdout
    _assert_resumed_exactly(straight_one_process, tmp_path / "first.jsonl",
                            tmp_path / "resumed.jsonl")


def test_sigkill_after_the_checkpoint_then_resume_repeats_the_straight_run(
        straight_one_process, tmp_path):
    ckpt, tracker = tmp_path / "ckpt", tmp_path / "ckpt" / "latest_checkpointed_iteration.txt"
    # Every save sleeps before its rename: after iteration 3's checkpoint is complete, the run
    # cannot finish (nor publish iteration 6's save) for 4 s, so the kill lands mid-run.
    proc = start_engine(RUN + ["--save", ckpt, "--save-interval", "3",
                               "--log-jsonl", tmp_path / "first.jsonl"],
                        env={"MEGATRON_NITP_TEST_SLOW_SAVE": "4"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if tracker.is_file() and tracker.read_text().strip() == "3":
            break
        time.sleep(0.05)
    out = kill_group(proc)
    assert proc.returncode == -9, f"the run ended before the kill ({proc.returncode}):\n{out}"
    assert tracker.read_text().strip() == "3"
    res = run_engine(RUN + ["--load", ckpt, "--log-jsonl", tmp_path / "resumed.jsonl"])
    assert "at iteration 3" in res.stdout
    _assert_resumed_exactly(straight_one_process, tmp_path / "first.jsonl",
                            tmp_path / "resumed.jsonl")


def test_two_process_distributed_optimizer_run_logs_and_resumes_exactly(tmp_path):
    straight, first, resumed = (tmp_path / f"{n}.jsonl" for n in ("straight", "first", "resumed"))
    run_engine(RUN + DP2 + ["--log-jsonl", straight], nproc=2)
    train, valid = read_log(straight)
    check_train_log(train, range(1, 7), nitp=True)
    check_eval_log(valid, [3, 6], nitp=True)

    ckpt = tmp_path / "ckpt"
    run_engine(RUN + DP2 + ["--save", ckpt, "--exit-interval", "3", "--log-jsonl", first],
               nproc=2)
    run_engine(RUN + DP2 + ["--load", ckpt, "--log-jsonl", resumed], nproc=2)
    _assert_resumed_exactly(_log(straight), first, resumed)
