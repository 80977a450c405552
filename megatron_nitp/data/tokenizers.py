"""Tokenizers for preprocessing and training, built from the Megatron-LM flags.

`build_tokenizer(tokenizer_type, tokenizer_model, vocab_size, **tokenizer_options(args))` returns
an object with the interface megatron-core's datasets read (`GPTDatasetConfig.tokenizer`:
`vocab_size`, `eod`, `pad`, `unique_identifiers`; see megatron/core/datasets/megatron_tokenizer.py)
plus `bos`,
`tokenize`/`detokenize` and `save_to(dir)`, which copies the tokenizer files next to an exported
checkpoint. We do not subclass megatron-core's `MegatronLegacyTokenizer`: it only adds a
deprecation warning on every construction. Types: Megatron-LM 0.16.1's NullTokenizer,
(GPT)SentencePieceTokenizer, Llama2Tokenizer, GPT2BPETokenizer, TikTokenizer (megatron-core's
class) and HuggingFaceTokenizer (local files only), with their ids and end-of-document tokens.

`pad` follows megatron-core's convention: -1 means "no pad token" (`MegatronDataset` then pads
with -1, an id that never occurs in data, and masks those positions out of the loss).
"""

import json
import os
import re
import shutil
from collections import OrderedDict
from typing import Iterable, List, Optional

from megatron_nitp.data.errors import DataArgumentError

TOKENIZER_TYPES = ("NullTokenizer", "SentencePieceTokenizer", "HuggingFaceTokenizer",
                   "GPT2BPETokenizer", "Llama2Tokenizer", "TikTokenizer")
# Megatron-LM names accepted for the same classes.
_ALIASES = {"GPTSentencePieceTokenizer": "SentencePieceTokenizer"}
# Megatron-LM's tokenizer flags beyond --tokenizer-type/--tokenizer-model/--vocab-size, by dest
# (training/arguments.py, tools/preprocess_data.py); `tokenizer_options` reads them.
OPTION_NAMES = ("vocab_file", "merge_file", "tiktoken_pattern", "tiktoken_num_special_tokens",
                "tokenizer_special_tokens", "legacy_tokenizer")

NO_PAD = -1  # megatron-core's _PAD_TOKEN_ID: "no pad token"


class NitpTokenizer:
    """What every tokenizer here provides; the subclasses fill it in."""

    tokenizer_type: str
    tokenizer_model: Optional[str]
    vocab_size: int
    eod: int
    pad: int = NO_PAD
    bos: Optional[int] = None

    @property
    def eos(self) -> int:
        """Megatron uses the end-of-document token as the end-of-sequence token."""
        return self.eod

    @property
    def unique_identifiers(self) -> OrderedDict:
        """Keys megatron-core hashes into its dataset cache names (must be JSON-serialisable)."""
        return OrderedDict(
            [
                ("class", type(self).__name__),
                ("tokenizer_path", self._files()),
                ("vocab_size", self.vocab_size),
            ]
        )

    def _files(self) -> List[str]:
        return [self.tokenizer_model] if self.tokenizer_model else []

    def tokenize(self, text: str) -> List[int]:
        raise NotImplementedError

    def detokenize(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save_to(self, directory: str) -> List[str]:
        """Copy the files that rebuild this tokenizer into `directory`; return their paths."""
        raise NotImplementedError


class NullTokenizer(NitpTokenizer):
    """Text is whitespace-separated integer ids (benchmarks, synthetic data).

    Like Megatron-LM's `_NullTokenizer`: with `--vocab-size V`, ids 0..V-1 are data, the
    end-of-document id is V and the tokenizer's `vocab_size` is V + 1 (so `eod == vocab_size - 1`).
    """

    tokenizer_type = "NullTokenizer"
    tokenizer_model = None

    def __init__(self, vocab_size: int) -> None:
        self._data_vocab_size = int(vocab_size)
        self.vocab_size = self._data_vocab_size + 1
        self.eod = self._data_vocab_size

    def tokenize(self, text: str) -> List[int]:
        ids = [int(token) for token in text.split()]
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"id {token_id} is outside [0, {self.vocab_size})")
        return ids

    def detokenize(self, ids: Iterable[int]) -> str:
        return " ".join(str(int(token_id)) for token_id in ids)

    def save_to(self, directory: str) -> List[str]:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "null_tokenizer.json")
        with open(path, "w") as stream:
            json.dump({"tokenizer_type": self.tokenizer_type, "vocab_size": self._data_vocab_size}, stream)
        return [path]


