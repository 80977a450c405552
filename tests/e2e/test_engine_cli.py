"""Issue #3: the command line itself: --help, --config + --dry-run, the demo config, plot_run.

`--dry-run` validates a config and prints the parameter counts and the parallel plan without
building a model or starting process groups; the world size it validates against comes from
WORLD_SIZE (the launcher's variable), set here to each paper config's suggested layout on 8-GPU
nodes. Most checks call the entry function in this process (imports once); one launch each of
--help, a dry run and tools/plot_run.py checks the real command lines.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megatron_nitp.training.arguments import build_parser
from megatron_nitp.training.engine import pretrain
from tests.e2e.engine_runner import REPO_ROOT, engine_command

CONFIGS = sorted((REPO_ROOT / "examples" / "configs").glob("*.yaml"))
DEMO = REPO_ROOT / "examples" / "demo" / "demo_nitp.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Every option the issue names; --help must document each (the parser check below covers the rest).
ISSUE_FLAGS = """
--config --dry-run --help --num-layers --hidden-size --num-attention-heads --seq-length
--micro-batch-size --global-batch-size --train-iters --lr --min-lr --lr-decay-style
--lr-warmup-iters --lr-wsd-decay-iters --nitp --no-nitp --nitp-target-layer --nitp-loss-weight
--nitp-shift --nitp-loss-type --nitp-no-stop-grad --nitp-start-step --nitp-no-projector
--nitp-metrics-interval --num-experts --moe-router-topk --moe-ffn-hidden-size
--moe-shared-expert-intermediate-size --moe-layer-freq --tensor-model-parallel-size
--pipeline-model-parallel-size --num-layers-per-virtual-pipeline-stage
--expert-model-parallel-size --context-parallel-size --sequence-parallel
--use-distributed-optimizer --recompute-granularity --bf16 --data-path --split --mock-data
--demo-data --tokenizer-type --tokenizer-model --save --load --save-interval --exit-interval
--exit-duration-in-mins --exit-signal-handler --eval-interval --eval-iters --log-interval
--log-jsonl --tensorboard-dir --wandb-project --wandb-save-dir --plot
""".split()


def _run(cmd, timeout=120, **env):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                              "OMP_NUM_THREADS": "1", **env})


def test_help_documents_every_option():
    res = _run(engine_command(["--help"]))
    assert res.returncode == 0, res.stderr
    help_text = res.stdout
    missing = [f for f in ISSUE_FLAGS if f not in help_text]
    assert not missing, f"--help does not mention {missing}"
    for family in ("gpt", "moe"):
        for action in build_parser(family)._actions:
            if action.option_strings:
                assert action.help and action.help.strip(), f"{action.option_strings}: no help"
                assert action.option_strings[0] in help_text


def _layout(config: Path):
    """(model family, WORLD_SIZE) for a paper config: its TP x PP x CP on 8-way data parallel."""
    c = yaml.safe_load(config.read_text())
    model_parallel = (c.get("tensor-model-parallel-size", 1) *
                      c.get("pipeline-model-parallel-size", 1) *
                      c.get("context-parallel-size", 1))
    return ("moe" if c.get("num-experts") else "gpt"), 8 * model_parallel, c


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_paper_config_validates_and_dry_runs(config, monkeypatch, capsys):
    family, world, c = _layout(config)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert pretrain(family, ["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters: total" in out
    assert (f"parallel plan: TP {c.get('tensor-model-parallel-size', 1)} x PP "
            f"{c.get('pipeline-model-parallel-size', 1)} x CP 1 x DP 8") in out
    assert f"EP {c.get('expert-model-parallel-size', 1)}" in out


def test_dry_run_command_line_on_the_largest_config_takes_seconds():
    config = REPO_ROOT / "examples" / "configs" / "moe_45b_a5.5b.yaml"
    family, world, _ = _layout(config)
    start = time.time()
    res = _run(engine_command(["--config", config, "--dry-run"], family=family),
               WORLD_SIZE=str(world))
    elapsed = time.time() - start
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parameters: total 44.9" in res.stdout and "PP 4" in res.stdout
    # ~4 s on 2 idle cores (the torch import; no megatron-core import, no model); the bound
    # leaves room for a loaded CI machine.
    assert elapsed < 60, f"--dry-run took {elapsed:.1f} s (imports included)"


def test_dry_run_rejects_a_world_size_the_layout_does_not_fit(monkeypatch, capsys):
    config = REPO_ROOT / "examples" / "configs" / "moe_45b_a5.5b.yaml"
    monkeypatch.setenv("WORLD_SIZE", "6")  # not a multiple of PP 4
    with pytest.raises(SystemExit) as exit_info:
        pretrain("moe", ["--config", str(config), "--dry-run"])
    assert exit_info.value.code == 2
    assert "pipeline-model-parallel-size" in capsys.readouterr().err


def test_demo_config_is_a_small_nitp_run_that_logs_and_plots(monkeypatch, capsys):
    c = yaml.safe_load(DEMO.read_text())
    assert c["demo-data"] and c["nitp"] and c["nitp-metrics-interval"] > 0
    assert c["log-jsonl"] == "runs/demo/log.jsonl" and c["plot"] == "runs/demo/plot.png"
    assert c["eval-interval"] and "save" not in c
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert pretrain("gpt", ["--config", str(DEMO), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parallel plan: TP 1 x PP 1 x CP 1 x DP 1" in out


def _write_log(path, nitp: bool, iterations=8):
    with open(path, "w") as f:
        for i in range(1, iterations + 1):
            rec = {"iteration": i, "lm_loss": 6.0 - 0.1 * i,
                   "nitp_loss": (0.9 - 0.05 * i) if nitp else None, "lr": 1e-3,
                   "grad_norm": 1.0, "tokens_per_sec": 1000.0}
            if i % 4 == 0:
                rec.update(effective_rank=10.0 + i, pair_cosine=0.5 - 0.01 * i)
            f.write(json.dumps(rec) + "\n")
            if i % 4 == 0:
                f.write(json.dumps({"iteration": i, "split": "valid", "lm_loss": 6.1 - 0.1 * i,
                                    "nitp_loss": 0.8 if nitp else None}) + "\n")


def test_plot_run_overlays_an_nitp_and_an_ntp_run(tmp_path):
    _write_log(tmp_path / "nitp.jsonl", nitp=True)
    _write_log(tmp_path / "ntp.jsonl", nitp=False)
    out = tmp_path / "plots" / "compare.png"
    res = _run([sys.executable, str(REPO_ROOT / "tools" / "plot_run.py"),
                str(tmp_path / "nitp.jsonl"), str(tmp_path / "ntp.jsonl"), "--labels", "nitp,ntp",
                "--out", str(out)])
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    assert f"wrote {out}" in res.stdout


def test_plot_run_names_a_missing_log(tmp_path):
    from tools.plot_run import main

    assert main([str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_plot_reads_each_iteration_once_from_a_log_cut_by_a_kill(tmp_path):
    from megatron_nitp.training.plotting import read_run

    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"iteration": 1, "lm_loss": 6.0}) + "\n"
                   + json.dumps({"iteration": 2, "lm_loss": 5.0}) + "\n"
                   + '{"iteration": 3, "lm_lo\n'  # the line a SIGKILL cut short
                   + json.dumps({"iteration": 2, "lm_loss": 5.5}) + "\n"  # the resumed run
                   + json.dumps({"iteration": 2, "split": "valid", "lm_loss": 5.7}) + "\n")
    run = read_run(log)
    assert {i: r["lm_loss"] for i, r in run["train"].items()} == {1: 6.0, 2: 5.5}
    assert list(run["valid"]) == [2]
