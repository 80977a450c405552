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


# -- Megatron-LM's other tokenizer types: GPT2BPETokenizer, Llama2Tokenizer, TikTokenizer -------

from tests.tokenizer_files import GPT2_EOD, write_gpt2_bpe_files, write_tiktoken_vocab  # noqa: E402


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    return write_gpt2_bpe_files(_texts(), tmp_path_factory.mktemp("gpt2"), vocab_size=300)


def test_gpt2_bpe_has_megatrons_vocabulary_size_and_end_of_document(gpt2_files):
    vocab_file, merge_file = gpt2_files
    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    vocab = json.load(open(vocab_file, encoding="utf-8"))
    # Megatron-LM's _GPT2BPETokenizer: vocab_size = len(encoder), eod = encoder['<|endoftext|>'].
    assert tokenizer.vocab_size == len(vocab) == 300
    assert tokenizer.eod == vocab[GPT2_EOD] == 299
    ids = tokenizer.tokenize(TRICKY)
    assert tokenizer.detokenize(ids) == TRICKY and max(ids) < 299  # byte level: lossless
    assert len(tokenizer.tokenize(" ".join(WORDS))) < 0.6 * len(" ".join(WORDS))  # merges apply
    json.dumps(tokenizer.unique_identifiers)
    assert tokenizer.unique_identifiers["tokenizer_path"] == [vocab_file, merge_file]


def test_gpt2_bpe_gives_the_ids_of_the_reference_gpt2_tokenizer(gpt2_files):
    # transformers' slow GPT2Tokenizer is the implementation Megatron-LM's gpt2_tokenization.py
    # was taken from: the same regex, byte map and merge loop.
    transformers = pytest.importorskip("transformers")
    vocab_file, merge_file = gpt2_files
    reference = transformers.GPT2Tokenizer(vocab_file, merge_file)
    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    for text in _texts(20, seed=3) + [TRICKY, " leading space", "it's 2 o'clock\n\n"]:
        assert tokenizer.tokenize(text) == reference.encode(text), text


def test_gpt2_bpe_files_travel_with_save_to(gpt2_files, tmp_path):
    original = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0],
                               merge_file=gpt2_files[1])
    vocab_file, merge_file = original.save_to(str(tmp_path / "export"))
    rebuilt = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    assert rebuilt.tokenize(TRICKY) == original.tokenize(TRICKY)


def test_gpt2_bpe_bad_files_are_one_line_naming_the_flag(gpt2_files, tmp_path):
    vocab_file, merge_file = gpt2_files
    no_eod = tmp_path / "vocab.json"
    vocab = json.load(open(vocab_file, encoding="utf-8"))
    del vocab[GPT2_EOD]
    no_eod.write_text(json.dumps(vocab))
    cases = [
        (dict(merge_file=merge_file), "--vocab-file: required"),
        (dict(vocab_file=vocab_file), "--merge-file: required"),
        (dict(vocab_file=str(tmp_path / "nope.json"), merge_file=merge_file),
         "--vocab-file: .* does not exist"),
        (dict(vocab_file=str(no_eod), merge_file=merge_file), "--vocab-file: .* has no <|endoftext|>"),
        (dict(vocab_file=merge_file, merge_file=merge_file), "--vocab-file: .* not a JSON"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(DataArgumentError, match=pattern) as error:
            build_tokenizer("GPT2BPETokenizer", **kwargs)
        assert "\n" not in str(error.value)


def test_llama2_tokenizer_is_megatron_cores_sentencepiece_and_legacy_prepends_bos(sentencepiece_model):
    plain = build_tokenizer("SentencePieceTokenizer", sentencepiece_model)
    llama = build_tokenizer("Llama2Tokenizer", sentencepiece_model)
    legacy = build_tokenizer("Llama2Tokenizer", sentencepiece_model, legacy_tokenizer=True)
    ids = plain.tokenize(TRICKY)
    assert llama.tokenize(TRICKY) == ids  # Megatron-LM 0.16.1's default (megatron-core) path
    assert legacy.tokenize(TRICKY) == [plain.bos] + ids  # its legacy _Llama2Tokenizer
    assert (llama.eod, llama.vocab_size, llama.bos) == (plain.eod, plain.vocab_size, 1)
    with pytest.raises(DataArgumentError, match="^--legacy-tokenizer: not supported"):
        build_tokenizer("SentencePieceTokenizer", sentencepiece_model, legacy_tokenizer=True)


@pytest.fixture(scope="module")
def tiktoken_vocab(tmp_path_factory):
    pytest.importorskip("tiktoken")
    return write_tiktoken_vocab(tmp_path_factory.mktemp("tiktoken") / "vocab.json", WORDS)


def test_tiktokenizer_is_megatron_cores_with_megatron_lms_flags(tiktoken_vocab):
    path, ranked = tiktoken_vocab
    vocab_size = 16 + ranked
    tokenizer = build_tokenizer("TikTokenizer", path, vocab_size, tiktoken_pattern="v2",
                                tiktoken_num_special_tokens=16)
    # megatron-core's TikTokenTokenizer: special tokens first (<unk> <s> </s> <mask> <pad> ...),
    # then the ranked tokens shifted by --tiktoken-num-special-tokens; eod = </s>.
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.bos, tokenizer.pad) == (vocab_size, 2, 1, 4)
    ids = tokenizer.tokenize("the model reads")
    assert len(ids) == 3 and min(ids) >= 16 + 256  # whole words are ranked tokens
    assert tokenizer.detokenize(tokenizer.tokenize(TRICKY)) == TRICKY
    v1 = build_tokenizer("TikTokenizer", path, vocab_size, tiktoken_pattern="v1",
                         tiktoken_num_special_tokens=16)
    assert v1.tokenize("the model reads") == ids


def test_tiktokenizer_bad_arguments_are_one_line(tiktoken_vocab):
    path, ranked = tiktoken_vocab
    with pytest.raises(DataArgumentError, match="^--tiktoken-pattern: 'v3'"):
        build_tokenizer("TikTokenizer", path, 16 + ranked, tiktoken_pattern="v3",
                        tiktoken_num_special_tokens=16)
    # The default --vocab-size (131072) needs far more ranked tokens than the file holds.
    with pytest.raises(DataArgumentError, match="^--tokenizer-model: cannot build TikTokenizer") as e:
        build_tokenizer("TikTokenizer", path, tiktoken_num_special_tokens=16)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("hub_id", ["gpt2", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B"])
def test_a_hub_id_is_refused_in_one_line_asking_for_a_local_directory(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    with pytest.raises(DataArgumentError) as error:
        build_tokenizer("HuggingFaceTokenizer", hub_id)
    message = str(error.value)
    assert message.startswith(f"--tokenizer-model: {hub_id!r} is not a local path")
    assert "local directory" in message and "\n" not in message


def test_gpt2_bpe_exports_as_a_hugging_face_tokenizer_with_the_same_ids(gpt2_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    from megatron_nitp.convert.hf_tokenizer import build_run_tokenizer, export_tokenizer

    vocab_file, merge_file = gpt2_files
    run_config = {"args": {"tokenizer_type": "GPT2BPETokenizer", "vocab_size": 300,
                           "vocab_file": vocab_file, "merge_file": merge_file}}
    tokenizer = build_run_tokenizer(run_config)  # what tools/convert_checkpoint.py rebuilds
    written, warning = export_tokenizer(tokenizer, str(tmp_path / "hf"))
    assert warning is None and len(written) == 4
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert hf.encode(TRICKY, add_special_tokens=False) == tokenizer.tokenize(TRICKY)
    assert hf.eos_token_id == tokenizer.eod == 299