class SentencePieceTokenizer(NitpTokenizer):
    """A SentencePiece `.model`; the end-of-document token is its eos piece.

    Same ids as Megatron-LM's `GPTSentencePieceTokenizer` (no extra special tokens are appended).
    """

    tokenizer_type = "SentencePieceTokenizer"

    def __init__(self, model_path: str) -> None:
        import sentencepiece

        _require_file(model_path, "a SentencePiece .model file")
        try:
            self._processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
        except (OSError, RuntimeError) as error:
            raise DataArgumentError(
                f"--tokenizer-model: cannot load {model_path!r} as a SentencePiece model ({error})"
            ) from None
        self.tokenizer_model = os.path.abspath(model_path)
        self.vocab_size = self._processor.vocab_size()
        self.eod = self._processor.eos_id()
        if self.eod < 0:
            raise DataArgumentError(
                f"--tokenizer-model: SentencePiece model {model_path!r} has no eos piece to use as "
                "the end-of-document token (train it with eos_id >= 0, e.g. tools/train_tokenizer.py)"
            )
        self.pad = self._processor.pad_id()  # -1 when the model defines none, as megatron expects
        bos = self._processor.bos_id()
        self.bos = bos if bos >= 0 else None

    def tokenize(self, text: str) -> List[int]:
        return self._processor.encode(text)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self._processor.decode([int(token_id) for token_id in ids])

    def save_to(self, directory: str) -> List[str]:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "tokenizer.model")
        shutil.copyfile(self.tokenizer_model, path)
        return [path]


class Llama2Tokenizer(SentencePieceTokenizer):
    """Megatron-LM's Llama2Tokenizer: a SentencePiece model whose eos piece ends a document.

    Megatron-LM 0.16.1 builds it with megatron-core's SentencePiece tokenizer (no BOS added:
    the same ids as SentencePieceTokenizer); with --legacy-tokenizer, with its legacy
    `_Llama2Tokenizer`, which starts every tokenised text with the model's BOS id.
    """

    tokenizer_type = "Llama2Tokenizer"

    def __init__(self, model_path: str, legacy: bool = False) -> None:
        super().__init__(model_path)
        self._prepend_bos = bool(legacy)
        if self._prepend_bos and self.bos is None:
            raise DataArgumentError(
                f"--legacy-tokenizer: Llama2Tokenizer prepends BOS, but {model_path!r} has no "
                "bos piece (train it with bos_id >= 0)"
            )

    def tokenize(self, text: str) -> List[int]:
        ids = super().tokenize(text)
        return [self.bos] + ids if self._prepend_bos else ids


GPT2_EOD = "<|endoftext|>"


