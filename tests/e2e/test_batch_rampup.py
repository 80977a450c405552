"""Megatron-LM's --rampup-batch-size <start> <increment> <ramp-up samples> (issue #15 item 5).

--global-batch-size 8 --micro-batch-size 1 --rampup-batch-size 2 2 12 --train-samples 40: the
batch grows 2 -> 4 -> 6 -> 8 every 12 / 3 = 4 consumed samples, and is 8 once more than 12 are
consumed. The expected sequence is computed here from that definition (not with megatron-core's
calculator, which the engine uses): each step's batch and consumed samples, the iteration count
of Megatron-LM's update_train_iters, the sample-counting lr, Megatron-LM's checkpoints before
each larger batch; and a resume from a mid-ramp checkpoint repeats the straight run exactly.
"""

import pytest

from tests.e2e.engine_runner import TINY_GPT, checkpoint_at, read_log, run_engine

BASE = [a for a in TINY_GPT] + ["--nitp"]
BASE = BASE[:BASE.index("--lr-warmup-iters")] + BASE[BASE.index("--lr-warmup-iters") + 2:]
RUN = BASE + ["--micro-batch-size", "1", "--global-batch-size", "8", "--rampup-batch-size",
              "2", "2", "12", "--train-samples", "40", "--lr-decay-style", "linear",
              "--min-lr", "0"]
KEYS = ("global_batch_size", "consumed_samples", "lr", "lm_loss", "nitp_loss", "grad_norm")


def expected_steps(start=2, increment=2, ramp=12, gbs=8, train_samples=40):
    """[(batch, consumed after the step)] by Megatron-LM's definition of the ramp."""
    per_increment = ramp / ((gbs - start) // increment)

    def batch(consumed):
        return gbs if consumed > ramp else start + int(consumed / per_increment) * increment

    steps, consumed = [], 0
    while consumed <= ramp and consumed <= train_samples:  # the ramp phase
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
