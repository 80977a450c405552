"""--data-args-path / --per-split-data-args-path (Megatron-LM's file forms of the data lists):
reading, and the one-line refusals."""

import json
from types import SimpleNamespace

import pytest

from megatron_nitp.data.data_args import data_args_errors, resolve_data_args
from megatron_nitp.data.errors import DataArgumentError


def _args(**kw):
    base = dict(data_path=None, train_data_path=None, valid_data_path=None, test_data_path=None,
                data_args_path=None, per_split_data_args_path=None, split="98,2,0")
    return SimpleNamespace(**{**base, **kw})


def test_data_args_file_is_the_data_path_list_whitespace_separated(tmp_path):
    (tmp_path / "d.txt").write_text("0.7 /data/a_text_document\n  0.3\t/data/b_text_document\n")
    args = _args(data_args_path=str(tmp_path / "d.txt"))
    resolve_data_args(args)
    assert args.data_path == ["0.7", "/data/a_text_document", "0.3", "/data/b_text_document"]


def test_per_split_json_takes_lists_strings_and_numbers(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(
        {"train": [0.6, "a", 0.4, "b"], "valid": "c d", "test": []}))
    args = _args(per_split_data_args_path=str(tmp_path / "s.json"))
    resolve_data_args(args)
    assert args.train_data_path == ["0.6", "a", "0.4", "b"]
    assert args.valid_data_path == ["c", "d"] and args.test_data_path is None


@pytest.mark.parametrize("given, flag", [
    (dict(data_args_path="f", data_path=["a"]), "--data-args-path: not used with --data-path"),
    (dict(per_split_data_args_path="f", valid_data_path=["a"]),
     "--per-split-data-args-path: not used with --valid-data-path"),
    (dict(data_args_path="f", per_split_data_args_path="g"),
     "--data-args-path: not used with --per-split-data-args-path"),
    (dict(data_args_path="f"), None),
    (dict(data_args_path="f", split=None), "--data-args-path: needs --split"),
])
def test_mixing_with_the_command_line_lists_is_refused_in_one_line(given, flag):
    messages = list(data_args_errors(_args(**given)))
    if flag is None:
        assert not messages, messages
        return
    assert len(messages) == 1 and messages[0].startswith(flag) and "\n" not in messages[0]


@pytest.mark.parametrize("flag, content, match", [
    ("data_args_path", None, "--data-args-path: .* does not exist"),
    ("data_args_path", "  \n", "--data-args-path: .* is empty"),
    ("per_split_data_args_path", "{train: [a]}", "--per-split-data-args-path: .* is not JSON"),
    ("per_split_data_args_path", '["a"]', "must hold a JSON object"),
    ("per_split_data_args_path", '{"train": ["a"], "eval": ["b"]}', "unknown keys .'eval'."),
    ("per_split_data_args_path", '{"train": [["a"]]}', "'train' must be a list of prefixes"),
    ("per_split_data_args_path", '{"valid": ["a"]}', "has no train list"),
])
def test_bad_files_are_one_line_naming_the_flag(flag, content, match, tmp_path):
    path = tmp_path / "f"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataArgumentError, match=match) as error:
        resolve_data_args(_args(**{flag: str(path)}))
    assert "\n" not in str(error.value.code)
