"""Training a tokenizer on a JSONL corpus: SentencePiece (`.model`) or byte-level BPE (`.json`).

Both are deterministic for a given corpus (no sampling of the input, fixed seed) and written
atomically. Their special tokens match what `build_tokenizer` looks for:
- SentencePiece: unk=0, bos=1, eos=2 (the end-of-document token), pad=3, byte fallback so that
  no text is ever unknown, and identity normalisation so that detokenize(tokenize(x)) == x;
- byte-level BPE (Hugging Face `tokenizers`, GPT-2 style): `<|endoftext|>`=0 (end of document),
  `<|pad|>`=1, the 256 byte symbols, then merges.
"""

import io
import itertools
import os
from typing import Iterable, Iterator

from megatron_nitp.data.errors import DataArgumentError, ensure_output_directory
from megatron_nitp.data.jsonl import iter_texts

TOKENIZER_KINDS = ("sentencepiece", "hf-bpe")
EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# SentencePiece skips longer training sentences; long lines are cut at whitespace below it.
_SENTENCEPIECE_MAX_BYTES = 4192
_MIN_VOCAB = {"sentencepiece": 256 + 4, "hf-bpe": 256 + 2}  # bytes + special tokens


def train_tokenizer(
    input_path: str, kind: str, vocab_size: int, output_prefix: str, json_key: str = "text"
) -> str:
    """Train a tokenizer on the `json_key` texts of a JSONL file; return the written path.

    `kind` "sentencepiece" writes `output_prefix.model`, "hf-bpe" writes `output_prefix.json`.
    Bad lines of the input are skipped (see megatron_nitp.data.jsonl).
    """
    if kind not in TOKENIZER_KINDS:
        raise DataArgumentError(f"--type: unknown {kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
    if vocab_size < _MIN_VOCAB[kind]:
        raise DataArgumentError(
            f"--vocab-size: {vocab_size} is too small for {kind} (at least {_MIN_VOCAB[kind]}: "
            "256 byte symbols plus the special tokens)"
        )
    if not os.path.isfile(input_path):
        raise DataArgumentError(f"--input: {input_path!r} does not exist (expected a JSONL file)")
    texts = iter_texts(input_path, json_key)
    first = next(texts, None)
    if first is None:
        raise DataArgumentError(
            f"--input: {input_path!r} has no record with non-empty text under --json-key {json_key!r}"
        )
    texts = itertools.chain([first], texts)
    ensure_output_directory(output_prefix)
    if kind == "sentencepiece":
        return train_sentencepiece(texts, vocab_size, output_prefix + ".model")
    return train_hf_bpe(texts, vocab_size, output_prefix + ".json")


def train_sentencepiece(texts: Iterable[str], vocab_size: int, output_path: str) -> str:
    """Train a SentencePiece BPE model on `texts`; write it atomically to `output_path`."""
    import sentencepiece

    # Seeds the trainer's own sampling; with the whole input used, it only fixes tie-breaking.
    sentencepiece.set_random_generator_seed(1234)
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(texts),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            byte_fallback=True,
            character_coverage=0.9995,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            input_sentence_size=0,  # use every line: sampling would make the model input-order dependent
            shuffle_input_sentence=False,
            max_sentence_length=_SENTENCEPIECE_MAX_BYTES,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        # The message ends with e.g. "Vocabulary size too high (8000). Please set it to a value
        # <= 1523." after the C++ source location, which means nothing to the user.
        reason = str(error).rsplit("] ", 1)[-1]
        raise DataArgumentError(f"--vocab-size: SentencePiece training failed: {reason}") from None
    _write_atomically(output_path, model.getvalue())
    return output_path


def train_hf_bpe(texts: Iterable[str], vocab_size: int, output_path: str) -> str:
    """Train a GPT-2 style byte-level BPE on `texts`; write its tokenizer.json to `output_path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD_TOKEN, PAD_TOKEN],
        # All 256 bytes from the start, so that any text can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _write_atomically(output_path, tokenizer.to_str(pretty=True).encode("utf-8"))
    return output_path


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Lines of every text, cut at whitespace so that SentencePiece keeps all of them."""
    limit = _SENTENCEPIECE_MAX_BYTES // 4  # a character takes at most 4 UTF-8 bytes
    for text in texts:
        for line in text.splitlines():
            while len(line) > limit:
                cut = line.rfind(" ", 0, limit)
                cut = cut if cut > 0 else limit
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.partial-{os.getpid()}"
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
