"""build_datasets / validate_data_args: megatron-core GPT datasets from --data-path, --split and
--mock-data, and one clear error line for every data mistake found before training starts."""

import json

import numpy
import pytest

from megatron_nitp.data.datasets import build_datasets, parse_blend, parse_split, validate_data_args
from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.data.index_check import index_identity
from megatron_nitp.data.iterators import build_data_iterator
from megatron_nitp.data.preprocess import preprocess_jsonl
from megatron_nitp.data.tokenizers import build_tokenizer

VOCAB = 64
SEQ = 16


def _make_dataset(directory, name, documents, vocab=VOCAB, last_vocab=None):
    """Indexed dataset of `documents` documents of NullTokenizer ids below `vocab` (the last
    document's ids below `last_vocab`)."""
    rng = numpy.random.default_rng(len(name) + documents)
    path = directory / f"{name}.jsonl"
    with open(path, "w") as stream:
        for i in range(documents):
            high = last_vocab if last_vocab and i == documents - 1 else vocab
            ids = rng.integers(0, high, size=rng.integers(5, 40))
            stream.write(json.dumps({"text": " ".join(map(str, ids))}) + "\n")
    preprocess_jsonl(str(path), str(directory / name), "NullTokenizer", vocab_size=last_vocab or vocab,
                     append_eod=True, progress=False)
    return str(directory / f"{name}_text_document")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    return {"a": _make_dataset(directory, "a", 400), "b": _make_dataset(directory, "b", 300),
            "tiny": _make_dataset(directory, "tiny", 10)}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("NullTokenizer", vocab_size=VOCAB)


def test_blend_of_two_prefixes_with_split_98_2_0_builds_train_and_valid_only(data, tokenizer, tmp_path):
    blend = ["0.7", data["a"], "0.3", data["b"]]
    validate_data_args(blend, tokenizer, "98,2,0")
    train, valid, test = build_datasets(blend, "98,2,0", False, SEQ, tokenizer, seed=1234,
                                        train_val_test_num_samples=(200, 20, 0),
                                        data_cache_path=str(tmp_path / "cache"))
    assert test is None
    assert len(train) >= 200 and len(valid) >= 20
    # The blend draws from each prefix in proportion to its weight.
    share_b = numpy.mean(train.dataset_index[:200] == 1)
    assert abs(share_b - 0.3) < 0.02

    batch = next(build_data_iterator(train, micro_batch_size=4, dp_rank=0, dp_size=1, consumed_samples=0))
    assert sorted(batch) == ["labels", "loss_mask", "position_ids", "tokens"]
    assert all(tensor.shape == (4, SEQ) for tensor in batch.values())
    assert int(batch["tokens"].max()) < tokenizer.vocab_size
    # labels are the tokens shifted by one: sample i is text[i:i+SEQ], labels text[i+1:i+SEQ+1]
    assert (batch["labels"][:, :-1] == batch["tokens"][:, 1:]).all()
    assert (batch["position_ids"] == numpy.arange(SEQ)).all()


def test_the_same_seed_builds_the_same_samples(data, tokenizer):
    def first_tokens():
        train, _, _ = build_datasets([data["a"]], "98,2,0", False, SEQ, tokenizer, 7, (50, 5, 0))
        return numpy.stack([train[i]["tokens"].numpy() for i in range(10)])

    assert (first_tokens() == first_tokens()).all()


def test_attention_mask_is_made_only_when_asked_for(data, tokenizer):
    train, _, _ = build_datasets([data["a"]], "98,2,0", False, SEQ, tokenizer, 1, (10, 1, 0),
                                 create_attention_mask=True)
    batch = next(build_data_iterator(train, 2, 0, 1, 0))
    assert batch["attention_mask"].shape == (2, 1, SEQ, SEQ)


def test_mock_data_needs_no_files(tokenizer):
    train, valid, _ = build_datasets(None, "98,2,0", True, SEQ, tokenizer, 1234, (20, 4, 0))
    batch = next(build_data_iterator(train, 2, 0, 1, 0))
    assert batch["tokens"].shape == (2, SEQ) and len(valid) >= 4


def test_a_split_left_without_documents_is_an_error_not_a_hang(data, tokenizer):
    # 10 documents, 99/1/0: the valid split rounds to zero documents; megatron-core would loop
    # forever trying to fill it.
    with pytest.raises(DataArgumentError, match="^--split: the valid split of .* gets none of its 10"):
        build_datasets([data["tiny"]], "99,1,0", False, SEQ, tokenizer, 1, (10, 2, 0))


