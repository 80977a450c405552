"""Every flag megatron-nitp shares with Megatron-LM 0.16.1 has Megatron-LM's dest and default.

megatron_lm_0_16_1_options.json is Megatron-LM 0.16.1's whole pretraining parser as data (tag
core_v0.16.1): each option's dest, default and the line of megatron/training/arguments.py or the
config dataclass field it comes from. A flag of ours that is not in it must be one of OURS_ONLY;
a shared flag whose default differs must be a documented deviation (training/megatron_defaults.py
DEVIATIONS: listed in the README, one notice when a run relies on it).
"""

import json
import os
import re

import pytest

from megatron_nitp.training.arguments import build_parser, parse_args
from megatron_nitp.training.megatron_defaults import (DEVIATIONS, REQUIRED,
                                                      default_ffn_hidden_size, required_errors)
from megatron_nitp.training.validation import validate_args

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
with open(os.path.join(HERE, "megatron_lm_0_16_1_options.json")) as f:
    MEGATRON = json.load(f)["options"]
BY_NAME = {name: entry for flag, entry in MEGATRON.items() for name in [flag] + entry["aliases"]}

# megatron-nitp's own flags: Megatron-LM 0.16.1 has none of these names.
OURS_ONLY = {"--config", "--add-bias-linear", "--demo-data", "--max-bad-steps",
             "--keep-last-n-checkpoints", "--log-jsonl", "--plot", "--dry-run", "--debug"}
# Megatron-LM main's names (after 0.16.1), refused: its DeepSeek-V3 example script gives them.
AFTER_0_16_1 = {"--megatron-fsdp-grad-comm-dtype", "--megatron-fsdp-main-grads-dtype"}
# Same flag and default, another dest (kept: saved run configs and the model builder read it).
OTHER_DEST = {"--norm-epsilon": "norm_epsilon"}
# A DEVIATIONS entry whose parser default is Megatron-LM's (None) but is filled in later.
FILLED_LATER = {"max_position_embeddings"}
# The minimum a run must give (Megatron-LM requires each of these too).
MINIMAL = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
           "--seq-length", "16", "--micro-batch-size", "2", "--lr", "1e-3", "--train-iters", "2",
           "--mock-data", "--vocab-size", "64"]


def _ours_only(flag):
    return (flag in OURS_ONLY or flag in AFTER_0_16_1 or flag.startswith("--nitp")
            or flag == "--no-nitp")


def _shared_actions():
    for action in build_parser()._actions:
        names = [n for n in action.option_strings if n.startswith("--")]
        if not names or action.dest == "help" or all(_ours_only(n) for n in names):
            continue
        entry = next((BY_NAME[n] for n in names if n in BY_NAME), None)
        yield names[0], action, entry


def _megatron_default(entry):
    default = entry["default"]
    if default is None and entry["kind"] == "StoreTrue":
        return False  # a switch not given: off
    enum = re.fullmatch(r"<\w+\.(\w+): .*>", str(default))
    return enum.group(1) if enum else default  # an enum default: its member's name, as given


def test_every_flag_is_megatron_lms_or_our_own():
    unknown = [flag for flag, _, entry in _shared_actions() if entry is None]
    assert not unknown, (f"{unknown}: not a Megatron-LM 0.16.1 option; use Megatron-LM's name, "
                         "or add it to OURS_ONLY if it is megatron-nitp's own")


def test_shared_flags_have_megatron_lms_dest():
    wrong = [(flag, action.dest, entry["dest"]) for flag, action, entry in _shared_actions()
             if entry and action.dest != entry["dest"] and OTHER_DEST.get(flag) != action.dest]
    assert not wrong, wrong


