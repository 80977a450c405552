"""Configuration errors through the real command line (issue #6.1): exit code 2, exactly one
`error:` line naming the option, no traceback (unless --debug), nothing written, and only the
cost of importing torch (no megatron-core import, no process group, no model).

The full table of cases runs in-process in tests/unit/test_validation.py."""

import resource
import subprocess

import pytest

from tests.e2e.engine_runner import engine_command
from tests.e2e.reliability_runs import TINY, env


def _cli(tmp_path, family, argv):
    outputs = ["--save", tmp_path / "ckpt", "--log-jsonl", tmp_path / "log.jsonl",
               "--tensorboard-dir", tmp_path / "tb"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        engine_command(TINY + outputs + argv, family=family),
        capture_output=True, text=True, env=env(), timeout=120, cwd=tmp_path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert list(tmp_path.iterdir()) == [], "a failed validation wrote files"
    return proc, cpu


@pytest.mark.parametrize("family,argv,expected", [
    ("gpt", ["--nitp-target-layer", "2"], "--nitp-target-layer 2: must be in [0, 2)"),
    ("gpt", ["--global-batch-size", "3"], "--global-batch-size 3: must be a multiple of"),
    ("moe", [], "--num-experts: required by pretrain_moe_nitp.py"),
])
def test_config_error_exits_2_with_one_line_and_no_traceback(tmp_path, family, argv, expected):
    proc, cpu = _cli(tmp_path, family, argv)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {lines[0][len('error: '):]}"] and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert cpu < 15, f"{cpu:.1f} s of CPU: something heavy ran before validation"


def test_debug_shows_the_traceback(tmp_path):
    proc, _ = _cli(tmp_path, "gpt", ["--nitp-target-layer", "2", "--debug"])
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --nitp-target-layer 2")
