"""build_tokenizer: the three tokenizer types round-trip text and expose megatron's interface."""

import json
import random
from collections import OrderedDict

import pytest

from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.data.tokenizer_training import train_hf_bpe, train_sentencepiece
from megatron_nitp.data.tokenizers import build_tokenizer

WORDS = ("the model reads a token and predicts the next one while the optimizer updates its "
         "weights from gradients of the loss over every batch of documents").split()
# Unseen characters, a tab, a newline and doubled spaces: byte fallback and lossless decoding.
TRICKY = "The  café serves 日本 tea.\n\tΩ ≠ ∞; ids 12345 and émojis 🙂 end here"


def _texts(count=300, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    return train_sentencepiece(_texts(), 300, str(tmp_path_factory.mktemp("sp") / "tok.model"))


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory):
    return train_hf_bpe(_texts(), 320, str(tmp_path_factory.mktemp("bpe") / "tok.json"))


def test_null_tokenizer_reads_integers_and_puts_eod_after_the_data_vocabulary():
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=100)
    assert tokenizer.tokenize("1 2  3\n99") == [1, 2, 3, 99]
    assert tokenizer.detokenize([1, 2, 3]) == "1 2 3"
    # Megatron-LM's _NullTokenizer: ids 0..V-1 are data, eod is V, vocab_size is V + 1.
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad, tokenizer.bos) == (101, 100, -1, None)
    with pytest.raises(ValueError):
        tokenizer.tokenize("5 101")


def test_sentencepiece_round_trips_any_text_and_has_distinct_special_ids(sentencepiece_model):
    tokenizer = build_tokenizer("SentencePieceTokenizer", sentencepiece_model)
    ids = tokenizer.tokenize(TRICKY)
    assert tokenizer.detokenize(ids) == TRICKY
    assert 0 not in ids  # byte fallback: nothing is unknown
    assert (tokenizer.eod, tokenizer.pad, tokenizer.bos, tokenizer.vocab_size) == (2, 3, 1, 300)
    assert max(ids) < tokenizer.vocab_size


def test_megatron_name_gpt_sentencepiece_tokenizer_is_accepted(sentencepiece_model):
    tokenizer = build_tokenizer("GPTSentencePieceTokenizer", sentencepiece_model)
    assert tokenizer.tokenizer_type == "SentencePieceTokenizer"


def test_hf_tokenizer_json_round_trips_and_finds_endoftext(bpe_json):
    tokenizer = build_tokenizer("HuggingFaceTokenizer", bpe_json)
    ids = tokenizer.tokenize(TRICKY)
    assert tokenizer.detokenize(ids) == TRICKY
    assert (tokenizer.eod, tokenizer.pad, tokenizer.vocab_size) == (0, 1, 320)
    assert tokenizer.tokenize("a<|endoftext|>b").count(0) == 1  # the special token is atomic


def test_hf_tokenizer_directory_with_only_tokenizer_json_is_read_without_transformers(bpe_json, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_bytes(open(bpe_json, "rb").read())
    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tok"))
    assert tokenizer.tokenize(TRICKY) == build_tokenizer("HuggingFaceTokenizer", bpe_json).tokenize(TRICKY)
    assert tokenizer._auto is None


def test_hf_tokenizer_directory_is_read_with_transformers_offline(bpe_json, tmp_path):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=bpe_json, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    fast.save_pretrained(tmp_path / "hf")
    from_directory = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "hf"))
    from_file = build_tokenizer("HuggingFaceTokenizer", bpe_json)
    assert from_directory.tokenize(TRICKY) == from_file.tokenize(TRICKY)
    assert (from_directory.eod, from_directory.pad) == (0, 1)
    assert from_directory.detokenize(from_directory.tokenize(TRICKY)) == TRICKY


@pytest.mark.parametrize("kind", ["sentencepiece", "hf-json", "null"])
def test_save_to_copies_files_that_rebuild_the_same_tokenizer(kind, sentencepiece_model, bpe_json, tmp_path):
    tokenizer_type, model = {
        "sentencepiece": ("SentencePieceTokenizer", sentencepiece_model),
        "hf-json": ("HuggingFaceTokenizer", bpe_json),
        "null": ("NullTokenizer", None),
    }[kind]
    original = build_tokenizer(tokenizer_type, model, vocab_size=50)
    written = original.save_to(str(tmp_path / "export"))
    assert written and all((tmp_path / "export" / p.split("/")[-1]).is_file() for p in written)
    if kind == "null":
        rebuilt = build_tokenizer(tokenizer_type, vocab_size=json.load(open(written[0]))["vocab_size"])
        text = "1 2 3"
    else:
        rebuilt = build_tokenizer(tokenizer_type, written[0])
        text = TRICKY
    assert rebuilt.tokenize(text) == original.tokenize(text)
    assert rebuilt.vocab_size == original.vocab_size


def test_unique_identifiers_are_what_megatron_hashes_into_cache_names(sentencepiece_model):
    tokenizer = build_tokenizer("SentencePieceTokenizer", sentencepiece_model)
    assert isinstance(tokenizer.unique_identifiers, OrderedDict)
    json.dumps(tokenizer.unique_identifiers)  # megatron-core json-dumps them
    assert tokenizer.unique_identifiers["class"] == "SentencePieceTokenizer"


@pytest.mark.parametrize(
    "tokenizer_type, content, flag",
    [
        ("SentencePieceTokenizer", None, "--tokenizer-model"),  # file does not exist
        ("SentencePieceTokenizer", b"not a protobuf", "--tokenizer-model"),
        ("HuggingFaceTokenizer", None, "--tokenizer-model"),
        ("HuggingFaceTokenizer", b"{not json", "--tokenizer-model"),
        ("NullTokenizer", None, "--vocab-size"),  # no vocab size
        ("WordPiece", None, "--tokenizer-type"),
    ],
)
def test_bad_tokenizer_arguments_fail_with_one_line_naming_the_flag(tokenizer_type, content, flag, tmp_path):
    path = tmp_path / "tokenizer.file"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataArgumentError) as error:
        build_tokenizer(tokenizer_type, str(path))
    message = str(error.value)
    assert message.startswith(flag) and "\n" not in message
    if content is None and flag == "--tokenizer-model":
        assert "does not exist" in message


def test_tokenizer_model_is_required_for_file_based_tokenizers():
    with pytest.raises(DataArgumentError, match="--tokenizer-model: required"):
        build_tokenizer("SentencePieceTokenizer")