class GPT2BPETokenizer(NitpTokenizer):
    """GPT-2's byte-level BPE from a local `--vocab-file` (vocab.json) and `--merge-file`
    (merges.txt), as Megatron-LM's GPT2BPETokenizer: vocabulary size = the number of vocab.json
    entries, end of document = `<|endoftext|>`, no prefix space, nothing added to the text.

    Built with the `tokenizers` library (the byte-level BPE that Hugging Face's GPT-2 tokenizer
    is). megatron-core 0.16.1's own GPT2BPETokenizer (`MegatronHFTokenizer`) resolves the
    tokenizer through the hub name "gpt2", which needs network access.
    """

    tokenizer_type = "GPT2BPETokenizer"
    tokenizer_model = None

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        _require_file(vocab_file, "GPT-2's vocab.json", flag="--vocab-file")
        _require_file(merge_file, "GPT-2's merges.txt", flag="--merge-file")
        try:
            with open(vocab_file, encoding="utf-8") as stream:
                vocab = json.load(stream)
        except (ValueError, UnicodeDecodeError) as error:
            raise DataArgumentError(
                f"--vocab-file: {vocab_file!r} is not a JSON vocabulary ({_first_line(error)})"
            ) from None
        if not isinstance(vocab, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()
        ):
            raise DataArgumentError(
                f"--vocab-file: {vocab_file!r} must map tokens to non-negative integer ids "
                "(GPT-2's vocab.json)"
            )
        if GPT2_EOD not in vocab:
            raise DataArgumentError(
                f"--vocab-file: {vocab_file!r} has no {GPT2_EOD} token (GPT2BPETokenizer's "
                "end-of-document token, as in Megatron-LM)"
            )
        if len(set(vocab.values())) != len(vocab) or max(vocab.values()) >= len(vocab):
            raise DataArgumentError(
                f"--vocab-file: {vocab_file!r}: ids must be 0..{len(vocab) - 1}, each once"
            )
        try:
            model = models.BPE.from_file(vocab_file, merge_file)
        except Exception as error:  # the Rust binding raises a bare Exception
            raise DataArgumentError(
                f"--merge-file: cannot read {merge_file!r} as GPT-2 BPE merges for "
                f"{vocab_file!r} ({_first_line(error)})"
            ) from None
        self._tokenizer = Tokenizer(model)
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tokenizer.decoder = decoders.ByteLevel()
        self.vocab_file, self.merge_file = os.path.abspath(vocab_file), os.path.abspath(merge_file)
        self.vocab_size = len(vocab)
        self.eod = vocab[GPT2_EOD]

    def _files(self) -> List[str]:
        return [self.vocab_file, self.merge_file]

    def tokenize(self, text: str) -> List[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save_to(self, directory: str) -> List[str]:
        os.makedirs(directory, exist_ok=True)
        written = [os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")]
        shutil.copyfile(self.vocab_file, written[0])
        shutil.copyfile(self.merge_file, written[1])
        return written


class TikTokenizer(NitpTokenizer):
    """Megatron-LM's TikTokenizer: megatron-core's `TikTokenTokenizer` over a local tiktoken
    vocabulary JSON (`--tokenizer-model`), with Megatron-LM's flags: `--tiktoken-pattern` (v1 or
    v2; megatron-core's default v2), `--tiktoken-num-special-tokens` (1000),
    `--tokenizer-special-tokens` and `--vocab-size` (the whole vocabulary, special tokens
    included; default 131072). End of document = `</s>`.
    """

    tokenizer_type = "TikTokenizer"

    def __init__(self, path: str, pattern: Optional[str] = None, vocab_size: Optional[int] = None,
                 num_special_tokens: int = 1000, special_tokens: Optional[List[str]] = None):
        try:
            import tiktoken  # noqa: F401  (megatron-core imports it only if present)
        except ImportError:
            raise DataArgumentError(
                "--tokenizer-type TikTokenizer: needs the `tiktoken` package (pip install tiktoken)"
            ) from None
        from megatron.core.tokenizers.text.libraries import TikTokenTokenizer

        _require_file(path, "a tiktoken vocabulary .json file")
        if pattern not in (None, "v1", "v2"):
            raise DataArgumentError(f"--tiktoken-pattern: {pattern!r}; valid: v1, v2")
        kwargs = dict(special_tokens=special_tokens, num_special_tokens=num_special_tokens)
        if pattern:
            kwargs["pattern"] = pattern
        if vocab_size:
            kwargs["vocab_size"] = vocab_size
        try:
            self._tokenizer = TikTokenTokenizer(path, **kwargs)
        except (AssertionError, ValueError, KeyError, TypeError) as error:
            raise DataArgumentError(
                f"--tokenizer-model: cannot build TikTokenizer from {path!r} with --vocab-size "
                f"{vocab_size or 'default 131072'} and --tiktoken-num-special-tokens "
                f"{num_special_tokens} ({type(error).__name__}: {_first_line(error)}; the file "
                "must hold at least vocab-size minus num-special-tokens ranked tokens, and the "
                "special tokens must include <unk> <s> </s> <mask> <pad> <cls> <sep>)"
            ) from None
        self.tokenizer_model = os.path.abspath(path)
        self.vocab_size = self._tokenizer.vocab_size
        self.eod = self._tokenizer.eod
        self.bos = self._tokenizer.bos_id
        self.pad = self._tokenizer.pad_id

    def tokenize(self, text: str) -> List[int]:
        return self._tokenizer.text_to_ids(text)

    def detokenize(self, ids: Iterable[int]) -> str:
        # tiktoken's own decode: megatron-core's ids_to_text joins per-token strings, which
        # garbles a character whose bytes span two tokens.
        return self._tokenizer.tokenizer.decode([int(i) for i in ids])

    def save_to(self, directory: str) -> List[str]:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, os.path.basename(self.tokenizer_model))
        shutil.copyfile(self.tokenizer_model, path)
        return [path]


# Special tokens looked up by name when the tokenizer files do not declare them.
_EOD_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
_PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")
_BOS_NAMES = ("<|begin_of_text|>", "<|startoftext|>", "<s>", "<bos>")
# What a hub id looks like ("gpt2", "meta-llama/Llama-3.1-8B"): no path separator beyond one "/".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Files that make up a Hugging Face tokenizer directory (copied by save_to).
_HF_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


class HuggingFaceTokenizer(NitpTokenizer):
    """A local Hugging Face tokenizer: a `tokenizer.json` file, or a directory of tokenizer files.

    A directory with a `tokenizer_config.json` is loaded with
    `transformers.AutoTokenizer.from_pretrained(dir, local_files_only=True)` (which reads its
    declared special tokens); a bare `tokenizer.json` with the `tokenizers` library. Nothing is
    ever downloaded. Text is encoded without added special tokens (no automatic BOS), as GPT
    pretraining data expects.
    """

    tokenizer_type = "HuggingFaceTokenizer"

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            if _HUB_ID.fullmatch(path) and not path.endswith((".json", ".model", ".txt")):
                raise DataArgumentError(
                    f"--tokenizer-model: {path!r} is not a local path (a Hugging Face hub id?); "
                    "megatron-nitp downloads nothing: give a local directory of tokenizer files "
                    "(e.g. one saved with `save_pretrained`)"
                )
            raise DataArgumentError(
                f"--tokenizer-model: {path!r} does not exist (expected a tokenizer.json file or a "
                "local directory of Hugging Face tokenizer files)"
            )
        self.tokenizer_model = os.path.abspath(path)
        self._auto = None
        self._fast = None
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            self._load_auto(path)
        else:
            file_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
            self._load_file(file_path, path)
        vocab = self._vocab()
        # Ids are not always contiguous: size the vocabulary by the largest id.
        self.vocab_size = max(max(vocab.values(), default=-1) + 1, len(vocab))
        self.eod = self._declared("eos_token_id")
        if self.eod is None:
            self.eod = _first_present(vocab, _EOD_NAMES)
        if self.eod is None:
            raise DataArgumentError(
                f"--tokenizer-model: tokenizer {path!r} has no end-of-document token (looked for "
                f"a declared eos token and for {', '.join(_EOD_NAMES)})"
            )
        pad = self._declared("pad_token_id")
        if pad is None:
            pad = _first_present(vocab, _PAD_NAMES)
        # A pad equal to eod would mask every document end out of the loss: report no pad instead.
        self.pad = pad if pad is not None and pad != self.eod else NO_PAD
        bos = self._declared("bos_token_id")
        self.bos = bos if bos is not None else _first_present(vocab, _BOS_NAMES)

    def _load_auto(self, directory: str) -> None:
        try:
            import transformers
        except ImportError:
            if os.path.isfile(os.path.join(directory, "tokenizer.json")):
                return self._load_file(os.path.join(directory, "tokenizer.json"), directory)
            raise DataArgumentError(
                f"--tokenizer-model: loading the tokenizer directory {directory!r} needs the "
                "`transformers` package (pip install transformers), or give its tokenizer.json"
            ) from None
        try:
            self._auto = transformers.AutoTokenizer.from_pretrained(
                directory, local_files_only=True
            )
        except Exception as error:  # transformers raises many types for unreadable files
            raise DataArgumentError(
                f"--tokenizer-model: cannot load {directory!r} as a Hugging Face tokenizer "
                f"directory ({type(error).__name__}: {_first_line(error)})"
            ) from None

    def _load_file(self, file_path: str, given: str) -> None:
        import tokenizers

        if not os.path.isfile(file_path):
            raise DataArgumentError(
                f"--tokenizer-model: {given!r} has neither tokenizer.json nor tokenizer_config.json"
            )
        try:
            self._fast = tokenizers.Tokenizer.from_file(file_path)
        except Exception as error:  # the Rust binding raises a bare Exception
            raise DataArgumentError(
                f"--tokenizer-model: cannot load {file_path!r} as a Hugging Face tokenizer.json "
                f"({_first_line(error)})"
            ) from None

    def _vocab(self) -> dict:
        if self._auto is not None:
            return self._auto.get_vocab()
        return self._fast.get_vocab(with_added_tokens=True)

    def _declared(self, attribute: str) -> Optional[int]:
        return getattr(self._auto, attribute, None) if self._auto is not None else None

    def tokenize(self, text: str) -> List[int]:
        if self._auto is not None:
            return self._auto.encode(text, add_special_tokens=False)
        return self._fast.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Iterable[int]) -> str:
        ids = [int(token_id) for token_id in ids]
        if self._auto is not None:
            return self._auto.decode(ids)
        return self._fast.decode(ids, skip_special_tokens=False)

    def save_to(self, directory: str) -> List[str]:
        os.makedirs(directory, exist_ok=True)
        if os.path.isfile(self.tokenizer_model):
            sources = [(self.tokenizer_model, "tokenizer.json")]
        else:
            sources = [
                (os.path.join(self.tokenizer_model, name), name)
                for name in _HF_FILES
                if os.path.isfile(os.path.join(self.tokenizer_model, name))
            ]
        written = []
        for source, name in sources:
            written.append(os.path.join(directory, name))
            shutil.copyfile(source, written[-1])
        return written


