"""OptimizerConfig and DistributedDataParallelConfig are built by field name, as Megatron-LM 0.16.1
builds them (training/core_configs.py): every field the project has a flag for reaches the config
with the flag's value, and the suite's default flags build what the former hand-listed arguments
built, up to the fields Megatron-LM also passes (listed)."""

import dataclasses

import pytest
import torch

from megatron_nitp.training.core_configs import ddp_config_from_args, optimizer_config_from_args
from megatron_nitp.training.run_config import fields_by_name
from megatron_nitp.training.validation import validate_args
from tests.helpers import suite_parse_args

TINY = ["--vocab-size", "64", "--train-iters", "2", "--mock-data"]

# field: (argv, value the built config must hold). Groups that cannot share one run are split.
OPTIMIZER_FLAGS = {
    "lr": (["--lr", "2e-3"], 2e-3),
    "min_lr": (["--min-lr", "1e-5"], 1e-5),
    "decoupled_lr": (["--decoupled-lr", "5e-3"], 5e-3),
    "decoupled_min_lr": (["--decoupled-min-lr", "1e-4"], 1e-4),
    "weight_decay": (["--weight-decay", "0.05"], 0.05),
    "adam_beta1": (["--adam-beta1", "0.8"], 0.8),
    "adam_beta2": (["--adam-beta2", "0.9"], 0.9),
    "adam_eps": (["--adam-eps", "1e-6"], 1e-6),
    "clip_grad": (["--clip-grad", "0.5"], 0.5),
    "use_distributed_optimizer": (["--use-distributed-optimizer"], True),
    "log_num_zeros_in_grad": (["--log-num-zeros-in-grad"], True),
    "overlap_param_gather": (["--overlap-grad-reduce", "--overlap-param-gather"], True),
    "optimizer": (["--optimizer", "adam"], "adam"),  # the only choice
}
FP16_FLAGS = {
    "fp16": (["--fp16"], True),
    "loss_scale": (["--loss-scale", "128"], 128.0),
    "initial_loss_scale": (["--initial-loss-scale", "1024"], 1024.0),
    "min_loss_scale": (["--min-loss-scale", "4"], 4.0),
    "loss_scale_window": (["--loss-scale-window", "50"], 50.0),
    "hysteresis": (["--hysteresis", "3"], 3),
}
BF16_FLAGS = {"bf16": (["--bf16"], True)}
# Transformer Engine flags: refused at validation without TE on a GPU, so these args stay
# parsed only (as a TE GPU run's would reach the builder).
FP8_FLAGS = {"fp8_recipe": (["--fp8-recipe", "tensorwise"], "tensorwise")}
DDP_FLAGS = {
    "overlap_grad_reduce": (["--overlap-grad-reduce"], True),
    "overlap_param_gather": (["--overlap-grad-reduce", "--overlap-param-gather"], True),
    "use_distributed_optimizer": (["--use-distributed-optimizer"], True),
}
DDP_FP8_FLAGS = {"fp8_param_gather": (["--fp8-param-gather"], True)}
# Megatron-FSDP's fields: flags refused unless at their defaults (training/megatron_compat.py),
# so they are not taken: DDP keeps its own defaults.
FSDP_NOT_TAKEN = {"use_megatron_fsdp", "data_parallel_sharding_strategy", "nccl_ub",
                  "fsdp_double_buffer"}


def _argv(flags):
    return TINY + [a for argv, _ in flags.values() for a in argv]


def _validated(flags):
    args = suite_parse_args(_argv(flags))
    validate_args(args, world_size=2)
    return args


def test_every_field_taken_by_name_is_a_flag_tested_here():
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import AdamOptimizerConfig

    args = suite_parse_args(TINY)
    tested = {**OPTIMIZER_FLAGS, **FP16_FLAGS, **BF16_FLAGS, **FP8_FLAGS}
    # A new flag whose dest is a config field reaches megatron-core: check it has Megatron-LM's
    # meaning, then list it here (or exclude it in core_configs.py, with the reason).
    assert set(fields_by_name(AdamOptimizerConfig, args)) == set(tested)
    assert set(fields_by_name(DistributedDataParallelConfig, args)) == \
        set(DDP_FLAGS) | set(DDP_FP8_FLAGS)
    assert all(hasattr(args, name) for name in FSDP_NOT_TAKEN)


@pytest.mark.parametrize("flags,validate", [(OPTIMIZER_FLAGS, True), (FP16_FLAGS, True),
                                            (BF16_FLAGS, True), (FP8_FLAGS, False)])
def test_each_optimizer_flag_reaches_the_config(flags, validate):
    args = _validated(flags) if validate else suite_parse_args(_argv(flags))
    default = optimizer_config_from_args(suite_parse_args(TINY))
    config = optimizer_config_from_args(args)
    for field, (argv, want) in flags.items():
        assert getattr(config, field) == want, (field, argv)
        assert field == "optimizer" or getattr(default, field) != want, (field, "not a change")
    if "fp16" in flags or "bf16" in flags:  # the precision derivation still applies
        assert config.params_dtype == (torch.float16 if "fp16" in flags else torch.bfloat16)


@pytest.mark.parametrize("flags,validate", [(DDP_FLAGS, True), (DDP_FP8_FLAGS, False)])
def test_each_ddp_flag_reaches_the_config(flags, validate):
    args = _validated(flags) if validate else suite_parse_args(_argv(flags))
    default = ddp_config_from_args(suite_parse_args(TINY))
    config = ddp_config_from_args(args)
    for field, (argv, want) in flags.items():
        assert getattr(config, field) == want and getattr(default, field) != want, (field, argv)
    assert not config.check_for_nan_in_grad  # megatron-nitp skips a non-finite step instead


def test_ddp_config_takes_the_precision_derivation():
    # --bf16 implies --accumulate-allreduce-grads-in-fp32 (Megatron-LM's validate_args).
    assert ddp_config_from_args(_validated(BF16_FLAGS)).grad_reduce_in_fp32
    assert not ddp_config_from_args(_validated({})).grad_reduce_in_fp32


def _hand_listed(args):
    """What training/step.py built before (b441b99), field for field."""
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig

    from megatron_nitp.parallel.precision import ddp_precision_config, optimizer_precision_config

    optimizer = OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, decoupled_lr=args.decoupled_lr,
        decoupled_min_lr=args.decoupled_min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        clip_grad=args.clip_grad, use_distributed_optimizer=args.use_distributed_optimizer,
        **optimizer_precision_config(args), log_num_zeros_in_grad=args.log_num_zeros_in_grad)
    ddp = DistributedDataParallelConfig(
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer, **ddp_precision_config(args))
    return optimizer, ddp


def _differences(a, b):
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)}


@pytest.mark.parametrize("flags", [{}, OPTIMIZER_FLAGS, FP16_FLAGS, BF16_FLAGS, DDP_FLAGS])
def test_configs_equal_the_former_hand_list(flags):
    args = _validated(flags)
    old_optimizer, old_ddp = _hand_listed(args)
    # Megatron-LM passes these too (by name); the hand list left megatron-core's defaults.
    taken_now = {"fp8_recipe": (None, args.fp8_recipe),
                 "overlap_param_gather": (False, args.overlap_param_gather)}
    got = _differences(old_optimizer, optimizer_config_from_args(args))
    assert got == {k: v for k, v in taken_now.items() if v[0] != v[1]}
    assert _differences(old_ddp, ddp_config_from_args(args)) == {}
