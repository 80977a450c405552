"""Data files (issue #12.1, #12.2): a sample-index cache never outlives the data it was built
from, and a damaged or mismatched `.bin/.idx` pair is one line naming the file before any model
is built (a damaged demo cache is rebuilt instead)."""

import json
import random

import numpy
import pytest

from megatron_nitp.data.errors import DataArgumentError
from tests.e2e.engine_runner import engine_command
from tests.e2e.reliability_runs import env
from tools.preprocess_data import main as preprocess_main

NULL = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "100"]


def _corpus(path, docs, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(docs):
            ids = [rng.randrange(100) for _ in range(rng.randint(20, 60))]
            f.write(json.dumps({"text": " ".join(map(str, ids))}) + "\n")
    return path


def _preprocess(corpus, out, *extra):
    assert preprocess_main(["--input", str(corpus), "--output-prefix", str(out), *NULL,
                            "--append-eod", "--workers", "1", *extra]) in (0, None)
    return str(out) + "_text_document"


def _train_dataset(prefix, cache):
    from megatron_nitp.data.datasets import build_datasets
    from megatron_nitp.data.tokenizers import build_tokenizer

    tokenizer = build_tokenizer("NullTokenizer", None, 100)
    train, _, _ = build_datasets([prefix], "100,0,0", False, 32, tokenizer, 1234, (64, 0, 0),
                                 cache)
    return train


@pytest.mark.parametrize("cache", ["default", "data-cache-path"])
def test_data_preprocessed_again_under_the_same_prefix_gets_a_new_sample_index(tmp_path, cache):
    big = _corpus(tmp_path / "big.jsonl", 120, seed=1)
    small = _corpus(tmp_path / "small.jsonl", 12, seed=2)
    prefix = _preprocess(big, tmp_path / "data")
    cache_dir = None if cache == "default" else str(tmp_path / "cache")
    old = _train_dataset(prefix, cache_dir)
    assert old.document_index.max() >= 12  # the big corpus' documents

    _preprocess(small, tmp_path / "data", "--overwrite")
    if cache == "default":  # --overwrite cleared megatron's cache next to the data
        assert not (tmp_path / "data_text_document" / "cache").exists()
    new = _train_dataset(prefix, cache_dir)
    # Built from the new data: every sample comes from its 12 documents (the old cache indexed
    # up to 120 and would read past the end of the new .bin).
    assert new.document_index.max() == 11
    assert new.unique_description_hash != old.unique_description_hash
    assert len(new) >= 64 and new[len(new) - 1]["tokens"].numel() == 32
    if cache_dir:
        assert len(list((tmp_path / "cache").glob("*-description.txt"))) == 2


def _damage_cases(tmp_path):
    a = _preprocess(_corpus(tmp_path / "a.jsonl", 30, seed=3), tmp_path / "a")
    b = _preprocess(_corpus(tmp_path / "b.jsonl", 30, seed=4), tmp_path / "b")
    raw = {p: {s: open(p + s, "rb").read() for s in (".bin", ".idx")} for p in (a, b)}

    def pair(name, bin_bytes, idx_bytes):
        prefix = str(tmp_path / name)
        open(prefix + ".bin", "wb").write(bin_bytes)
        open(prefix + ".idx", "wb").write(idx_bytes)
        return prefix

    return {
        "bin truncated": (pair("cut_bin", raw[a][".bin"][:-64], raw[a][".idx"]), "cut_bin.bin"),
        "idx truncated": (pair("cut_idx", raw[a][".bin"], raw[a][".idx"][:-8]), "cut_idx.idx"),
        "idx of another dataset": (pair("mixed", raw[a][".bin"], raw[b][".idx"]), "mixed.bin"),
        "idx garbage": (pair("garbage", raw[a][".bin"],
                             raw[a][".idx"][:34] + bytes(len(raw[a][".idx"]) - 34)), "garbage"),
    }


def test_every_damaged_pair_is_one_error_naming_the_file(tmp_path):
    from megatron_nitp.data.datasets import validate_data_args
    from megatron_nitp.data.tokenizers import build_tokenizer

    tokenizer = build_tokenizer("NullTokenizer", None, 100)
    for case, (prefix, named) in _damage_cases(tmp_path).items():
        with pytest.raises(DataArgumentError) as e:
            validate_data_args([prefix], tokenizer)
        assert named in str(e.value) and "\n" not in str(e.value), (case, str(e.value))


def test_a_mismatched_idx_through_the_cli_exits_2_before_the_model_is_built(tmp_path):
    import subprocess

    prefix, _ = _damage_cases(tmp_path)["idx of another dataset"]
    args = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
            "--seq-length", "16", "--micro-batch-size", "2", "--data-path", prefix, *NULL,
            "--train-iters", "2", "--save", tmp_path / "ckpt"]
    proc = subprocess.run(engine_command(args), capture_output=True, text=True, env=env(),
                          timeout=180, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "mixed.bin" in errors[0] and "describes" in errors[0], errors
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "training gpt model" not in proc.stdout and not (tmp_path / "ckpt").exists()


def test_a_truncated_demo_cache_is_rebuilt(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_nitp.data.demo import prepare_demo_data
    from megatron_nitp.data.index_check import is_consistent

    prefix, _ = prepare_demo_data(str(tmp_path), vocab_size=500, max_docs=40, log=lambda m: None)
    good = open(prefix + ".bin", "rb").read()
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(len(good) // 2)
    logs = []
    assert prepare_demo_data(str(tmp_path), vocab_size=500, max_docs=40,
                             log=logs.append)[0] == prefix
    assert any("[3/3] indexed dataset:" in m and "cached" not in m for m in logs), logs
    assert is_consistent(prefix) and open(prefix + ".bin", "rb").read() == good
    assert len(IndexedDataset(prefix)) == 40
    assert numpy.asarray(IndexedDataset(prefix)[0]).size > 0
