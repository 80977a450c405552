"""App. D's metrics as the training CLI logs them are those of the step's whole mini-batch: a
2-process run logs the same effective rank and pair cosine as the 1-process run of the same
global batch (4 sequences in 2 microbatches of 2): data parallel from the same seed, and tensor
parallel with sequence parallelism resumed from the 1-process checkpoint (a TP2 model initialises
differently, so it starts from the same weights instead). The NTP baseline (--no-nitp) is
measured the same way."""

import pytest

from tests.e2e.engine_runner import TINY_GPT, checkpoint_at, read_log, run_engine

COMMON = TINY_GPT + ["--train-iters", "2", "--global-batch-size", "4", "--log-interval", "1",
                     "--nitp-metrics-interval", "1", "--nitp-metrics-num-pairs", "64"]


def _geometry(log):
    train, _ = read_log(log)
    return {r["iteration"]: (r["effective_rank"], r["pair_cosine"]) for r in train}


def _same(name, one, got):
    for it in got:
        (r1, c1), (r2, c2) = one[it], got[it]
        assert r2 == pytest.approx(r1, rel=1e-4), (name, it, one, got)
        assert c2 == pytest.approx(c1, rel=1e-4, abs=1e-5), (name, it, one, got)


def test_parallel_runs_log_the_single_process_geometry(tmp_path):
    run_engine(COMMON + ["--nitp", "--log-jsonl", tmp_path / "one.jsonl", "--save",
                         tmp_path / "ck", "--save-interval", "1"])
    one = _geometry(tmp_path / "one.jsonl")
    assert sorted(one) == [1, 2] and all(r > 1 and -1 <= c <= 1 for r, c in one.values()), one
    run_engine(COMMON + ["--nitp", "--log-jsonl", tmp_path / "dp2.jsonl"], nproc=2)
    _same("dp2", one, _geometry(tmp_path / "dp2.jsonl"))
    start = checkpoint_at(tmp_path / "ck", 1, tmp_path / "from1")
    run_engine(COMMON + ["--nitp", "--log-jsonl", tmp_path / "tp2.jsonl", "--load", start,
                         "--tensor-model-parallel-size", "2", "--sequence-parallel"], nproc=2)
    got = _geometry(tmp_path / "tp2.jsonl")
    assert sorted(got) == [2], got
    _same("tp2_sp", one, got)


def test_the_ntp_baseline_is_measured_too(tmp_path):
    run_engine(COMMON + ["--no-nitp", "--log-jsonl", tmp_path / "ntp.jsonl"])
    ntp = _geometry(tmp_path / "ntp.jsonl")
    assert sorted(ntp) == [1, 2] and all(r > 1 and -1 <= c <= 1 for r, c in ntp.values()), ntp
