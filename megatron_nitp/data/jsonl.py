"""Reading JSONL corpora line by line, classifying bad lines instead of failing on them.

A web-scale corpus always has a few broken records; one of them must not cost a multi-hour
preprocessing run. Every line is decoded and parsed on its own (the file is read as bytes), and a
bad line gets a kind that the caller counts, reports and skips.
"""

import json
from typing import Iterator, List, Sequence, Tuple, Union

# Kinds of line, in the order a summary lists them.
OK = "documents"
BLANK_LINE = "blank line"
INVALID_UTF8 = "invalid UTF-8"
INVALID_JSON = "invalid JSON"
MISSING_KEY = "missing key"
EMPTY_TEXT = "empty text"
BAD_KINDS = (BLANK_LINE, INVALID_UTF8, INVALID_JSON, MISSING_KEY, EMPTY_TEXT)

_UTF8_BOM = b"\xef\xbb\xbf"


def iter_lines(path: str) -> Iterator[Tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes without the line ending) of a file."""
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            if number == 1 and line.startswith(_UTF8_BOM):
                line = line[len(_UTF8_BOM) :]
            yield number, line.rstrip(b"\r\n")


def parse_line(line: bytes, keys: Sequence[str]) -> Tuple[str, Union[List[str], str]]:
    """Classify one JSONL line.

    Returns (OK, [the text of each key]) or (a bad kind, a short human-readable detail). A record
    is kept only if every key holds non-empty text, so that the outputs of several keys stay
    aligned document by document.
    """
    if not line.strip():
        return BLANK_LINE, "blank line"
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return INVALID_UTF8, f"byte {error.start}: {error.reason}"
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as error:
        return INVALID_JSON, error.msg
    if not isinstance(record, dict):
        return INVALID_JSON, f"a JSON {type(record).__name__}, not an object"
    texts = []
    for key in keys:
        text = record.get(key)
        if not isinstance(text, str):
            detail = f"no key {key!r}" if text is None else f"{key!r} is not a string"
            return MISSING_KEY, detail
        if not text.strip():
            return EMPTY_TEXT, f"{key!r} is empty"
        try:
            # json.loads accepts escaped lone surrogates ("\ud800"), which no tokenizer can encode.
            text.encode("utf-8")
        except UnicodeEncodeError:
            return INVALID_UTF8, f"{key!r} holds an unpaired surrogate escape"
        texts.append(text)
    return OK, texts


def iter_texts(path: str, key: str = "text") -> Iterator[str]:
    """Yield the text of every good record of a JSONL file, silently skipping bad lines."""
    for _, line in iter_lines(path):
        kind, texts = parse_line(line, (key,))
        if kind == OK:
            yield texts[0]
