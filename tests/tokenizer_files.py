"""Real tokenizer files built in the tests (no hub downloads): GPT-2 vocab.json/merges.txt and a
tiktoken vocabulary JSON, small but in the formats Megatron-LM reads."""

import base64
import json
from pathlib import Path
from typing import Iterable, List, Tuple

GPT2_EOD = "<|endoftext|>"


def write_gpt2_bpe_files(texts: Iterable[str], directory, vocab_size: int = 300) -> Tuple[str, str]:
    """Train a byte-level BPE (GPT-2's algorithm, `tokenizers`) and write GPT-2's two files.

    As in GPT-2's own vocab.json, `<|endoftext|>` is the last id, after the merges.
    """
    from tokenizers import ByteLevelBPETokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size - 1, min_frequency=1,
                            show_progress=False)
    vocab_file, merge_file = bpe.save_model(str(directory))
    vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
    vocab[GPT2_EOD] = len(vocab)
    Path(vocab_file).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return vocab_file, merge_file


def write_tiktoken_vocab(path, words: Iterable[str]) -> Tuple[str, int]:
    """A tiktoken vocabulary JSON in megatron-core's format (`reload_mergeable_ranks`): the 256
    bytes, then every prefix (length >= 2) of each word, with a leading space as GPT-style
    vocabularies have. Returns (path, number of ranked tokens)."""
    ranked: List[bytes] = [bytes([i]) for i in range(256)]
    seen = set(ranked)
    for word in words:
        for piece in (word.encode(), b" " + word.encode()):
            for end in range(2, len(piece) + 1):
                if piece[:end] not in seen:
                    seen.add(piece[:end])
                    ranked.append(piece[:end])
    entries = [{"rank": i, "token_bytes": base64.b64encode(b).decode(),
                "token_str": b.decode("utf-8", errors="replace")} for i, b in enumerate(ranked)]
    Path(path).write_text(json.dumps(entries))
    return str(path), len(ranked)
