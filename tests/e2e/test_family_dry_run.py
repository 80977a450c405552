"""--dry-run knows the model families: MLA + MoE counts, expert-TP in the plan, and a layout the
expert-TP does not fit refused in one line (examples/configs/*_nitp.yaml; no model is built)."""

import pytest

from megatron_nitp.training.engine import pretrain
from tests.e2e.engine_runner import REPO_ROOT

DSV2_LITE = str(REPO_ROOT / "examples" / "configs" / "deepseek_v2_lite_nitp.yaml")
QWEN3 = str(REPO_ROOT / "examples" / "configs" / "qwen3_like_nitp.yaml")


def test_family_dry_runs_print_counts_and_expert_tp(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert pretrain("moe", ["--config", DSV2_LITE, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters: total 15.706B (15,706,484,224), active 2.661B" in out
    assert "(EP 8, expert-TP 1, VPP chunk None;" in out
    assert "training FLOPs/token (App. G, matmuls): NTP " in out and "incl. MTP" not in out
    assert pretrain("moe", ["--config", DSV2_LITE, "--dry-run", "--mtp-num-layers", "1"]) == 0
    assert " incl. MTP " in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert pretrain("gpt", ["--config", QWEN3, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters: total 8.192B" in out and "expert-TP" not in out


def test_family_dry_run_refuses_an_expert_tp_the_world_does_not_fit(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(SystemExit):
        pretrain("moe", ["--config", DSV2_LITE, "--dry-run", "--expert-tensor-parallel-size", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--expert-tensor-parallel-size 2" in err[0], err