def test_token_ids_beyond_the_tokenizer_vocabulary_are_reported_as_a_mismatch(data):
    small = build_tokenizer("NullTokenizer", vocab_size=VOCAB // 2)
    with pytest.raises(DataArgumentError) as error:
        validate_data_args([data["a"]], small)
    message = str(error.value)
    assert message.startswith("--data-path") and "vocabulary does not match the data" in message
    assert data["a"] in message and "\n" not in message


def test_sampled_vocabulary_check_finds_large_ids_in_a_large_file(tmp_path, monkeypatch):
    import megatron_nitp.data.datasets as datasets

    monkeypatch.setattr(datasets, "_FULL_SCAN_TOKENS", 1000)
    monkeypatch.setattr(datasets, "_SAMPLE_WINDOW_TOKENS", 100)
    # Only the last document of ~13k tokens holds ids beyond the vocabulary.
    prefix = _make_dataset(tmp_path, "big", 600, vocab=VOCAB, last_vocab=VOCAB * 100)
    with pytest.raises(DataArgumentError, match="vocabulary does not match"):
        validate_data_args([prefix], build_tokenizer("NullTokenizer", vocab_size=VOCAB))


@pytest.mark.parametrize("data_path, mock, split, expected", [
    (["missing"], False, "98,2,0", "--data-path: no dataset at prefix"),
    (["{a}.bin"], False, "98,2,0", "--data-path: give dataset prefixes without extension"),
    (["0.7", "{a}", "{b}", "0.3"], False, "98,2,0", "--data-path: .* mixes weights and prefixes"),
    (["-1", "{a}", "1", "{b}"], False, "98,2,0", "--data-path: blend weights must be positive"),
    (None, False, "98,2,0", "--data-path: required"),
    (["{a}"], True, "98,2,0", "--data-path: not used with --mock-data"),
    (["{a}"], False, "98,two,0", "--split: expected"),
    (["{a}"], False, "0,0,0", "--split: expected"),
])
def test_data_argument_mistakes_are_one_line_naming_the_flag(data, tokenizer, data_path, mock, split, expected):
    if data_path:
        data_path = [item.format(**data) for item in data_path]
    with pytest.raises(DataArgumentError, match=expected):
        validate_data_args(data_path, tokenizer, split, mock)


def test_a_truncated_bin_file_is_reported(data, tokenizer, tmp_path):
    prefix = str(tmp_path / "cut")
    (tmp_path / "cut.idx").write_bytes(open(data["a"] + ".idx", "rb").read())
    (tmp_path / "cut.bin").write_bytes(open(data["a"] + ".bin", "rb").read()[:-1])
    with pytest.raises(DataArgumentError, match=r"cut.bin: \d+ bytes, but .*cut.idx describes"):
        validate_data_args([prefix], tokenizer)


def test_blend_parsing_follows_megatron_lm():
    assert parse_blend(["a", "b"]) == (["a", "b"], None)
    assert parse_blend(["0.7", "a", "0.3", "b"]) == (["a", "b"], [0.7, 0.3])
    assert parse_blend(["30", "a"]) == (["a"], [30.0])
    assert parse_split("98,2,0") == pytest.approx([0.98, 0.02, 0.0])
    assert parse_split("9,1") == pytest.approx([0.9, 0.1, 0.0])


def test_each_prefix_of_a_blend_is_cached_under_its_own_data_identity(data, tokenizer, tmp_path):
    # Re-preprocessing (or adding) one prefix must not invalidate the other prefixes' caches.
    def cache_keys(blend):
        train, _, _ = build_datasets(blend, "100,0,0", False, SEQ, tokenizer, seed=1,
                                     train_val_test_num_samples=(50, 0, 0),
                                     data_cache_path=str(tmp_path / "cache"))
        return {d.dataset_path: (d.unique_identifiers["data_identity"], d.unique_description_hash)
                for d in train.datasets}

    both = cache_keys(["0.5", data["a"], "0.5", data["b"]])
    assert both[data["a"]][0] == {data["a"]: index_identity(data["a"])}  # its own prefix only
    with_tiny = cache_keys(["0.4", data["a"], "0.4", data["b"], "0.2", data["tiny"]])
    for prefix in (data["a"], data["b"]):
        assert with_tiny[prefix][0] == both[prefix][0]
