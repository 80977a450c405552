"""Ready-to-train demo data with no network: corpus → SentencePiece tokenizer → indexed dataset.

`prepare_demo_data()` runs the three steps of the normal data pipeline on the embedded corpus
(megatron_nitp.data.demo_corpus), each cached in the cache directory: a step whose output exists
is skipped, and every output is written atomically, so an interrupted preparation simply resumes.
A file lock makes concurrent callers (several ranks, several runs) wait for one preparation.

    python -m megatron_nitp.data.demo      # prints the --data-path and --tokenizer-model to use
"""

import fcntl
import os
import time
from typing import Optional, Tuple

from megatron_nitp.data.demo_corpus import build_demo_corpus
from megatron_nitp.data.index_check import is_consistent
from megatron_nitp.data.preprocess import document_prefix, preprocess_jsonl
from megatron_nitp.data.tokenizer_training import train_tokenizer


def default_cache_dir() -> str:
    """`$MEGATRON_NITP_CACHE`, else ~/.cache/megatron_nitp/demo."""
    return os.environ.get("MEGATRON_NITP_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "megatron_nitp", "demo"
    )


def prepare_demo_data(
    cache_dir: Optional[str] = None,
    vocab_size: int = 4096,
    max_docs: Optional[int] = None,
    workers: int = 2,
    log=print,
) -> Tuple[str, str]:
    """Build (or find cached) demo data; return (data_prefix, tokenizer_model_path).

    Use them as `--data-path DATA_PREFIX --tokenizer-type SentencePieceTokenizer
    --tokenizer-model TOKENIZER_MODEL_PATH`. `max_docs` caps the corpus (for quick tests); it is
    part of the cached file names, as is `vocab_size`.
    """
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    tag = "" if max_docs is None else f"_{max_docs}docs"
    corpus = os.path.join(cache_dir, f"corpus{tag}.jsonl")
    tokenizer_prefix = os.path.join(cache_dir, f"tokenizer{tag}_v{vocab_size}")
    tokenizer_model = tokenizer_prefix + ".model"
    data_prefix = document_prefix(os.path.join(cache_dir, f"demo{tag}_v{vocab_size}"), "text")

    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes

        def step(number: int, what: str, outputs, run, usable=lambda: True) -> None:
            if all(os.path.exists(path) for path in outputs) and usable():
                log(f"demo data [{number}/3] {what}: cached {outputs[0]}")
                return
            log(f"demo data [{number}/3] {what} ...")
            start = time.time()
            detail = run()
            log(f"demo data [{number}/3] {what}: {detail} in {time.time() - start:.1f} s")

        def corpus_step():
            stats = build_demo_corpus(corpus, max_docs=max_docs)
            return f"{stats.documents} documents, {stats.characters / 1e6:.1f} M characters"

        def tokenizer_step():
            return train_tokenizer(corpus, "sentencepiece", vocab_size, tokenizer_prefix)

        def data_step():
            report = preprocess_jsonl(
                corpus,
                data_prefix[: -len("_text_document")],
                "SentencePieceTokenizer",
                tokenizer_model,
                append_eod=True,
                workers=workers,
                overwrite=True,  # only reached when the pair is incomplete
                progress=False,
            )
            return f"{report.documents} documents, {report.tokens['text']} tokens"

        step(1, "corpus", [corpus], corpus_step)
        step(2, f"SentencePiece tokenizer ({vocab_size})", [tokenizer_model], tokenizer_step)
        # A truncated or mismatched cached pair (a full disk, a copy cut short) is rebuilt.
        step(3, "indexed dataset", [data_prefix + ".bin", data_prefix + ".idx"], data_step,
             usable=lambda: is_consistent(data_prefix))
    return data_prefix, tokenizer_model


if __name__ == "__main__":
    prefix, model = prepare_demo_data()
    print(f"--data-path {prefix} --tokenizer-type SentencePieceTokenizer --tokenizer-model {model}")
