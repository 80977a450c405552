"""Issue #3: the training CLI end to end on tiny models, GPT and MoE, 1 and 2 processes.

Each launch checks the JSONL log (one record per logged iteration; eval records with
"split": "valid"; nitp_loss null under --no-nitp; effective rank / pair cosine on
--nitp-metrics-interval iterations), and the 1-process GPT run also the other sinks: TensorBoard
events, a wandb offline run, the --plot PNG, and that without --save nothing else is written.
(The 2-process GPT run is the data-parallel resume test in test_engine_resume.py.)
"""

import os

import pytest

from tests.e2e.engine_runner import (TINY_GPT, TINY_MOE, check_eval_log, check_train_log,
                                     metrics_landed, read_log, run_engine)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_gpt_one_process_logs_to_every_sink_and_writes_nothing_else(tmp_path):
    cwd, sinks = tmp_path / "cwd", tmp_path / "sinks"
    cwd.mkdir()
    metrics = 2 if metrics_landed() else 0
    res = run_engine(TINY_GPT + [
        "--nitp", "--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1",
        "--nitp-metrics-interval", metrics, "--log-jsonl", "log.jsonl",
        "--tensorboard-dir", sinks / "tb", "--wandb-project", "x", "--wandb-save-dir", sinks / "wb",
        "--plot", sinks / "plot.png"], cwd=cwd)

    train, valid = read_log(cwd / "log.jsonl")
    check_train_log(train, [1, 2, 3, 4], nitp=True, metrics_interval=metrics)
    check_eval_log(valid, [2, 4], nitp=True)
    assert "iter      4/4" in res.stdout and "validation at iter 4" in res.stdout
    # No --save: no checkpoint, cache or stray log in the working directory.
    assert sorted(os.listdir(cwd)) == ["log.jsonl"]
    assert sorted(os.listdir(sinks)) == ["plot.png", "tb", "wb"]
    assert any(f.startswith("events.out.tfevents.") for f in os.listdir(sinks / "tb"))
    offline = [d for d in os.listdir(sinks / "wb" / "wandb") if d.startswith("offline-run-")]
    assert len(offline) == 1, os.listdir(sinks / "wb" / "wandb")
    assert (sinks / "plot.png").read_bytes()[:8] == PNG_MAGIC
    if not metrics:
        pytest.skip("megatron_nitp/nitp/metrics.py has not landed: metrics not checked")


def test_moe_one_process_without_nitp_logs_null_nitp_loss(tmp_path):
    log = tmp_path / "log.jsonl"
    res = run_engine(TINY_MOE + ["--no-nitp", "--train-iters", "2", "--eval-interval", "2",
                                 "--eval-iters", "1", "--log-jsonl", log], family="moe")
    train, valid = read_log(log)
    check_train_log(train, [1, 2], nitp=False)
    check_eval_log(valid, [2], nitp=False)
    assert "NITP off" in res.stdout


def test_moe_two_processes_expert_parallel_logs_nitp_and_metrics(tmp_path):
    log = tmp_path / "log.jsonl"
    metrics = 2 if metrics_landed() else 0
    run_engine(TINY_MOE + ["--nitp", "--expert-model-parallel-size", "2", "--train-iters", "2",
                           "--eval-interval", "2", "--eval-iters", "1",
                           "--nitp-metrics-interval", metrics, "--log-jsonl", log],
               nproc=2, family="moe")
    train, valid = read_log(log)
    check_train_log(train, [1, 2], nitp=True, metrics_interval=metrics)
    check_eval_log(valid, [2], nitp=True)
    if not metrics:
        pytest.skip("megatron_nitp/nitp/metrics.py has not landed: metrics not checked")


def test_dataloader_workers_are_stopped_when_the_run_ends(tmp_path):
    """With --num-workers 2 the run stops its workers itself when training ends: left to a later
    garbage collection (the Trainer is in a reference cycle) their shutdown ran inside
    torch.distributed's teardown import, where every join timed out (10-12 s per run)."""
    import subprocess
    import sys

    from tests.e2e.engine_runner import REPO_ROOT, engine_env
    from tests.helpers import suite_flags

    argv = TINY_GPT + ["--nitp", "--train-iters", "2", "--eval-iters", "0"]
    argv = suite_flags(argv) + argv + ["--num-workers", "2"]  # the last flag wins
    code = ("import multiprocessing, sys\n"
            "from megatron_nitp.training.engine import pretrain\n"
            f"assert pretrain('gpt', {argv!r}) == 0\n"
            "print('workers alive:', len(multiprocessing.active_children()))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=engine_env(), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "workers alive: 0" in proc.stdout, proc.stdout[-2000:]
