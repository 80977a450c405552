"""Megatron-LM's `--data-args-path` and `--per-split-data-args-path`: the data lists in files.

As Megatron-LM 0.16.1 reads them (training/utils.py `get_blend_and_blend_per_split`):
- `--data-args-path FILE`: FILE holds what `--data-path` would, whitespace-separated
  (`prefix ...` or `weight prefix ...`, any line breaks), for lists too long for a command line;
- `--per-split-data-args-path FILE.json`: a JSON object with `train`, `valid`, `test`, each a
  list like `--train-data-path`'s (or one whitespace-separated string).
Each file excludes its command-line twin (--data-path; --train/valid/test-data-path), refused in
one line as Megatron-LM asserts. `resolve_data_args` fills `args.data_path` /
`args.{train,valid,test}_data_path` from the files, so everything downstream (validation,
datasets, the saved run config) sees the lists themselves.
"""

import json
import os

from megatron_nitp.data.errors import DataArgumentError

SPLITS = ("train", "valid", "test")


def data_args_errors(args):
    """One message per mixing Megatron-LM refuses (no file is read: a dry run needs none)."""
    if getattr(args, "data_args_path", None) and args.data_path:
        yield ("--data-args-path: not used with --data-path (the file holds the --data-path "
               "list); give one of the two")
    if getattr(args, "data_args_path", None) and args.split is None:
        yield ("--data-args-path: needs --split (Megatron-LM's legacy '969, 30, 1' is filled in "
               "for --data-path only; its datasets assert a split for a blend)")
    per_split = [f"--{s}-data-path" for s in SPLITS if getattr(args, f"{s}_data_path", None)]
    if getattr(args, "per_split_data_args_path", None) and per_split:
        yield (f"--per-split-data-args-path: not used with {', '.join(per_split)} (the file holds "
               "the train/valid/test lists); give one of the two")
    if getattr(args, "data_args_path", None) and getattr(args, "per_split_data_args_path", None):
        yield ("--data-args-path: not used with --per-split-data-args-path (one data source, as "
               "--data-path excludes --train/valid/test-data-path); give one of the two")


def _read(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        raise DataArgumentError(f"{flag}: {path!r} does not exist (expected a file)")
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise DataArgumentError(f"{flag}: cannot read {path!r} ({error})") from None


def read_data_args(path: str) -> list:
    """The --data-path list a --data-args-path file holds."""
    items = _read(path, "--data-args-path").split()
    if not items:
        raise DataArgumentError(f"--data-args-path: {path!r} is empty (expected dataset "
                                "prefixes, optionally weighted: `0.7 a 0.3 b`)")
    return items


def read_per_split_data_args(path: str) -> dict:
    """{split: list or None} from a --per-split-data-args-path JSON file."""
    flag = "--per-split-data-args-path"
    try:
        content = json.loads(_read(path, flag))
    except ValueError as error:
        raise DataArgumentError(f"{flag}: {path!r} is not JSON ({str(error)[:120]})") from None
    if not isinstance(content, dict) or not content:
        raise DataArgumentError(f"{flag}: {path!r} must hold a JSON object with train, valid "
                                "and test lists")
    unknown = sorted(set(content) - set(SPLITS))
    if unknown:
        raise DataArgumentError(f"{flag}: {path!r} has unknown keys {unknown}; valid: train, "
                                "valid, test")
    lists = {}
    for split in SPLITS:
        value = content.get(split)
        if isinstance(value, str):  # Megatron-LM: a string is split on whitespace
            value = value.split()
        if value is not None and not (isinstance(value, list) and all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)):
            raise DataArgumentError(f"{flag}: {path!r}: {split!r} must be a list of prefixes "
                                    "(optionally weighted) or one whitespace-separated string")
        lists[split] = [str(v) for v in value] if value else None
    if not lists["train"]:
        raise DataArgumentError(f"{flag}: {path!r} has no train list")
    return lists


def resolve_data_args(args) -> None:
    """Replace the two file flags by the lists they hold (in place)."""
    for message in data_args_errors(args):
        raise DataArgumentError(message)
    if getattr(args, "data_args_path", None):
        args.data_path = read_data_args(args.data_args_path)
    if getattr(args, "per_split_data_args_path", None):
        for split, paths in read_per_split_data_args(args.per_split_data_args_path).items():
            setattr(args, f"{split}_data_path", paths)
