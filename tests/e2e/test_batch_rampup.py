"""Megatron-LM's --rampup-batch-size <start> <increment> <ramp-up samples> (issue #15 item 5).

--global-batch-size 8 --micro-batch-size 1 --rampup-batch-size 2 2 12 --train-samples 40: the
batch grows 2 -> 4 -> 6 -> 8 every 12 / 3 = 4 consumed samples, and is 8 once more than 12 are
consumed. The expected sequence is computed here from that definition (not with megatron-core's
calculator, which the engine uses): each step's batch and consumed samples, the iteration count
of Megatron-LM's update_train_iters, the sample-counting lr, Megatron-LM's checkpoints before
each larger batch; and a resume from a mid-ramp checkpoint repeats the straight run exactly.

On resume, a changed ramp or global batch size is a schedule change (Megatron-LM follows a new
ramp silently, and plans its iterations from sample 0 so a run would stop short of or past
--train-samples): refused without --override-opt_param-scheduler /
--use-checkpoint-opt_param-scheduler; with either the new batch sizes run from the checkpoint's
consumed samples to --train-samples; a ramp both runs have finished is no change.
"""

import pytest

from tests.e2e.engine_runner import TINY_GPT, checkpoint_at, read_log, run_engine

OVERRIDE, KEEP = "--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"

BASE = [a for a in TINY_GPT] + ["--nitp"]
BASE = BASE[:BASE.index("--lr-warmup-iters")] + BASE[BASE.index("--lr-warmup-iters") + 2:]
RUN = BASE + ["--micro-batch-size", "1", "--global-batch-size", "8", "--rampup-batch-size",
              "2", "2", "12", "--train-samples", "40", "--lr-decay-style", "linear",
              "--min-lr", "0"]
KEYS = ("global_batch_size", "consumed_samples", "lr", "lm_loss", "nitp_loss", "grad_norm")


