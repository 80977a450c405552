"""RNG state in checkpoints (issue #15 item 6, Megatron-LM's --no-save-rng/--no-load-rng), on a
tiny NITP GPT with dropout on, one process.

A straight 4-iteration run that also saves at iteration 2 is the oracle: a resume from that
checkpoint repeats iterations 3 and 4 exactly (the restored generators draw the same dropout
masks), while --no-load-rng, and any resume of a --no-save-rng checkpoint, draw other masks and
so give other losses: the comparison can fail.
"""

import pytest
from torch.distributed.checkpoint import FileSystemReader

from tests.e2e.engine_runner import checkpoint_at, read_log, run_engine

# Every model/optimizer flag explicit: the project's defaults are Megatron-LM's.
RUN = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
       "--seq-length", "32", "--micro-batch-size", "2", "--mock-data", "--vocab-size", "255",
       "--make-vocab-size-divisible-by", "64", "--lr", "1e-3", "--lr-warmup-iters", "1",
       "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
       "--disable-bias-linear", "--norm-epsilon", "1e-6", "--lr-decay-style", "cosine",
       "--weight-decay", "0.1", "--adam-beta2", "0.95", "--train-iters", "4",
       "--attention-dropout", "0.1", "--hidden-dropout", "0.1",
       "--eval-interval", "2", "--eval-iters", "1", "--nitp", "--nitp-target-layer", "1"]


def _losses(path):
    train, valid = read_log(path)
    return ({r["iteration"]: (r["lm_loss"], r["nitp_loss"]) for r in train},
            {r["iteration"]: (r["lm_loss"], r["nitp_loss"]) for r in valid})


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("rng")
    run_engine(RUN + ["--save", d / "all", "--save-interval", "2", "--log-jsonl",
                      d / "straight.jsonl"])
    checkpoint_at(d / "all", 2, d / "ckpt")  # the run went on to save iteration 4 too
    return d


def test_resume_continues_the_straight_run_exactly(straight, tmp_path):
    res = run_engine(RUN + ["--load", straight / "ckpt", "--log-jsonl", tmp_path / "r.jsonl"])
    assert "RNG state" not in res.stdout  # loaded, no notice
    (train, valid), (ref_train, ref_valid) = _losses(tmp_path / "r.jsonl"), \
        _losses(straight / "straight.jsonl")
    assert sorted(train) == [3, 4]
    for it in (3, 4):
        assert train[it] == pytest.approx(ref_train[it], abs=1e-6, rel=0)
    assert valid[4] == pytest.approx(ref_valid[4], abs=1e-6, rel=0)


def test_without_rng_state_the_resume_draws_other_dropout_masks(straight, tmp_path):
    run_engine(RUN + ["--load", straight / "ckpt", "--no-load-rng",
                      "--log-jsonl", tmp_path / "nlr.jsonl"])
    # --no-save-rng: no rng_state object in the checkpoint, and no notice on its resume.
    run_engine(RUN + ["--save", tmp_path / "nsr", "--no-save-rng", "--exit-interval", "2"])
    keys = set(FileSystemReader(str(tmp_path / "nsr" / "iter_0000002"))
               .read_metadata().state_dict_metadata)
    assert not any(k.startswith("rng_state") for k in keys)
    res = run_engine(RUN + ["--load", tmp_path / "nsr", "--log-jsonl", tmp_path / "nsr.jsonl"])
    assert "RNG state" not in res.stdout
    nlr, nsr = _losses(tmp_path / "nlr.jsonl")[0], _losses(tmp_path / "nsr.jsonl")[0]
    ref = _losses(straight / "straight.jsonl")[0]
    assert sorted(nlr) == sorted(nsr) == [3, 4]
    assert nlr == nsr  # both continue from the --seed state, not the saved run's
    # Same weights and batch at iteration 3: only the dropout masks differ.
    assert abs(nlr[3][0] - ref[3][0]) > 1e-5


def test_rng_state_is_a_sharded_object_per_rank(straight):
    keys = set(FileSystemReader(str(straight / "ckpt" / "iter_0000002"))
               .read_metadata().state_dict_metadata)
    assert "rng_state/shard_0.0_1.1" in keys  # Megatron-LM's key: (PP, TP) offset and shape


# -- several ranks: per-rank objects, another DP size, another TP size ---------------------------

@pytest.fixture(scope="module")
def straight_dp2(tmp_path_factory):
    d = tmp_path_factory.mktemp("rng_dp2")
    run_engine(RUN + ["--save", d / "all", "--save-interval", "2", "--log-jsonl",
                      d / "straight.jsonl"], nproc=2)
    checkpoint_at(d / "all", 2, d / "ckpt")
    return d


def test_dp2_resume_continues_exactly_and_dp1_loads_the_dp_rank_0_state(straight_dp2, tmp_path):
    d = straight_dp2
    res = run_engine(RUN + ["--load", d / "ckpt", "--log-jsonl", tmp_path / "r.jsonl"], nproc=2)
    assert "RNG state" not in res.stdout
    train, ref = _losses(tmp_path / "r.jsonl")[0], _losses(d / "straight.jsonl")[0]
    assert sorted(train) == [3, 4]
    for it in (3, 4):
        assert train[it] == pytest.approx(ref[it], abs=1e-6, rel=0)
    # At DP1 the objects (keyed by PP/TP rank, as Megatron-LM's) load without a notice.
    res = run_engine(RUN + ["--load", d / "ckpt", "--global-batch-size", "4",
                            "--exit-interval", "3"])
    assert "RNG state" not in res.stdout and "resumed from" in res.stdout


def test_another_tp_size_ignores_the_rng_state_with_megatron_lms_notice(straight):
    res = run_engine(RUN + ["--load", straight / "ckpt", "--tensor-model-parallel-size", "2",
                            "--exit-interval", "3"], nproc=2)
    assert "notice: (TP, PP) mismatch after resume ((2, 1) vs (1, 1) from checkpoint): RNG " \
           "state will be ignored" in res.stdout
