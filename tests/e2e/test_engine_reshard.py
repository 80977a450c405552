"""Issue #3: a checkpoint saved under one parallel layout resumes under another.

Run A trains 5 iterations at TP2 (or PP2) on 2 processes, saving at iteration 3; run B loads that
iteration-3 checkpoint at TP1/PP1 on 1 process and trains iterations 4 and 5. Iteration 4's loss
(and grad norm) checks the model weights; iteration 5's, taken after an Adam step from the loaded
moments, checks that the optimizer state resharded too. TP2 uses the plain optimizer (megatron's
per-parameter optimizer state follows the model's sharded tensors), PP2 the distributed optimizer
(saved `fully_reshardable`). Tolerance 1e-5: TP and PP change only the reduction order.
"""

import pytest

from tests.e2e.engine_runner import (TINY_GPT, checkpoint_at, losses_by_iteration, read_log,
                                     run_engine)

RUN = TINY_GPT + ["--nitp", "--train-iters", "5"]
TOLERANCE = 1e-5


def _assert_resumed_steps_equal(straight, resumed):
    """Iterations 4-5 of the resumed run equal the straight run's (losses and grad norm)."""
    a = losses_by_iteration(read_log(straight)[0])
    b = losses_by_iteration(read_log(resumed)[0])
    assert sorted(b) == [4, 5]
    for it in (4, 5):
        for name, x, y in zip(("lm_loss", "nitp_loss", "grad_norm"), a[it], b[it]):
            assert abs(x - y) <= TOLERANCE * max(1.0, abs(x)), (it, name, x, y)


@pytest.mark.parametrize("layout", [
    ["--tensor-model-parallel-size", "2"],
    ["--pipeline-model-parallel-size", "2", "--use-distributed-optimizer"],
], ids=["tp2_plain_optimizer", "pp2_distributed_optimizer"])
def test_checkpoint_saved_at_two_way_parallelism_resumes_at_one_process(layout, tmp_path):
    extra = [a for a in layout if a == "--use-distributed-optimizer"]
    run_engine(RUN + layout + ["--save", tmp_path / "a", "--save-interval", "3",
                               "--log-jsonl", tmp_path / "a.jsonl"], nproc=2)
    ckpt = checkpoint_at(tmp_path / "a", 3, tmp_path / "at3")
    res = run_engine(RUN + extra + ["--load", ckpt, "--log-jsonl", tmp_path / "b.jsonl"])
    assert "at iteration 3" in res.stdout

    _assert_resumed_steps_equal(tmp_path / "a.jsonl", tmp_path / "b.jsonl")


def test_tp2_checkpoint_resumes_at_tp1_with_default_vocabulary_padding(tmp_path):
    """Issue #17: with the default --make-vocab-size-divisible-by 128, 301 ids pad to 512 rows
    at TP2 and to 384 at TP1; the TP1 run adopts the checkpoint's 512 (it says so) and its
    iterations 4-5 equal TP2 continuing."""
    run = [a for a in RUN if a not in ("--make-vocab-size-divisible-by", "64")]
    run[run.index("--vocab-size") + 1] = "300"  # NullTokenizer: 300 ids + EOD
    run_engine(run + ["--tensor-model-parallel-size", "2", "--save", tmp_path / "a",
                      "--save-interval", "3", "--log-jsonl", tmp_path / "a.jsonl"], nproc=2)
    ckpt = checkpoint_at(tmp_path / "a", 3, tmp_path / "at3")
    res = run_engine(run + ["--load", ckpt, "--log-jsonl", tmp_path / "b.jsonl"])
    assert "using the checkpoint's padded vocabulary of 512 rows (384 at this TP size)" \
        in res.stdout
    _assert_resumed_steps_equal(tmp_path / "a.jsonl", tmp_path / "b.jsonl")


def test_a_padded_vocabulary_that_does_not_split_over_tp_names_the_flag(tmp_path):
    run = [a for a in RUN if a not in ("--make-vocab-size-divisible-by", "64")]
    run[run.index("--vocab-size") + 1] = "300"
    run_engine(run + ["--train-iters", "0", "--make-vocab-size-divisible-by", "3",
                      "--save", tmp_path / "a"])  # 301 ids -> 303 rows
    res = run_engine(run + ["--tensor-model-parallel-size", "2", "--load", tmp_path / "a"],
                     nproc=2, expect_code=None)  # torchrun reports a rank's exit 2 as 1
    assert res.returncode != 0
    assert ("padded vocabulary (303 rows) does not split over --tensor-model-parallel-size 2"
            in res.stdout)