def expected_steps(start=2, increment=2, ramp=12, gbs=8, train_samples=40, consumed=0):
    """[(batch, consumed after the step)] by Megatron-LM's definition of the ramp, from
    `consumed` samples on."""
    per_increment = ramp / ((gbs - start) // increment) if ramp is not None else 1

    def batch(consumed):
        if ramp is None or consumed > ramp:
            return gbs
        return start + int(consumed / per_increment) * increment

    steps = []
    while ramp is not None and consumed <= ramp and consumed <= train_samples:  # the ramp phase
        size = batch(consumed)
        consumed += size
        steps.append((size, consumed))
    while consumed + gbs <= train_samples:  # whole global batches; a partial one is dropped
        consumed += gbs
        steps.append((gbs, consumed))
    return steps


def _records(path):
    return {r["iteration"]: tuple(r[k] for k in KEYS) for r in read_log(path)[0]}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("ramp")
    res = run_engine(RUN + ["--save", d / "ckpt", "--log-jsonl", d / "log.jsonl"])
    return d, res.stdout, _records(d / "log.jsonl")


def test_batch_consumed_samples_and_lr_follow_the_ramp(straight):
    d, out, recs = straight
    steps = expected_steps()
    assert steps == [(2, 2), (2, 4), (4, 8), (6, 14), (8, 22), (8, 30), (8, 38)]
    assert sorted(recs) == list(range(1, len(steps) + 1))
    assert [recs[i][:2] for i in sorted(recs)] == steps
    # The scheduler counts samples: linear decay from 1e-3 to 0 over --train-samples 40.
    for i, (_, consumed) in enumerate(steps, 1):
        assert recs[i][2] == pytest.approx(1e-3 * (1 - consumed / 40))
    assert "7 iterations, global batch 8 (ramp-up from 2 by 2 over 12 samples)" in out
    # Megatron-LM saves before each larger batch (iterations 2, 3, 4), and at the end.
    saved = sorted(p.name for p in (d / "ckpt").glob("iter_*"))
    assert saved == [f"iter_{i:07d}" for i in (2, 3, 4, 7)]


def test_resume_mid_ramp_repeats_the_straight_run(straight, tmp_path):
    d, _, recs = straight
    load = checkpoint_at(d / "ckpt", 3, tmp_path / "load")  # consumed 8: next batch is 6
    res = run_engine(RUN + ["--load", load, "--log-jsonl", tmp_path / "resumed.jsonl"])
    assert "at iteration 3" in res.stdout
    assert _records(tmp_path / "resumed.jsonl") == {i: recs[i] for i in (4, 5, 6, 7)}
    assert "notice: resume changes" not in res.stdout and "more iterations" not in res.stdout
    assert "fresh optimizer" not in res.stdout  # a normal resume loads the optimizer state


def _with(run, flag, *values):
    """`run` with `flag`'s values replaced (no values: the flag removed)."""
    i = run.index(flag)
    n = 3 if flag == "--rampup-batch-size" else 1
    return run[:i] + ([flag, *values] if values else []) + run[i + 1 + n:]


def _resume(straight, tmp_path, run, *extra, iteration=3, expect_code=0):
    load = checkpoint_at(straight[0] / "ckpt", iteration, tmp_path / "load")
    log = tmp_path / "resumed.jsonl"
    res = run_engine(run + ["--load", load, "--log-jsonl", log, *extra], expect_code=expect_code)
    return res.stdout, (_records(log) if expect_code == 0 else None)


def _continues_from(recs, first, steps, total=40):
    """The resumed records are `steps` (batch, consumed) from iteration `first` on, at the
    sample-counting lr of the checkpoint's schedule (linear from 1e-3 to 0 over 40 samples)."""
    assert sorted(recs) == list(range(first, first + len(steps)))
    assert [recs[i][:2] for i in sorted(recs)] == steps
    for i, (_, consumed) in zip(sorted(recs), steps):
        assert recs[i][2] == pytest.approx(1e-3 * max(1 - consumed / total, 0)), i


def test_a_changed_ramp_on_resume_is_refused_naming_both_values(straight, tmp_path):
    out, _ = _resume(straight, tmp_path, _with(RUN, "--rampup-batch-size", "2", "2", "24"),
                     expect_code=2)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert "rampup_batch_size 2 2 12 in the checkpoint, 2 2 24 from --rampup-batch-size" in line
    assert OVERRIDE in line and KEEP in line
    assert "or pass --rampup-batch-size 2 2 12 to keep the checkpoint's" in line
    assert "training gpt model" not in out and "Traceback" not in out


def test_a_new_ramp_with_override_runs_from_the_consumed_samples(straight, tmp_path):
    out, recs = _resume(straight, tmp_path, _with(RUN, "--rampup-batch-size", "2", "2", "24"),
                        OVERRIDE)
    assert "notice: resume changes the schedule: rampup_batch_size 2 2 12 in the checkpoint, " \
           "2 2 24 from --rampup-batch-size; using the flags' values" in out
    # From 8 consumed samples (iteration 3) the 24-sample ramp gives 4, 4, 6, 6, then 8 (36);
    # a partial last batch is dropped. Planned from sample 0 it would be 9 iterations
    # (Megatron-LM's count), which from iteration 3 would consume 44 > --train-samples 40.
    steps = expected_steps(ramp=24, consumed=8)
    assert steps == [(4, 12), (4, 16), (6, 22), (6, 28), (8, 36)]
    assert "5 more iterations from the checkpoint's 8 consumed samples (iteration 3), 8 in " \
           "all; planned from sample 0 with this run's batch sizes it would be 9" in out
    _continues_from(recs, 4, steps)


def test_a_new_global_batch_keeps_the_checkpoints_lr_and_ends_at_train_samples(straight,
                                                                                tmp_path):
    # (Without a flag it is refused, as the ramp above and the batch size in
    # test_reliability_resume_safety.py.)
    run = _with(_with(RUN, "--rampup-batch-size"), "--global-batch-size", "4")
    out, recs = _resume(straight, tmp_path, run, KEEP)
    assert "global_batch_size 8 in the checkpoint, 4 from --global-batch-size; " \
           "rampup_batch_size 2 2 12 in the checkpoint, none from --rampup-batch-size; using" in out
    assert "using the checkpoint's learning-rate schedule (--use-checkpoint-opt_param-" \
           "scheduler); the batch sizes are this run's, as in Megatron-LM" in out
    # 8 iterations of 4 from 8 consumed samples reach --train-samples 40 (Megatron-LM's plan
    # from sample 0, 40 // 4 = 10 iterations, would stop at 36 from iteration 3).
    _continues_from(recs, 4, [(4, c) for c in range(12, 41, 4)])


def test_a_ramp_both_runs_have_finished_is_no_change(straight, tmp_path):
    # Iteration 4 has consumed 14 > 12 samples: the 6-sample ramp would be over too. Only the
    # iteration count from sample 0 differs (this ramp would reach 14 samples in 3 steps).
    out, recs = _resume(straight, tmp_path, _with(RUN, "--rampup-batch-size", "2", "2", "6"),
                        iteration=4)
    assert "notice: resume changes" not in out
    assert "3 more iterations from the checkpoint's 14 consumed samples (iteration 4), 7 in " \
           "all; planned from sample 0 with this run's batch sizes it would be 6" in out
    assert recs == {i: straight[2][i] for i in (5, 6, 7)}
