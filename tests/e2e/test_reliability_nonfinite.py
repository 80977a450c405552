"""Numerical faults (issue #6.4): a non-finite loss or gradient skips the step (counted, logged);
N in a row stop the run with exit code 3, a clear message and a checkpoint of the last good
state, from which a resumed run continues.

Faults are injected with the engine's test hook MEGATRON_NITP_TEST_NAN_ITERS (that iteration's
LM and NITP losses and a gradient become NaN)."""

import math

from tests.e2e.reliability_runs import TINY, checkpoint_tensors, run, tracker, train_records


def test_nan_steps_are_skipped_then_stop_with_last_good_checkpoint_and_resume(tmp_path):
    ckpt, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    args = TINY + ["--save", ckpt, "--load", ckpt, "--save-interval", "3", "--log-jsonl", log,
                   "--max-bad-steps", "3"]
    # Step 2 alone is bad (skipped, training goes on); 4, 5, 6 in a row reach --max-bad-steps.
    out = run(tmp_path, "faulty", args, expect=3, MEGATRON_NITP_TEST_NAN_ITERS="2,4,5,6")
    assert "non-finite loss or gradient at iteration 2: step skipped (1 in a row)" in out
    assert "non-finite loss or gradient at iteration 6: step skipped (3 in a row)" in out
    assert "3 consecutive non-finite steps (--max-bad-steps 3); stopping" in out
    assert out.count("SKIPPED (non-finite)") == 4

    recs = train_records(log)
    assert [r["iteration"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped"] for r in recs] == [False, True, False, True, True, True]
    for r in recs:  # NaN is logged as null (valid JSON); good steps keep their numbers
        assert (r["lm_loss"] is None) == r["skipped"] and (r["grad_norm"] is None) == r["skipped"]
    assert math.isfinite(recs[2]["lm_loss"])  # the step after a skipped one trains normally

    # The stop saved iteration 6, whose weights and optimizer state are those of iteration 3:
    # the bad steps never reached the optimizer.
    assert tracker(ckpt) == "6"
    at3 = checkpoint_tensors(ckpt / "iter_0000003", tmp_path / "3.pt")
    at6 = checkpoint_tensors(ckpt / "iter_0000006", tmp_path / "6.pt")
    assert at3.keys() == at6.keys() and any(k.startswith("optimizer.") for k in at6)
    for key in at3:
        assert at3[key].equal(at6[key]), key

    out = run(tmp_path, "resumed", args)  # the fault is gone: training continues to the end
    assert f"resumed from {ckpt} at iteration 6" in out
    recs = train_records(log)
    assert [r["iteration"] for r in recs] == list(range(1, 9))
    assert all(not r["skipped"] and math.isfinite(r["lm_loss"]) for r in recs[6:])
    assert tracker(ckpt) == "8"
