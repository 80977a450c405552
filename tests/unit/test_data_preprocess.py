"""preprocess_jsonl: what is written equals what the tokenizer gives; bad lines are skipped and
counted; nothing is ever left half-written or silently overwritten."""

import json
import os
import random
import subprocess
import sys

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_nitp.data import jsonl
from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.data.preprocess import TOKENIZER_ERROR, preprocess_jsonl
from megatron_nitp.data.tokenizer_training import train_sentencepiece
from megatron_nitp.data.tokenizers import build_tokenizer

WORDS = "data flows one way from arguments to configs to the model and the loss".split()


def _texts(count, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(count)]


def _write_lines(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_sentencepiece(_texts(200), 300, str(tmp_path_factory.mktemp("tok") / "tok.model"))


def _documents(prefix):
    dataset = IndexedDataset(prefix)
    return [dataset[i].tolist() for i in range(len(dataset))], dataset


def test_documents_read_back_equal_direct_tokenization_plus_eod(model, tmp_path):
    texts = _texts(50, seed=1)
    corpus = _write_lines(tmp_path / "in.jsonl", [json.dumps({"text": t}) for t in texts])
    report = preprocess_jsonl(corpus, str(tmp_path / "out"), "SentencePieceTokenizer", model,
                              append_eod=True, progress=False)
    tokenizer = build_tokenizer("SentencePieceTokenizer", model)
    expected = [tokenizer.tokenize(t) + [tokenizer.eod] for t in texts]
    documents, dataset = _documents(str(tmp_path / "out_text_document"))
    assert documents == expected
    assert len(dataset.document_indices) - 1 == report.documents == 50
    assert report.tokens["text"] == sum(map(len, expected))
    assert dataset.index.dtype == numpy.uint16  # megatron's optimal dtype for a small vocabulary


def test_a_pool_of_workers_writes_the_same_bytes_as_one_process(model, tmp_path):
    corpus = _write_lines(tmp_path / "in.jsonl", [json.dumps({"text": t}) for t in _texts(300)])
    for workers in (1, 2):
        preprocess_jsonl(corpus, str(tmp_path / f"w{workers}"), "SentencePieceTokenizer", model,
                         append_eod=True, workers=workers, progress=False)
    for suffix in (".bin", ".idx"):
        one = (tmp_path / f"w1_text_document{suffix}").read_bytes()
        assert one == (tmp_path / f"w2_text_document{suffix}").read_bytes()


def test_each_json_key_gets_its_own_dataset_aligned_by_document(tmp_path):
    records = [json.dumps({"text": f"{i} {i + 1}", "title": f"{i}"}) for i in range(10)]
    records.insert(3, json.dumps({"text": "1 2"}))  # no title: dropped from both outputs
    corpus = _write_lines(tmp_path / "in.jsonl", records)
    report = preprocess_jsonl(corpus, str(tmp_path / "out"), "NullTokenizer", vocab_size=100,
                              json_keys=["text", "title"], progress=False)
    texts, _ = _documents(str(tmp_path / "out_text_document"))
    titles, _ = _documents(str(tmp_path / "out_title_document"))
    assert titles == [[i] for i in range(10)]
    assert texts == [[i, i + 1] for i in range(10)]
    assert report.counts[jsonl.MISSING_KEY] == 1


def test_every_kind_of_bad_line_is_counted_and_skipped_and_good_ones_all_arrive(tmp_path):
    good = [json.dumps({"text": f"{i} {i}"}) for i in range(6)]
    bad = {
        jsonl.INVALID_JSON: ['{"text": "unterminated', "[1, 2]"],
        jsonl.MISSING_KEY: [json.dumps({"body": "1"}), json.dumps({"text": None})],
        jsonl.EMPTY_TEXT: [json.dumps({"text": " \t "})],
        jsonl.INVALID_UTF8: [b'{"text": "caf\xe9"}', json.dumps({"text": "\ud800"})],
        jsonl.BLANK_LINE: [""],
        TOKENIZER_ERROR: [json.dumps({"text": "1 not-an-integer"}), json.dumps({"text": "100"})],
    }
    lines = good[:3] + [line for kind in bad for line in bad[kind]] + good[3:]
    corpus = _write_lines(tmp_path / "in.jsonl", lines)
    report = preprocess_jsonl(corpus, str(tmp_path / "out"), "NullTokenizer", vocab_size=99,
                              progress=False)
    documents, _ = _documents(str(tmp_path / "out_text_document"))
    assert documents == [[i, i] for i in range(6)]
    assert {kind: report.counts[kind] for kind in bad} == {kind: len(v) for kind, v in bad.items()}
    assert report.examples[jsonl.INVALID_JSON][0][0] == 4  # the first bad line's number
    summary = report.format_summary()
    assert "documents written" in summary and all(kind in summary for kind in bad)


def test_existing_outputs_are_refused_without_overwrite_and_replaced_with_it(tmp_path):
    corpus = _write_lines(tmp_path / "in.jsonl", [json.dumps({"text": "1 2 3"})])
    (tmp_path / "out_text_document.idx").write_bytes(b"precious")
    with pytest.raises(DataArgumentError, match="^--output-prefix: .* already exists; pass --overwrite"):
        preprocess_jsonl(corpus, str(tmp_path / "out"), "NullTokenizer", vocab_size=10, progress=False)
    assert (tmp_path / "out_text_document.idx").read_bytes() == b"precious"
    preprocess_jsonl(corpus, str(tmp_path / "out"), "NullTokenizer", vocab_size=10,
                     overwrite=True, progress=False)
    assert _documents(str(tmp_path / "out_text_document"))[0] == [[1, 2, 3]]


def test_a_crash_mid_run_leaves_neither_outputs_nor_temporary_files(tmp_path, monkeypatch):
    corpus = _write_lines(tmp_path / "in.jsonl", [json.dumps({"text": f"{i}"}) for i in range(20)])
    calls = []

    def crash_after_five(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    original = IndexedDatasetBuilder.add_document
    monkeypatch.setattr(IndexedDatasetBuilder, "add_document", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        preprocess_jsonl(corpus, str(tmp_path / "out"), "NullTokenizer", vocab_size=50,
                         progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_temporaries_of_a_killed_earlier_run_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"out_text_document.bin.partial-{dead}"
    stale.write_bytes(b"half a run")
    corpus = _write_lines(tmp_path / "in.jsonl", [json.dumps({"text": "1"})])
    preprocess_jsonl(corpus, str(tmp_path / "out"), "NullTokenizer", vocab_size=5, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out_text_document.bin", "out_text_document.idx"]


def test_an_input_without_valid_documents_is_an_error_and_writes_nothing(tmp_path):
    corpus = _write_lines(tmp_path / "in.jsonl", ["{bad", json.dumps({"text": ""})])
    with pytest.raises(DataArgumentError, match="no valid document .*1 invalid JSON, 1 empty text"):
        preprocess_jsonl(corpus, str(tmp_path / "out"), "NullTokenizer", vocab_size=5, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


@pytest.mark.parametrize("kwargs, flag", [
    (dict(input_path="missing.jsonl"), "--input"),
    (dict(workers=0), "--workers"),
    (dict(json_keys=["text", "text"]), "--json-keys"),
    (dict(tokenizer_type="SentencePieceTokenizer", tokenizer_model="missing.model"), "--tokenizer-model"),
    (dict(vocab_size=None), "--vocab-size"),
])
def test_bad_arguments_fail_before_any_output_is_created(tmp_path, kwargs, flag):
    corpus = _write_lines(tmp_path / "in.jsonl", [json.dumps({"text": "1"})])
    arguments = dict(input_path=corpus, output_prefix=str(tmp_path / "out" / "data"),
                     tokenizer_type="NullTokenizer", vocab_size=5, progress=False)
    arguments.update({k: (str(tmp_path / v) if k.endswith(("_path", "_model")) else v)
                      for k, v in kwargs.items()})
    with pytest.raises(DataArgumentError) as error:
        preprocess_jsonl(**arguments)
    assert str(error.value).startswith(flag)
    assert not (tmp_path / "out").exists()
