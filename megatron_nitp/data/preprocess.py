"""JSONL → megatron indexed datasets (`PREFIX_{key}_document.bin/.idx`), like Megatron-LM's
tools/preprocess_data.py, made robust for long unattended runs:

- bad lines (invalid UTF-8 or JSON, a missing key, empty text, text the tokenizer rejects) are
  counted, reported and skipped, never fatal;
- every input check happens before any work (errors name the flag, see DataArgumentError);
- outputs are written under temporary names in the output directory and renamed into place only
  once every key is complete, so an interrupted or crashed run leaves no `.bin/.idx` pair behind.

Tokenisation runs in a multiprocessing pool over chunks of lines, results kept in input order;
the main process reads bytes and appends documents with megatron-core's `IndexedDatasetBuilder`.
"""

import collections
import glob
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import Pool
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy

from megatron_nitp.data import jsonl
from megatron_nitp.data.errors import DataArgumentError, ensure_output_directory
from megatron_nitp.data.tokenizers import build_tokenizer
from megatron_nitp.processes import process_alive

TOKENIZER_ERROR = "tokenizer error"
SUMMARY_KINDS = (*jsonl.BAD_KINDS, TOKENIZER_ERROR)
_CHUNK_LINES = 64  # lines per pool task: amortises pickling without starving workers
_EXAMPLES_PER_KIND = 3  # bad lines quoted in the summary


def document_prefix(output_prefix: str, json_key: str) -> str:
    """Megatron-LM's naming: one indexed dataset per JSON key."""
    return f"{output_prefix}_{json_key}_document"


@dataclass
class PreprocessReport:
    """What a run did: documents written, each bad kind with its first line numbers, tokens."""

    input_path: str
    prefixes: Dict[str, str]
    counts: collections.Counter = field(default_factory=collections.Counter)
    examples: Dict[str, List[Tuple[int, str]]] = field(default_factory=dict)
    tokens: Dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def documents(self) -> int:
        return self.counts[jsonl.OK]

    def format_summary(self) -> str:
        rate = self.bytes_read / 1e6 / max(self.seconds, 1e-9)
        lines = [
            f"preprocessed {self.input_path} in {self.seconds:.1f} s "
            f"({self.bytes_read / 1e6:.1f} MB, {rate:.1f} MB/s)",
            f"  {'documents written':<26} {self.documents:>10}",
        ]
        for kind in SUMMARY_KINDS:
            examples = self.examples.get(kind, [])
            where = "; ".join(f"line {number}: {detail}" for number, detail in examples)
            suffix = f"   e.g. {where}" if where else ""
            lines.append(f"  {'skipped, ' + kind:<26} {self.counts[kind]:>10}{suffix}")
        for key, prefix in self.prefixes.items():
            lines.append(f"  {'tokens, ' + key:<26} {self.tokens.get(key, 0):>10}   {prefix}.bin/.idx")
        return "\n".join(lines)


