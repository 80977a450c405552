"""training/megatron_compat.py: Megatron-LM flags megatron-nitp accepts as no-ops or refuses."""

import argparse
import logging

import pytest

from megatron_nitp.training import megatron_compat as compat
from megatron_nitp.training.arguments import build_parser, parse_args
from megatron_nitp.training.validation import ConfigError, validate_args

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--micro-batch-size", "1", "--train-iters", "2",
        "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
        "--disable-bias-linear", "--transformer-impl", "local", "--mock-data",
        "--vocab-size", "128", "--lr", "3e-4",
        "--max-position-embeddings", "32", "--tokenizer-type", "NullTokenizer"]


def _value(entry, fallback):
    """A value other than Megatron-LM's default, as the flag would be given."""
    kw = entry.kwargs
    if kw.get("action"):
        return []
    choices = [c for c in kw.get("choices") or [fallback] if c != kw["default"]]
    return [str(choices[0])]


def _validate(flags, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    return validate_args(parse_args(BASE + flags))


def test_every_entry_is_declared_once_with_megatron_lms_default(monkeypatch, capsys):
    parser = build_parser()
    own = {a.dest for a in parser._actions if a.option_strings
           and a.option_strings[0] not in compat.DECLARED}
    for entry in compat.TABLE:
        action = parser._option_string_actions[entry.flag]
        assert action.help and entry.why in action.help.replace("%%", "%"), entry.flag
        if entry.flag in compat.DECLARED:
            assert action.dest == entry.dest and action.default == entry.kwargs["default"]
            # a table dest must not alias another (honoured) flag's
            assert entry.dest not in own, entry.flag
    assert len({e.flag for e in compat.TABLE}) == len(compat.TABLE)
    # Nothing given: no notice, no refusal.
    _validate([], monkeypatch)
    assert "notice:" not in capsys.readouterr().out


@pytest.mark.parametrize("entry", [e for e in compat.TABLE if e.verdict == compat.REJECT
                                   and not e.decide], ids=lambda e: e.flag)
def test_refused_flags_are_one_line_naming_the_flag(entry, monkeypatch):
    value = _value(entry, "2")
    with pytest.raises(ConfigError) as e:
        _validate([entry.flag] + value, monkeypatch)
    assert str(e.value).startswith(entry.flag) and "\n" not in str(e.value)


@pytest.mark.parametrize("entry", [e for e in compat.TABLE if e.verdict == compat.NOOP
                                   and not e.decide], ids=lambda e: e.flag)
def test_no_op_flags_give_one_notice(entry, monkeypatch, capsys):
    value = _value(entry, "5")
    _validate([entry.flag] + value, monkeypatch)
    out = capsys.readouterr().out
    assert out.count(f"notice: {entry.flag}: accepted as a no-op") == 1, out


def test_flags_whose_verdict_depends_on_others(monkeypatch, capsys):
    _validate(["--no-position-embedding"], monkeypatch)
    assert "notice: --no-position-embedding" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="^--no-position-embedding: .*--position-embedding"):
        _validate(["--no-position-embedding", "--position-embedding-type",
                   "learned_absolute"], monkeypatch)
    with pytest.raises(ConfigError, match="^--no-create-attention-mask-in-dataloader"):
        _validate(["--no-create-attention-mask-in-dataloader", "--reset-attention-mask"],
                  monkeypatch)
    _validate(["--data-parallel-sharding-strategy", "no_shard"], monkeypatch)
    with pytest.raises(ConfigError, match="^--data-parallel-sharding-strategy optim: "
                                          "Megatron-FSDP"):
        _validate(["--data-parallel-sharding-strategy", "optim"], monkeypatch)


def test_a_flag_arguments_py_declares_wins_over_the_table(monkeypatch):
    parser = compat.OneLineErrorParser()
    parser.add_argument("--fp16", action="store_true", help="honoured elsewhere")
    compat.add_megatron_compat_args(parser)
    try:
        assert "--fp16" not in compat.DECLARED and "--bf16" not in compat.DECLARED
        args = argparse.Namespace(**{e.dest: e.kwargs["default"] for e in compat.TABLE})
        args.fp16 = True
        assert compat.check_megatron_compat(args, log=lambda m: None) is None
    finally:
        build_parser()  # the real parser's table again


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(BASE + ["--tokenizer-type", "Llama3Tokenizer"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --tokenizer-type: invalid choice") and "\n" not in err