def tokenizer_options(args) -> dict:
    """Megatron-LM's extra tokenizer flags from an argparse Namespace or a saved args dict."""
    values = args if isinstance(args, dict) else vars(args)
    return {name: values[name] for name in OPTION_NAMES if values.get(name) is not None}


def build_tokenizer(
    tokenizer_type: str,
    tokenizer_model: Optional[str] = None,
    vocab_size: Optional[int] = None,
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
    tiktoken_pattern: Optional[str] = None,
    tiktoken_num_special_tokens: int = 1000,
    tokenizer_special_tokens: Optional[List[str]] = None,
    legacy_tokenizer: bool = False,
) -> NitpTokenizer:
    """Build a tokenizer from Megatron-LM's tokenizer flags (`--tokenizer-type`,
    `--tokenizer-model`, `--vocab-size`, `--vocab-file`, `--merge-file`, `--tiktoken-*`,
    `--tokenizer-special-tokens`, `--legacy-tokenizer`).

    Raises DataArgumentError (one line naming the flag) for an unknown type, a missing flag or a
    missing/unreadable tokenizer file.
    """
    tokenizer_type = _ALIASES.get(tokenizer_type, tokenizer_type)
    if tokenizer_type not in TOKENIZER_TYPES:
        raise DataArgumentError(
            f"--tokenizer-type: unknown {tokenizer_type!r}; valid: {', '.join(TOKENIZER_TYPES)}"
        )
    if legacy_tokenizer and tokenizer_type in ("SentencePieceTokenizer", "HuggingFaceTokenizer",
                                               "TikTokenizer"):
        raise DataArgumentError(
            f"--legacy-tokenizer: not supported with --tokenizer-type {tokenizer_type} (Megatron-"
            "LM's legacy class gives other ids); drop the flag to use megatron-core's tokenizer"
        )
    if tokenizer_type == "NullTokenizer":
        if vocab_size is None or int(vocab_size) <= 0:
            raise DataArgumentError(
                "--vocab-size: NullTokenizer needs a positive vocabulary size (ids are 0..N-1, "
                "end-of-document is N)"
            )
        return NullTokenizer(vocab_size)
    if tokenizer_type == "GPT2BPETokenizer":
        for flag, value in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
            if not value:
                raise DataArgumentError(
                    f"{flag}: required by --tokenizer-type GPT2BPETokenizer (GPT-2's vocab.json "
                    "and merges.txt, local files)"
                )
        return GPT2BPETokenizer(vocab_file, merge_file)
    if not tokenizer_model:
        raise DataArgumentError(
            f"--tokenizer-model: required by --tokenizer-type {tokenizer_type} (a path to the "
            f"tokenizer file{'s' if tokenizer_type == 'HuggingFaceTokenizer' else ''})"
        )
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "Llama2Tokenizer":
        return Llama2Tokenizer(tokenizer_model, legacy=legacy_tokenizer)
    if tokenizer_type == "TikTokenizer":
        return TikTokenizer(tokenizer_model, tiktoken_pattern, vocab_size,
                            tiktoken_num_special_tokens, tokenizer_special_tokens)
    return HuggingFaceTokenizer(tokenizer_model)


def _require_file(path: str, what: str, flag: str = "--tokenizer-model") -> None:
    if not os.path.isfile(path):
        reason = "is a directory" if os.path.isdir(path) else "does not exist"
        raise DataArgumentError(f"{flag}: {path!r} {reason} (expected {what})")
    if not os.access(path, os.R_OK):
        raise DataArgumentError(f"{flag}: {path!r} is not readable (expected {what})")


def _first_present(vocab: dict, names: Iterable[str]) -> Optional[int]:
    for name in names:
        if name in vocab:
            return vocab[name]
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