def preprocess_jsonl(
    input_path: str,
    output_prefix: str,
    tokenizer_type: str,
    tokenizer_model: Optional[str] = None,
    vocab_size: Optional[int] = None,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer_options: Optional[dict] = None,
) -> PreprocessReport:
    """Tokenise the `json_keys` texts of a JSONL file into `{output_prefix}_{key}_document`.

    `tokenizer_options`: Megatron-LM's other tokenizer flags (`tokenizers.tokenizer_options`:
    --vocab-file, --merge-file, --tiktoken-*, ...), as the training run gets them.

    Raises DataArgumentError before any work for bad arguments, and after the run (with nothing
    written) if the input held no valid document.
    """
    json_keys = list(json_keys)
    _check_arguments(input_path, json_keys, workers)
    tokenizer_options = dict(tokenizer_options or {})
    tokenizer = build_tokenizer(tokenizer_type, tokenizer_model, vocab_size, **tokenizer_options)
    prefixes = {key: document_prefix(output_prefix, key) for key in json_keys}
    _prepare_outputs(prefixes.values(), overwrite)

    # Importing megatron.core takes seconds (it pulls in torch and more): only once the
    # arguments are known to be good, so that a mistake is reported at once. Its warnings about
    # missing Transformer Engine/Apex concern training, not this tool.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    report = PreprocessReport(input_path, prefixes, tokens=dict.fromkeys(json_keys, 0))
    temporary = {key: _temporary_paths(prefix) for key, prefix in prefixes.items()}
    worker_args = (tokenizer_type, tokenizer_model, vocab_size, json_keys, append_eod,
                   tokenizer_options)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    start = time.time()
    pool = None
    builders = {}
    try:
        with _sigterm_as_interrupt():
            builders = {
                key: IndexedDatasetBuilder(temporary[key][0], dtype=dtype) for key in json_keys
            }
            chunks = _chunks(jsonl.iter_lines(input_path), _CHUNK_LINES)
            if workers > 1:
                # Workers fork with SIGINT ignored: a Ctrl-C that reaches the process group
                # while one is still starting (before its initializer runs) must not kill it,
                # or pool.terminate() can wait forever for it.
                main = threading.current_thread() is threading.main_thread()
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
                try:
                    pool = Pool(workers, initializer=_init_worker,
                                initargs=(*worker_args, True))
                finally:
                    if main:
                        signal.signal(signal.SIGINT, previous)
                results = _ordered_pool_results(pool, chunks, window=4 * workers)
            else:
                _init_worker(*worker_args, False)
                results = (result for chunk in chunks for result in _encode_chunk(chunk))
            total = os.path.getsize(input_path) if os.path.isfile(input_path) else None  # a pipe
            with _ProgressBar(total, progress) as bar:
                for number, kind, payload, size in results:
                    report.bytes_read += size
                    report.counts[kind] += 1
                    bar.update(size, report.documents)
                    if kind == jsonl.OK:
                        for key, ids in zip(json_keys, payload):
                            builders[key].add_document(ids, [ids.size])
                            report.tokens[key] += ids.size
                    elif len(report.examples.setdefault(kind, [])) < _EXAMPLES_PER_KIND:
                        report.examples[kind].append((number, payload))
            if pool is not None:
                pool.close()
                pool.join()
            for key in json_keys:
                builders[key].finalize(temporary[key][1])
            report.seconds = time.time() - start
            if report.documents == 0:
                bad = ", ".join(f"{report.counts[k]} {k}" for k in SUMMARY_KINDS if report.counts[k])
                raise DataArgumentError(
                    f"--input: {input_path!r} has no valid document ({bad or 'it is empty'}); "
                    "nothing was written"
                )
            _commit(temporary, prefixes)
    finally:
        if pool is not None:
            pool.terminate()
        for builder in builders.values():
            builder.data_file.close()
        for paths in temporary.values():
            for path in paths:
                if os.path.exists(path):
                    os.remove(path)
    return report


def _check_arguments(input_path: str, json_keys: List[str], workers: int) -> None:
    # Any readable non-directory will do: a named pipe or /dev/stdin streams a compressed corpus.
    if not os.path.exists(input_path) or os.path.isdir(input_path):
        reason = "is a directory" if os.path.isdir(input_path) else "does not exist"
        raise DataArgumentError(f"--input: {input_path!r} {reason} (expected a JSONL file)")
    if not os.access(input_path, os.R_OK):
        raise DataArgumentError(f"--input: {input_path!r} is not readable")
    if not json_keys or len(set(json_keys)) != len(json_keys) or not all(json_keys):
        raise DataArgumentError(f"--json-keys: expected distinct non-empty keys, got {json_keys}")
    if workers < 1:
        raise DataArgumentError(f"--workers: expected a positive number of processes, got {workers}")


def _prepare_outputs(prefixes, overwrite: bool) -> None:
    for prefix in prefixes:
        ensure_output_directory(prefix)
        for path in (prefix + ".bin", prefix + ".idx"):
            if os.path.exists(path) and not overwrite:
                raise DataArgumentError(
                    f"--output-prefix: {path!r} already exists; pass --overwrite to replace it"
                )
        _remove_stale_partials(prefix)


def _temporary_paths(prefix: str) -> Tuple[str, str]:
    # In the output directory (so os.replace is a rename) and not ending in .bin/.idx.
    return (f"{prefix}.bin.partial-{os.getpid()}", f"{prefix}.idx.partial-{os.getpid()}")


def _remove_stale_partials(prefix: str) -> None:
    """Delete temporaries left by a killed earlier run (SIGKILL leaves no chance to clean up)."""
    for path in glob.glob(glob.escape(prefix) + ".*.partial-*"):
        pid = path.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            os.remove(path)


