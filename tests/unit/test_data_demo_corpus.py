"""The embedded demo corpus: real English prose, cleaned, deduplicated and identical from build
to build; prepare_demo_data turns it into cached, ready-to-train data."""

import json
import re

import pytest

from megatron_nitp.data.demo_corpus import _clean_document, build_demo_corpus

# The commonest English function words: a fair share of any English prose.
ENGLISH = set("the of and to a in is it that for as with be by on not this are or an from "
              "if which can its returns return".split())


def _records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    stats = build_demo_corpus(str(path), max_docs=60)
    assert stats.documents == 60
    return str(path)


def test_two_builds_are_byte_identical(corpus, tmp_path):
    build_demo_corpus(str(tmp_path / "again.jsonl"), max_docs=60)
    assert open(corpus, "rb").read() == (tmp_path / "again.jsonl").read_bytes()


def test_documents_are_long_clean_english_prose(corpus):
    records = _records(corpus)
    assert all(record["source"].startswith("stdlib:") for record in records)
    words = []
    for record in records:
        text = record["text"]
        assert len(text) >= 200
        assert ">>>" not in text and "  " not in text  # no doctests, whitespace collapsed
        words += re.findall(r"[a-z]+", text.lower())
    assert sum(word in ENGLISH for word in words) / len(words) > 0.15
    text = "".join(record["text"] for record in records)
    assert sum(ch.isascii() for ch in text) / len(text) > 0.98


def test_no_paragraph_appears_twice(corpus):
    paragraphs = [p for record in _records(corpus) for p in record["text"].split("\n\n")]
    assert len(paragraphs) == len(set(paragraphs))


def test_cleaning_drops_code_rules_and_repeats_and_collapses_whitespace():
    seen = set()
    docstring = ("Return the sum of the values in the list, starting from the given start value.\n\n"
                 ">>> total([1, 2])\n3\n\n"
                 "Parameters\n----------\n\n"
                 "This   paragraph  spans\n    several lines and has enough words to count as prose.")
    cleaned = _clean_document([docstring], seen)
    assert cleaned.split("\n\n") == [
        "Return the sum of the values in the list, starting from the given start value.",
        "This paragraph spans several lines and has enough words to count as prose.",
    ]
    assert _clean_document([docstring], seen) == ""  # already seen


def test_dependency_docstrings_are_read_from_source_without_importing(tmp_path):
    stats = build_demo_corpus(str(tmp_path / "numpy.jsonl"), max_docs=3, sources=["numpy"])
    assert stats.sources == {"numpy": 3}
    assert all(r["source"].startswith("numpy:numpy/") for r in _records(tmp_path / "numpy.jsonl"))


def test_prepare_demo_data_builds_each_step_once_and_the_data_fits_the_tokenizer(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_nitp.data.datasets import validate_data_args
    from megatron_nitp.data.demo import prepare_demo_data
    from megatron_nitp.data.tokenizers import build_tokenizer

    logs = []
    prefix, model = prepare_demo_data(str(tmp_path), vocab_size=500, max_docs=40, log=logs.append)
    assert not any("cached" in line for line in logs)
    logs.clear()
    assert prepare_demo_data(str(tmp_path), vocab_size=500, max_docs=40, log=logs.append) == (prefix, model)
    assert len(logs) == 3 and all("cached" in line for line in logs)

    tokenizer = build_tokenizer("SentencePieceTokenizer", model)
    validate_data_args([prefix], tokenizer)
    dataset = IndexedDataset(prefix)
    assert len(dataset) == 40
    assert dataset[0][-1] == tokenizer.eod  # --append-eod
    first_text = _records(tmp_path / "corpus_40docs.jsonl")[0]["text"]
    assert tokenizer.detokenize(dataset[0][:-1]) == first_text


def test_an_unknown_source_is_refused_before_anything_is_written(tmp_path):
    from megatron_nitp.data.errors import DataArgumentError

    with pytest.raises(DataArgumentError, match="^--sources: 'no_such_package' is neither"):
        build_demo_corpus(str(tmp_path / "c.jsonl"), sources=["stdlib", "no_such_package"])
    assert not list(tmp_path.iterdir())
