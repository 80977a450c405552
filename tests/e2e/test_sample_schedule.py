"""Megatron-LM's sample-based schedule (issue #15 item 5): --train-samples with
--lr-warmup-samples / --lr-decay-samples / --lr-warmup-fraction gives the same iterations and the
same learning rate (and so the same losses) at every iteration as the equivalent
iteration-based run; --lr-warmup-init starts the warmup there."""

import pytest

from tests.e2e.engine_runner import TINY_GPT, read_log, run_engine

BASE = [a for a in TINY_GPT] + ["--nitp", "--global-batch-size", "2"]
BASE = BASE[:BASE.index("--lr-warmup-iters")] + BASE[BASE.index("--lr-warmup-iters") + 2:]
KEYS = ("lr", "lm_loss", "nitp_loss", "grad_norm")


def _run(tmp_path, name, flags):
    run_engine(BASE + flags + ["--log-jsonl", tmp_path / f"{name}.jsonl"])
    return {r["iteration"]: tuple(r[k] for k in KEYS) for r in read_log(tmp_path / f"{name}.jsonl")[0]}


def test_sample_based_schedule_equals_the_iteration_based_one(tmp_path):
    iters = _run(tmp_path, "iters", ["--train-iters", "5", "--lr-warmup-iters", "2",
                                      "--lr-decay-iters", "4", "--lr-warmup-init", "1e-4"])
    samples = _run(tmp_path, "samples", ["--train-samples", "10", "--lr-warmup-samples", "4",
                                         "--lr-decay-samples", "8", "--lr-warmup-init", "1e-4"])
    assert sorted(iters) == [1, 2, 3, 4, 5]
    assert samples == iters  # exactly: same lr sequence, so the same steps
    lrs = [iters[i][0] for i in range(1, 6)]
    # warmup from 1e-4 to 1e-3 over 2 iterations, cosine to 0 at iteration 4, then min-lr
    assert lrs[0] == pytest.approx(1e-4 + (1e-3 - 1e-4) / 2) and lrs[1] == pytest.approx(1e-3)
    assert lrs[3] == lrs[4] == 0.0


def test_warmup_fraction_in_both_modes(tmp_path):
    by_iters = _run(tmp_path, "fi", ["--train-iters", "4", "--lr-warmup-fraction", "0.5"])
    by_samples = _run(tmp_path, "fs", ["--train-samples", "8", "--lr-warmup-fraction", "0.5"])
    explicit = _run(tmp_path, "fx", ["--train-iters", "4", "--lr-warmup-iters", "2"])
    assert by_iters == by_samples == explicit


@pytest.mark.parametrize("flags, message", [
    (["--train-samples", "8", "--train-iters", "4"], "error: --train-iters and --train-samples"),
    (["--train-samples", "8", "--lr-warmup-iters", "1"], "error: --lr-warmup-iters: "
                                                         "iteration-based"),
    (["--lr-decay-samples", "8"], "error: --lr-decay-samples: needs sample-based training"),
    # --rampup-batch-size (tests/e2e/test_batch_rampup.py runs it): Megatron-LM's asserts and
    # megatron-core's calculator's, as one line before any work.
    (["--train-iters", "4", "--rampup-batch-size", "2", "2", "8"],
     "error: --rampup-batch-size: needs sample-based training (--train-samples)"),
    (["--train-samples", "40", "--rampup-batch-size", "2", "2"],
     "error: argument --rampup-batch-size: expected 3 arguments"),
    (["--train-samples", "40", "--global-batch-size", "8", "--rampup-batch-size", "0", "2", "8"],
     "error: --rampup-batch-size 0 2 8: --rampup-batch-size <start batch size>"),
    (["--train-samples", "40", "--rampup-batch-size", "2", "2", "8"],
     "error: --rampup-batch-size 2 2 8: the start batch size must be smaller than "
     "--global-batch-size 2"),
    (["--train-samples", "40", "--global-batch-size", "8", "--rampup-batch-size", "2", "4", "8"],
     "error: --rampup-batch-size 2 4 8: the increment must divide --global-batch-size 8 - "
     "start 2 = 6"),
    (["--train-samples", "40", "--global-batch-size", "8", "--rampup-batch-size", "2", "1", "8"],
     "error: --rampup-batch-size 2 1 8: the ramp's batch size 3 is not a multiple of "
     "--micro-batch-size 2 x data-parallel size 1 = 2"),
])
def test_inconsistent_schedule_flags_are_one_line(flags, message):
    res = run_engine(BASE + flags + ["--dry-run"], expect_code=2)
    assert message in res.stdout and res.stdout.count("error:") == 1
