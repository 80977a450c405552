"""Megatron-LM 0.16.1's logging and profiling flags on tiny CPU runs (issue #15 item 9): what
each flag adds is read back from the sinks it writes (TensorBoard events, JSONL, the torch
profiler's trace), and the parameter norm equals one computed independently from the
checkpoint's tensors (1 process and tensor parallel)."""

import glob
import json
import math
import os

import pytest

from tests.e2e.engine_runner import read_log, run_engine

# Every model flag explicit (the project's defaults move to Megatron-LM's).
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--mock-data", "--vocab-size", "255", "--make-vocab-size-divisible-by", "64",
        "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
        "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--lr", "1e-3", "--lr-warmup-iters", "1", "--nitp", "--nitp-target-layer", "1"]


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: {s.step: s.value for s in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _checkpoint_params_norm(iter_dir, tmp_path):
    """sqrt(sum of squares) of every model tensor of a torch_dist checkpoint, read as plain
    global tensors (torch.distributed.checkpoint), without the project's code."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    plain = tmp_path / "plain.pt"
    dcp_to_torch_save(str(iter_dir), str(plain))
    state = torch.load(plain, weights_only=False)
    sq = sum(v.double().pow(2).sum().item() for k, v in state.items()
             if isinstance(v, torch.Tensor) and not k.startswith("optimizer.")
             and "_extra_state" not in k and v.is_floating_point())
    return math.sqrt(sq)


def test_logging_flags_reach_tensorboard_jsonl_and_the_profiler_trace(tmp_path):
    tb = tmp_path / "tb"
    res = run_engine(TINY + [
        "--train-iters", "4", "--log-interval", "3", "--tensorboard-dir", tb,
        "--tensorboard-log-interval", "2", "--log-jsonl", tmp_path / "log.jsonl",
        "--eval-interval", "4", "--eval-iters", "1", "--save", tmp_path / "ck",
        "--log-params-norm", "--log-num-zeros-in-grad", "--log-throughput",
        "--log-timers-to-tensorboard", "--log-memory-to-tensorboard",
        "--log-validation-ppl-to-tensorboard",
        "--profile", "--use-pytorch-profiler", "--profile-step-start", "1",
        "--profile-step-end", "3"])
    scalars = _scalars(tb)
    # --tensorboard-log-interval 2: TensorBoard every 2 iterations, the console/JSONL every 3.
    assert sorted(scalars["train/lm_loss"]) == [2, 4], scalars["train/lm_loss"]
    train, valid = read_log(tmp_path / "log.jsonl")
    assert [r["iteration"] for r in train] == [3], train
    assert "iter      3/4" in res.stdout and "iter      4/4" not in res.stdout
    for tag in ("params_norm", "num_zeros_in_grad", "throughput_tflops", "iteration_time_s",
                "mem_max_rss_bytes"):
        assert sorted(scalars[f"train/{tag}"]) == [2, 4], (tag, scalars.get(f"train/{tag}"))
    assert all(v > 0 for v in scalars["train/throughput_tflops"].values())
    assert all(v == int(v) >= 0 for v in scalars["train/num_zeros_in_grad"].values())
    assert "params norm" in res.stdout and "TFLOP/s/device" in res.stdout
    # --log-validation-ppl-to-tensorboard: exp(min(20, lm loss)).
    ppl, loss = scalars["valid/lm_ppl"][4], scalars["valid/lm_loss"][4]
    assert ppl == pytest.approx(math.exp(loss), rel=1e-5) and valid[0]["lm_ppl"] == pytest.approx(ppl)
    # --log-params-norm: the norm after step 4 is the norm of the checkpoint saved after it.
    want = _checkpoint_params_norm(tmp_path / "ck" / "iter_0000004", tmp_path)
    assert scalars["train/params_norm"][4] == pytest.approx(want, rel=1e-5)
    # --profile --use-pytorch-profiler: a Chrome trace of the profiled steps in --tensorboard-dir.
    traces = glob.glob(str(tb / "*.pt.trace.json"))
    assert len(traces) == 1, os.listdir(tb)
    with open(traces[0]) as f:
        steps = {e["name"] for e in json.load(f)["traceEvents"]
                 if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#1", "ProfilerStep#2"}, steps


def test_without_the_flags_nothing_extra_is_written_and_logging_level_silences(tmp_path):
    tb, wb = tmp_path / "tb", tmp_path / "wb"
    res = run_engine(TINY + [
        "--train-iters", "2", "--log-interval", "1", "--tensorboard-dir", tb,
        "--log-jsonl", tmp_path / "log.jsonl", "--logging-level", "30",
        "--wandb-project", "p", "--wandb-entity", "my-team", "--wandb-exp-name", "my-run",
        "--wandb-save-dir", wb])
    scalars = _scalars(tb)
    assert sorted(scalars["train/lm_loss"]) == [1, 2]
    for tag in ("params_norm", "num_zeros_in_grad", "throughput_tflops", "iteration_time_s",
                "mem_max_rss_bytes"):
        assert f"train/{tag}" not in scalars, tag
    assert not glob.glob(str(tb / "*.pt.trace.json"))
    # --logging-level 30 (WARNING): the run's info lines are gone, its logs are not.
    assert "training gpt model" not in res.stdout and "iter      2/2" not in res.stdout
    assert [r["iteration"] for r in read_log(tmp_path / "log.jsonl")[0]] == [1, 2]
    # --wandb-entity/--wandb-exp-name/--wandb-save-dir: the offline run records them.
    runs = glob.glob(str(wb / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1, glob.glob(str(wb / "**"), recursive=True)
    blob = open(runs[0], "rb").read()
    assert b"my-team" in blob and b"my-run" in blob


def test_params_norm_under_tensor_parallelism_counts_each_parameter_once(tmp_path):
    tb = tmp_path / "tb"
    run_engine(TINY + ["--train-iters", "2", "--tensor-model-parallel-size", "2",
                       "--tensorboard-dir", tb, "--log-params-norm", "--save", tmp_path / "ck"],
               nproc=2)
    got = _scalars(tb)["train/params_norm"][2]
    assert got == pytest.approx(_checkpoint_params_norm(tmp_path / "ck" / "iter_0000002",
                                                        tmp_path), rel=1e-5)