def _commit(temporary: Dict[str, Tuple[str, str]], prefixes: Dict[str, str]) -> None:
    """Rename every finished pair into place; `.idx` last so a half-renamed pair never reads."""
    for key, prefix in prefixes.items():
        bin_path, idx_path = prefix + ".bin", prefix + ".idx"
        if os.path.exists(idx_path):
            os.remove(idx_path)  # an old .idx must never describe the new .bin
        os.replace(temporary[key][0], bin_path)
        os.replace(temporary[key][1], idx_path)
        _clear_default_index_cache(prefix)


def _clear_default_index_cache(prefix: str) -> None:
    """megatron-core caches sample indices in `{prefix}/cache/` when no --data-cache-path is
    given; they describe the data just replaced. (Caches elsewhere are keyed by the data's
    identity, datasets.IdentifiedGPTDataset, so they cannot be reused for new data.)"""
    cache = os.path.join(prefix, "cache")
    if os.path.isdir(cache):
        shutil.rmtree(cache, ignore_errors=True)
        try:
            os.rmdir(prefix)  # megatron created this directory only to hold the cache
        except OSError:
            pass


@contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM (job schedulers, `kill`) like Ctrl-C, so the cleanup in `finally` runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Per-process state of the tokenising workers (set by _init_worker).
_WORKER = {}


def _init_worker(tokenizer_type, tokenizer_model, vocab_size, json_keys, append_eod,
                 tokenizer_options, in_pool):
    if in_pool:
        # Ctrl-C reaches the whole process group; only the main process decides what to do.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER["tokenizer"] = build_tokenizer(tokenizer_type, tokenizer_model, vocab_size,
                                           **tokenizer_options)
    _WORKER["json_keys"] = json_keys
    _WORKER["append_eod"] = append_eod


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_pool_results(pool, chunks: Iterator[list], window: int) -> Iterator[tuple]:
    """Results of every line, in input order, with at most `window` chunks in flight.

    Like `pool.imap(..., chunksize)` but the main thread reads the input: imap's feeder thread
    reads ahead without bound (a whole corpus in memory) and, blocked on a slow pipe, makes
    `pool.terminate()` hang on Ctrl-C.
    """
    pending = collections.deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_chunk, (chunk,)))
        # Hand on whatever is finished before reading on: reading may block (a slow pipe).
        while len(pending) >= window or (pending and pending[0].ready()):
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def _encode_chunk(chunk: List[Tuple[int, bytes]]) -> List[tuple]:
    return [_encode_line(numbered_line) for numbered_line in chunk]


def _encode_line(numbered_line: Tuple[int, bytes]) -> Tuple[int, str, object, int]:
    """(line number, kind, [ids per key] or a detail, bytes consumed) for one input line."""
    number, line = numbered_line
    size = len(line) + 1
    kind, texts = jsonl.parse_line(line, _WORKER["json_keys"])
    if kind != jsonl.OK:
        return number, kind, texts, size
    tokenizer = _WORKER["tokenizer"]
    documents = []
    for text in texts:
        try:
            ids = tokenizer.tokenize(text)
        except Exception as error:  # any tokenizer failure is a property of this line only
            return number, TOKENIZER_ERROR, f"{type(error).__name__}: {error}"[:200], size
        if _WORKER["append_eod"]:
            ids = list(ids) + [tokenizer.eod]
        if not ids:
            return number, jsonl.EMPTY_TEXT, "no tokens", size
        documents.append(numpy.asarray(ids, dtype=numpy.int32))
    return number, jsonl.OK, documents, size


class _ProgressBar:
    """tqdm over input bytes (MB/s, ETA) with documents and documents/s as a postfix."""

    def __init__(self, total_bytes: Optional[int], enabled: bool) -> None:
        self._enabled = enabled
        self._total = total_bytes
        self._bar = None
        self._start = self._last = time.time()

    def __enter__(self) -> "_ProgressBar":
        if self._enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self._total, unit="B", unit_scale=True, desc="tokenizing",
                file=sys.stderr, mininterval=0.5, dynamic_ncols=True,
            )
        return self

    def update(self, size: int, documents: int) -> None:
        if self._bar is None:
            return
        self._bar.update(size)
        now = time.time()
        if now - self._last >= 0.5:
            self._last = now
            rate = documents / max(now - self._start, 1e-9)
            self._bar.set_postfix_str(f"{documents} docs, {rate:.0f} docs/s", refresh=False)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
