"""Megatron-LM 0.16.1's logging/profiling flags: names, defaults (cited from its source), the
combinations refused before any work, and the debug fault-injection table."""

import pytest

from megatron_nitp.training.arguments import parse_args
from megatron_nitp.training.debug import DebugFaults
from megatron_nitp.training.profiling import check_profile_args
from megatron_nitp.training.validation import ConfigError

BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "32", "--micro-batch-size", "2", "--train-iters", "2"]

# Megatron-LM core_v0.16.1: megatron/training/training_config.py (LoggerConfig) and
# megatron/training/common_config.py (ProfilingConfig; --profile is use_nsys_profiler, dest
# profile), turned into flags by megatron/training/arguments.py (_add_logging_args,
# _add_profile_args).
MEGATRON_DEFAULTS = {
    "log_params_norm": False, "log_num_zeros_in_grad": False, "log_throughput": False,
    "log_timers_to_tensorboard": False, "log_memory_to_tensorboard": False,
    "log_validation_ppl_to_tensorboard": False, "tensorboard_log_interval": 1,
    "wandb_project": None, "wandb_entity": None, "wandb_exp_name": None,
    "wandb_save_dir": None, "logging_level": None, "tensorboard_dir": None,
    "profile": False, "profile_step_start": 10, "profile_step_end": 12,
    "use_pytorch_profiler": False, "profile_ranks": [0],
}


def test_defaults_are_megatron_lm_s():
    args = parse_args(BASE)
    assert {k: getattr(args, k) for k in MEGATRON_DEFAULTS} == MEGATRON_DEFAULTS


def test_values_parse_as_megatron_lm_s():
    args = parse_args(BASE + ["--logging-level", "10", "--tensorboard-log-interval", "5",
                              "--profile-ranks", "0", "3", "--wandb-entity", "team"])
    assert (args.logging_level, args.tensorboard_log_interval, args.profile_ranks,
            args.wandb_entity) == (10, 5, [0, 3], "team")


@pytest.mark.parametrize("argv, message", [
    (["--profile", "--use-pytorch-profiler", "--tensorboard-dir", "tb",
      "--profile-step-start", "3", "--profile-step-end", "3"],
     "--profile-step-end 3: must be greater than --profile-step-start 3"),
    (["--profile", "--use-pytorch-profiler"], "--use-pytorch-profiler: the trace is written to "
                                              "--tensorboard-dir"),
])
def test_profiling_that_could_not_profile_is_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        check_profile_args(parse_args(BASE + argv))


def test_nsys_profiling_needs_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--profile: without --use-pytorch-profiler"):
        check_profile_args(parse_args(BASE + ["--profile"]))
    check_profile_args(parse_args(BASE + ["--use-pytorch-profiler"]))  # without --profile: off


def test_debug_faults_table():
    off = DebugFaults.from_env({})
    assert not off.nan_at(3) and off.notice() is None
    f = DebugFaults.from_env({"MEGATRON_NITP_TEST_NAN_ITERS": "3,4",
                              "MEGATRON_NITP_TEST_SLOW_SAVE": "0.5@2"})
    assert f.nan_at(3) and f.nan_at(4) and not f.nan_at(5)
    assert (f.slow_save_s, f.slow_save_at) == (0.5, 2)
    assert "MEGATRON_NITP_TEST_NAN_ITERS" in f.notice()
