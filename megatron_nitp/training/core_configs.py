"""megatron-core's OptimizerConfig and DistributedDataParallelConfig from the flags, built by field
name as Megatron-LM 0.16.1 builds them (training.py: get_megatron_optimizer_config, and get_model's
DDP kwargs): every field whose name is a flag's dest is taken from args, then the derivations.

Taken by name, each Megatron-LM's flag with Megatron-LM's meaning (tests/unit/test_core_configs.py
pins the list, so a new flag that lands on a field is a decision, not an accident):
- OptimizerConfig: lr, min_lr, decoupled_lr, decoupled_min_lr, weight_decay, adam_beta1/2,
  adam_eps, clip_grad, use_distributed_optimizer, log_num_zeros_in_grad, fp16, bf16, loss_scale,
  initial_loss_scale, min_loss_scale, loss_scale_window, hysteresis, optimizer; and, as in
  Megatron-LM, fp8_recipe (the distributed optimizer shards fp8 parameters by it) and
  overlap_param_gather (read there only with MXFP8 buffer reuse, not a flag here).
- DistributedDataParallelConfig: overlap_grad_reduce, overlap_param_gather,
  use_distributed_optimizer, fp8_param_gather. The Megatron-LM flags accepted as no-ops or
  refused (training/megatron_compat.py: the Megatron-FSDP ones among them) are not taken.

Derived after, overriding what came by name:
- precision (parallel/precision.py): fp16/bf16/params_dtype and loss scaling for the optimizer;
  grad_reduce_in_fp32 = --accumulate-allreduce-grads-in-fp32, Megatron-LM's own derivation.
- optimizer "adam" (AdamW), the only --optimizer choice.
- check_for_nan_in_grad keeps DDP's default False: Megatron-LM sets it from
  --check-for-nan-in-loss-and-grad (DDP then raises on a NaN gradient); megatron-nitp checks
  every step itself and skips a non-finite one (train_step, --max-bad-steps), and documents that
  flag as a no-op.
- bucket_size: DDP's own default, which is Megatron-LM's without --ddp-bucket-size (not a flag).
The decoupled-lr param groups are the optimizer's overrides (training/decoupled_lr.py).
"""

from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import AdamOptimizerConfig

from ..parallel.precision import ddp_precision_config, optimizer_precision_config
from .run_config import fields_by_name


def optimizer_config_from_args(args) -> AdamOptimizerConfig:
    kwargs = fields_by_name(AdamOptimizerConfig, args)
    kwargs.update(optimizer="adam", **optimizer_precision_config(args))
    return AdamOptimizerConfig(**kwargs)


def ddp_config_from_args(args) -> DistributedDataParallelConfig:
    kwargs = fields_by_name(DistributedDataParallelConfig, args)
    kwargs.update(ddp_precision_config(args))
    return DistributedDataParallelConfig(**kwargs)