def test_shared_flags_have_megatron_lms_default():
    """The table's default (source cited per option) or a documented deviation."""
    assert len(list(_shared_actions())) > 100  # the comparison really covers the parser
    wrong = []
    for flag, action, entry in _shared_actions():
        if entry is None or (action.dest in DEVIATIONS and action.dest not in FILLED_LATER):
            continue
        if action.default != _megatron_default(entry):
            wrong.append(f"{flag}: ours {action.default!r}, Megatron-LM 0.16.1 "
                         f"{entry['default']!r} ({entry['source']})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("flag,expected", [  # the issue's list, spelled out
    ("--normalization", "LayerNorm"), ("--swiglu", False),
    ("--position-embedding-type", "learned_absolute"), ("--disable-bias-linear", True),
    ("--attention-dropout", 0.1), ("--hidden-dropout", 0.1), ("--norm-epsilon", 1e-5),
    ("--adam-beta2", 0.999), ("--weight-decay", 0.01), ("--lr-decay-style", "linear"),
    ("--train-iters", None), ("--moe-router-pre-softmax", False),
    ("--moe-token-dispatcher-type", "allgather"), ("--num-workers", 2), ("--log-interval", 100),
    ("--eval-iters", 100), ("--split", None), ("--micro-batch-size", None), ("--lr", None),
    ("--num-query-groups", 1), ("--kv-lora-rank", 32),
])
def test_issue_list(flag, expected):
    action = next(a for f, a, _ in _shared_actions() if flag in a.option_strings)
    assert action.default == expected == _megatron_default(BY_NAME[flag])


def test_deviations_differ_from_megatron_and_are_in_the_readme():
    readme = open(os.path.join(REPO, "README.md")).read()
    part = readme[readme.index("#### Defaults"):]
    for dest, (flag, _theirs, _ours, _why) in DEVIATIONS.items():
        assert flag in BY_NAME and BY_NAME[flag]["dest"] == dest
        assert f"`{flag}`" in part, f"{flag}: a deviation the README's Defaults part omits"


def test_required_flags_are_named_in_one_line():
    for dest, flag in REQUIRED:
        argv = list(MINIMAL)
        i = argv.index(flag)
        del argv[i:i + 2]
        errors = list(required_errors(parse_args(argv)))
        assert errors and errors[0].startswith(f"{flag}: required"), (flag, errors)
        assert BY_NAME[flag]["default"] is None  # Megatron-LM has none either
    i = MINIMAL.index("--train-iters")
    errors = list(required_errors(parse_args(MINIMAL[:i] + MINIMAL[i + 2:])))
    assert errors == [e for e in errors if "--train-iters" in e and "--train-samples" in e] != []
    assert not list(required_errors(parse_args(MINIMAL)))


@pytest.mark.parametrize("flag", ["--vocab-file", "--merge-file", "--tokenizer-model"])
def test_tokenizer_files_need_a_tokenizer_type(flag):
    # Megatron-LM has no default tokenizer; ours (NullTokenizer) would ignore the files.
    errors = list(required_errors(parse_args(MINIMAL + [flag, "f"])))
    assert len(errors) == 1 and errors[0].startswith(f"{flag}: needs --tokenizer-type")
    given = ["--tokenizer-type", "GPT2BPETokenizer", flag, "f"]
    assert not list(required_errors(parse_args(MINIMAL + given)))


def test_a_run_relying_on_a_deviation_says_so_once(capsys):
    validate_args(parse_args(MINIMAL), world_size=1)
    out = capsys.readouterr().out
    for flag in ("--transformer-impl", "--max-position-embeddings", "--tokenizer-type"):
        assert len(re.findall(rf"^notice: {flag} not given", out, re.M)) == 1, out
    validate_args(parse_args(MINIMAL + ["--transformer-impl", "local", "--tokenizer-type",
                                        "NullTokenizer", "--max-position-embeddings", "16"]),
                  world_size=1)
    assert "not given" not in capsys.readouterr().out


def test_derived_defaults_are_megatron_lms():
    a = parse_args(MINIMAL + ["--hidden-size", "96"])
    assert a.ffn_hidden_size == 4 * 96  # GeLU MLP
    a = parse_args(MINIMAL + ["--hidden-size", "64", "--swiglu"])
    assert a.ffn_hidden_size == default_ffn_hidden_size(64, True) == 128  # int(170.7 / 64) * 64
    # --num-query-groups counts only with --group-query-attention (then its default is 1)
    assert parse_args(MINIMAL + ["--num-query-groups", "1"]).num_query_groups == 2
    assert parse_args(MINIMAL + ["--group-query-attention"]).num_query_groups == 1


def test_yaml_false_for_a_default_on_switch_gives_the_opposite_flag(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("disable-bias-linear: true\n")
    assert parse_args(MINIMAL + ["--config", str(cfg)]).add_bias_linear is False
    cfg.write_text("add-bias-linear: false\n")
    assert parse_args(MINIMAL + ["--config", str(cfg)]).add_bias_linear is False
    cfg.write_text("disable-bias-linear: false\n")
    assert parse_args(MINIMAL + ["--config", str(cfg)]).add_bias_linear is True
