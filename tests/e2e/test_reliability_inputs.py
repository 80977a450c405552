"""Bad input through the real command line (issue #12.7, #12.9): every numeric flag finite and in
range, the flag combinations megatron-core would build wrong or fail on mid-step, unusable
output paths and an undecodable tracker file: exit 2, one `error:` line naming the flag or file
and what would be valid, no traceback, nothing written."""

import os
import subprocess

import pytest

from tests.e2e.engine_runner import engine_command
from tests.helpers import suite_flags
from tests.e2e.reliability_runs import TINY, env, tmpfs


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


def _one_error_line(stderr, expected):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def _refused_cli(tmp_path, argv, expected, extra_env=None):
    """The real process: exit code 2, one line, no traceback, nothing written."""
    before = _tree(tmp_path)
    proc = subprocess.run(engine_command(TINY + argv), capture_output=True, text=True,
                          env=env(**(extra_env or {})), timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _one_error_line(proc.stderr, expected)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert _tree(tmp_path) == before, "a refused run wrote files"


@pytest.fixture
def refused(tmp_path, monkeypatch, capsys):
    """The same entry point in this process (the CLI costs a torch import per case)."""
    from megatron_nitp.training.engine import pretrain

    monkeypatch.chdir(tmp_path)

    def check(argv, expected, extra_env=None):
        for k, v in (extra_env or {}).items():
            monkeypatch.setenv(k, v)
        before = _tree(tmp_path)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            pretrain("gpt", suite_flags(TINY + argv) + TINY + argv)
        assert e.value.code == 2
        stderr = capsys.readouterr().err  # megatron-core's import warnings aside
        _one_error_line("\n".join(ln for ln in stderr.splitlines() if "warn" not in ln.lower()),
                        expected)
        assert _tree(tmp_path) == before, "a refused run wrote files"

    return check


SAVE = ["--save", "ckpt"]
NUMERIC = {
    "lr nan": (["--lr", "nan"], ["--lr nan", "finite", ">= 0"]),
    "lr negative": (["--lr", "-1"], ["--lr -1.0", ">= 0"]),
    "adam beta out of range": (["--adam-beta2", "1.5"], ["--adam-beta2 1.5", "[0, 1)"]),
    "dropout inf": (["--hidden-dropout", "inf"], ["--hidden-dropout inf", "finite"]),
    "log interval zero": (["--log-interval", "0"], ["--log-interval 0", ">= 1"]),
    "hidden size zero": (["--hidden-size", "0"], ["--hidden-size 0", ">= 1"]),
    "train iters 0 without --save": (["--train-iters", "0"],
                                     ["--train-iters 0", "needs --save"]),
    "hidden not divisible by heads": (
        ["--hidden-size", "60", "--num-attention-heads", "8"],
        ["--hidden-size 60", "--num-attention-heads 8", "--kv-channels"]),
    "odd head dimension with RoPE": (["--hidden-size", "30"],
                                     ["--kv-channels 15", "RoPE", "even"]),
    "seq length 1 with NITP": (["--seq-length", "1"], ["--seq-length 1", ">= 2"]),
}


@pytest.mark.parametrize("case", list(NUMERIC))
def test_bad_numbers_and_shapes_exit_2_with_one_line(refused, case):
    argv, expected = NUMERIC[case]
    refused(argv + (SAVE if case != "train iters 0 without --save" else []), expected)


def test_through_the_cli_exit_2_one_line_no_traceback(tmp_path):
    _refused_cli(tmp_path, ["--lr", "nan"] + SAVE, ["--lr nan", "finite"])
    _refused_cli(tmp_path, ["--save", _file(tmp_path, "f")], ["--save f", "not a directory"])


def test_wandb_online_without_an_api_key_is_refused(tmp_path, refused):
    refused( SAVE + ["--wandb-project", "p"], ["--wandb-project p", "WANDB_API_KEY"],
             {"WANDB_MODE": "online", "WANDB_API_KEY": "", "NETRC": str(tmp_path / "none")})


def test_a_tracker_with_undecodable_bytes_names_the_file(tmp_path, refused):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "latest_checkpointed_iteration.txt").write_bytes(b"\xff\xfe4\x00")
    refused(["--load", "old"], ["latest_checkpointed_iteration.txt",
                                            "corrupted tracker file"])


def _file(tmp_path, name):
    (tmp_path / name).write_text("x")
    return name


OUTPUTS = {
    "--save is a file": (lambda t: ["--save", _file(t, "f")], ["--save f", "not a directory"]),
    "--tensorboard-dir is a file": (lambda t: SAVE + ["--tensorboard-dir", _file(t, "f")],
                                    ["--tensorboard-dir f", "not a directory"]),
    "--data-cache-path under a file": (
        lambda t: SAVE + ["--data-cache-path", os.path.join(_file(t, "f"), "cache")],
        ["--data-cache-path f/cache", "is a file"]),
    "--log-jsonl is a directory": (lambda t: (t / "d").mkdir() or SAVE + ["--log-jsonl", "d"],
                                   ["--log-jsonl d", "is a directory"]),
    "--log-jsonl under a file": (lambda t: SAVE + ["--log-jsonl", _file(t, "f") + "/log.jsonl"],
                                 ["--log-jsonl f/log.jsonl", "is a file"]),
}


@pytest.mark.parametrize("case", list(OUTPUTS))
def test_an_unusable_output_path_is_refused_before_any_work(tmp_path, refused, case):
    make, expected = OUTPUTS[case]
    refused(make(tmp_path), expected)


@pytest.fixture
def read_only_dir(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        yield ro


def test_save_on_a_read_only_file_system_is_refused(refused, read_only_dir):
    refused(["--save", "ro/ckpt"], ["--save ro/ckpt", "not writable",
                                                "read-only"])


def test_eval_iters_0_skips_evaluation_and_metrics_steps_are_always_logged(tmp_path):
    from tests.e2e.engine_runner import read_log
    from tests.e2e.reliability_runs import run

    log = tmp_path / "log.jsonl"
    out = run(tmp_path, "run", TINY + ["--train-iters", "6", "--log-interval", "4",
                                       "--nitp-metrics-interval", "3", "--eval-interval", "2",
                                       "--eval-iters", "0", "--log-jsonl", log])
    train, valid = read_log(log)
    assert valid == [] and "validation at" not in out  # Megatron-LM: --eval-iters 0 = no eval
    assert [r["iteration"] for r in train] == [3, 4, 6]  # 3 and 6 are metrics steps
    assert [("effective_rank" in r) for r in train] == [True, False, True]
