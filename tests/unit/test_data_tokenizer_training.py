"""train_tokenizer: SentencePiece and byte-level BPE from JSONL, deterministic, usable at once."""

import json
import random

import pytest

from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.data.tokenizer_training import train_tokenizer
from megatron_nitp.data.tokenizers import build_tokenizer

WORDS = ("a language model learns to predict the next token of a document and the implicit "
         "target of the following position from the hidden state of every layer").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few hundred JSONL records, with one bad line that training must skip."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 50)))})
             for _ in range(300)]
    lines.insert(7, "{broken json")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("kind, suffix, tokenizer_type", [
    ("sentencepiece", ".model", "SentencePieceTokenizer"),
    ("hf-bpe", ".json", "HuggingFaceTokenizer"),
])
def test_training_twice_gives_identical_files_that_build_a_working_tokenizer(
        corpus, tmp_path, kind, suffix, tokenizer_type):
    first = train_tokenizer(corpus, kind, 400, str(tmp_path / "one"))
    second = train_tokenizer(corpus, kind, 400, str(tmp_path / "two"))
    assert first.endswith(suffix)
    assert open(first, "rb").read() == open(second, "rb").read()

    tokenizer = build_tokenizer(tokenizer_type, first)
    # BPE stops early when the corpus has no pair left to merge (hf-bpe here: 363).
    assert 300 < tokenizer.vocab_size <= 400
    text = "the next token of Zürich"  # 'Z', 'ü' never appear in the corpus
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
    # Training learned the corpus words: far fewer tokens than characters.
    sentence = "the model learns to predict the next token of a document"
    assert len(tokenizer.tokenize(sentence)) < len(sentence) / 3


def test_sentencepiece_end_of_document_is_its_eos_piece(corpus, tmp_path):
    tokenizer = build_tokenizer("SentencePieceTokenizer", train_tokenizer(corpus, "sentencepiece", 400, str(tmp_path / "sp")))
    assert tokenizer._processor.id_to_piece(tokenizer.eod) == "</s>"


def test_hf_bpe_end_of_document_is_endoftext(corpus, tmp_path):
    tokenizer = build_tokenizer("HuggingFaceTokenizer", train_tokenizer(corpus, "hf-bpe", 400, str(tmp_path / "bpe")))
    assert tokenizer.tokenize("<|endoftext|>") == [tokenizer.eod] == [0]


@pytest.mark.parametrize("kind, vocab_size, flag", [
    ("sentencepiece", 100, "--vocab-size"),  # smaller than the 256 byte pieces
    ("sentencepiece", 50000, "--vocab-size"),  # more pieces than the corpus can give
    ("hf-bpe", 200, "--vocab-size"),
    ("wordpiece", 1000, "--type"),
])
def test_impossible_settings_fail_with_one_line_naming_the_flag(corpus, tmp_path, kind, vocab_size, flag):
    with pytest.raises(DataArgumentError) as error:
        train_tokenizer(corpus, kind, vocab_size, str(tmp_path / "tok"))
    assert str(error.value).startswith(flag) and "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_input_without_any_text_is_an_error_naming_input(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"title": "no text key"}\n\n')
    with pytest.raises(DataArgumentError, match="^--input: .* no record with non-empty text"):
        train_tokenizer(str(path), "sentencepiece", 400, str(tmp_path / "tok"))
