"""Megatron-LM's --data-args-path and --per-split-data-args-path (issue #15 item 7) in a real
launch: a run given the lists in files trains exactly as the run given them on the command line
(tiny NITP GPT, one process, two NullTokenizer corpora)."""

import json

import pytest

from tests.helpers import write_null_corpora
from tests.e2e.engine_runner import read_log, run_engine

# Every model/optimizer flag explicit: the project's defaults are Megatron-LM's.
RUN = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
       "--seq-length", "32", "--micro-batch-size", "2", "--vocab-size", "255",
       "--make-vocab-size-divisible-by", "64", "--lr", "1e-3", "--lr-warmup-iters", "1",
       "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
       "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
       "--train-iters", "2", "--eval-interval", "2", "--eval-iters", "1",
       "--nitp", "--nitp-target-layer", "1"]


def _losses(path):
    train, valid = read_log(path)
    return ({r["iteration"]: r["lm_loss"] for r in train},
            {r["iteration"]: r["lm_loss"] for r in valid})


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("data_args")
    return d, write_null_corpora(d, {"a": 0, "b": 100}, 200)


def test_data_args_path_is_the_data_path_list(corpora, tmp_path):
    d, c = corpora
    blend = ["0.6", c["a"], "0.4", c["b"]]
    (tmp_path / "blend.txt").write_text(f"{blend[0]} {blend[1]}\n{blend[2]}\t{blend[3]}\n")
    run_engine(RUN + ["--data-path", *blend, "--split", "90,10,0",
                      "--log-jsonl", tmp_path / "cli.jsonl"])
    run_engine(RUN + ["--data-args-path", tmp_path / "blend.txt", "--split", "90,10,0",
                      "--log-jsonl", tmp_path / "file.jsonl"])
    cli, from_file = _losses(tmp_path / "cli.jsonl"), _losses(tmp_path / "file.jsonl")
    assert sorted(cli[0]) == [1, 2] and sorted(cli[1]) == [2]
    assert from_file == cli


def test_per_split_data_args_path_is_the_per_split_lists(corpora, tmp_path):
    d, c = corpora
    (tmp_path / "splits.json").write_text(json.dumps(
        {"train": [c["a"]], "valid": c["b"], "test": None}))
    run_engine(RUN + ["--train-data-path", c["a"], "--valid-data-path", c["b"],
                      "--log-jsonl", tmp_path / "cli.jsonl"])
    res = run_engine(RUN + ["--per-split-data-args-path", tmp_path / "splits.json",
                            "--log-jsonl", tmp_path / "file.jsonl"])
    cli, from_file = _losses(tmp_path / "cli.jsonl"), _losses(tmp_path / "file.jsonl")
    assert sorted(cli[1]) == [2] and from_file == cli
    # Mixed with its command-line twin: one line, before any work (as Megatron-LM asserts).
    res = run_engine(RUN + ["--per-split-data-args-path", tmp_path / "splits.json",
                            "--train-data-path", c["a"], "--dry-run"], expect_code=2)
    assert res.stdout.count("error:") == 1
    assert ("error: --per-split-data-args-path: not used with --train-data-path"
            in res.stdout)
