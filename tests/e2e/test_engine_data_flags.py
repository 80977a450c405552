"""Megatron-LM's data flags from the command line (issue #15 item 7), tiny NITP GPT, one process:
per-split data paths (megatron-core's blend_per_split), --num-workers, and the document flags
(--reset-attention-mask, --eod-mask-loss, --reset-position-ids) with NITP."""


import pytest

from tests.helpers import write_null_corpora
from tests.e2e.engine_runner import TINY_GPT, read_log, run_engine

RUN = [a for a in TINY_GPT if a != "--mock-data"] + ["--nitp", "--train-iters", "2"]


def _losses(path, split=False):
    train, valid = read_log(path)
    return {r["iteration"]: (r["lm_loss"], r["nitp_loss"]) for r in (valid if split else train)}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two indexed corpora of short documents (NullTokenizer ids < 255, + EOD)."""
    d = tmp_path_factory.mktemp("data_flags")
    return write_null_corpora(d, {"train": 0, "valid": 100}, 300)


@pytest.fixture(scope="module")
def plain(corpora, tmp_path_factory):
    log = tmp_path_factory.mktemp("plain") / "log.jsonl"
    run_engine(RUN + ["--data-path", corpora["train"], "--split", "100,0,0", "--log-jsonl", log])
    return _losses(log)


def test_per_split_data_paths_train_and_evaluate_on_their_own_data(corpora, plain, tmp_path):
    per_split = RUN + ["--train-data-path", corpora["train"], "--eval-interval", "2",
                       "--eval-iters", "1"]
    run_engine(per_split + ["--valid-data-path", corpora["valid"], "--num-workers", "2",
                            "--log-jsonl", tmp_path / "a.jsonl"])
    run_engine(per_split + ["--valid-data-path", corpora["train"],
                            "--log-jsonl", tmp_path / "b.jsonl"])
    # The train split is the whole train corpus, in the same order (2 DataLoader workers too).
    assert _losses(tmp_path / "a.jsonl") == _losses(tmp_path / "b.jsonl") == plain
    # The validation split is read from --valid-data-path.
    valid_a, valid_b = _losses(tmp_path / "a.jsonl", True), _losses(tmp_path / "b.jsonl", True)
    assert sorted(valid_a) == sorted(valid_b) == [2]
    assert valid_a[2][0] != valid_b[2][0]


def test_document_flags_change_the_objective(corpora, plain, tmp_path):
    run_engine(RUN + ["--data-path", corpora["train"], "--split", "100,0,0",
                      "--reset-attention-mask", "--eod-mask-loss", "--reset-position-ids",
                      "--log-jsonl", tmp_path / "docs.jsonl"])
    docs = _losses(tmp_path / "docs.jsonl")
    assert sorted(docs) == [1, 2] and all(v == v for pair in docs.values() for v in pair)
    # Same data and weights; other masks: other LM and NITP losses from the first step.
    assert docs[1][0] != plain[1][0] and docs[1][1] != plain[1][1]


@pytest.mark.parametrize("flags, message", [
    (["--data-path", "X", "--train-data-path", "X"], "error: --data-path: not used with "
                                                     "--train/valid/test-data-path"),
    (["--mock-data", "--valid-data-path", "X"], "error: --train/valid/test-data-path: not used "
                                                "with --mock-data"),
    (["--train-data-path", "X", "--split", "90,10,0"], "error: --split 90,10,0: not used with"),
    (["--mock-data", "--num-workers", "-1"], "error: --num-workers -1: must be >= 0"),
])
def test_bad_data_flags_are_one_line(flags, message):
    res = run_engine(RUN + flags, expect_code=2)
    assert message in res.stdout and res.stdout.count("error:") == 1
