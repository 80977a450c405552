"""Configuration checks that run before any process group or model exists.

Each failure is one ConfigError whose message names the option(s) and what would be valid; the
entry point prints it as a single line and exits 2 (tracebacks only with --debug).
"""

import importlib.util
import math
import os

from .log import info
from ..data.data_args import data_args_errors
from ..errors import UserError
from ..nitp.config import NITPConfig, NITPConfigError
from ..models.moe_parallel import moe_parallel_notices
from ..models.options import option_errors
from ..models.mtp import mtp_errors
from ..models.pipeline_layout import pipeline_errors, uneven, virtual_pipeline_size
from .checkpoint_flags import checkpoint_flag_errors, checkpoint_flag_notices
from .flag_ranges import range_errors
from .megatron_defaults import deviation_notices, required_errors
from .megatron_compat import check_megatron_compat
from .decoupled_lr import decoupled_lr_errors, decoupled_lr_notices
from .sample_schedule import derive_train_iters, sample_schedule_errors, schedule_lengths


class ConfigError(UserError, ValueError):
    """A bad flag or flag combination (training arguments)."""


def launch_world_size() -> int:
    env = os.environ
    return int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)


def validate_args(args, world_size=None):
    world_size = world_size or launch_world_size()
    for message in required_errors(args):  # what Megatron-LM requires, before anything else
        raise ConfigError(message)
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    ep = args.expert_model_parallel_size
    for message in range_errors(args):  # every numeric flag, before the cross-flag checks
        raise ConfigError(message)
    for message in checkpoint_flag_errors(args):
        raise ConfigError(message)
    message = check_megatron_compat(args)  # Megatron-LM flags: no-op notices, refusals
    if message:
        raise ConfigError(message)
    for message in data_args_errors(args):
        raise ConfigError(message)
    for message in checkpoint_flag_notices(args):
        info(message)
    _validate_shape_and_outputs(args)
    if world_size % (tp * pp * cp) != 0:
        raise ConfigError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
            f"--pipeline-model-parallel-size {pp} x --context-parallel-size {cp} = {tp * pp * cp}")
    dp = world_size // (tp * pp * cp)
    args.data_parallel_size = dp
    # megatron-core lays experts out over expert-TP (= TP here) x EP x PP ranks
    # (parallel_state.initialize_model_parallel): EP must divide DP x CP.
    if ep > 1 and (dp * cp) % ep != 0:
        raise ConfigError(f"--expert-model-parallel-size {ep}: must divide data-parallel x "
                          f"--context-parallel-size = {dp * cp} (world {world_size} / (TP {tp} x "
                          f"PP {pp}))")
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    if args.global_batch_size % (args.micro_batch_size * dp) != 0:
        raise ConfigError(
            f"--global-batch-size {args.global_batch_size}: must be a multiple of "
            f"--micro-batch-size {args.micro_batch_size} x data-parallel size {dp}")
    for message in pipeline_errors(args) + mtp_errors(args):  # models/pipeline_layout.py, mtp.py
        raise ConfigError(message)
    if args.num_layers % pp != 0 and not uneven(args):
        raise ConfigError(f"--num-layers {args.num_layers}: must be divisible by "
                          f"--pipeline-model-parallel-size {pp}")
    for flag in ("num_layers_per_virtual_pipeline_stage", "num_virtual_stages_per_pipeline_rank"):
        if getattr(args, flag) and pp == 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: needs "
                              "--pipeline-model-parallel-size > 1")
    if args.num_layers_per_virtual_pipeline_stage or virtual_pipeline_size(args):
        per_stage = args.num_layers // pp
        if (args.num_layers_per_virtual_pipeline_stage
                and per_stage % args.num_layers_per_virtual_pipeline_stage != 0):
            raise ConfigError(
                f"--num-layers-per-virtual-pipeline-stage "
                f"{args.num_layers_per_virtual_pipeline_stage}: must divide the "
                f"{per_stage} layers per pipeline stage")
        num_mb = args.global_batch_size // (args.micro_batch_size * dp)
        if num_mb % pp != 0:
            raise ConfigError(
                f"--global-batch-size {args.global_batch_size}: the interleaved schedule needs "
                f"a number of microbatches ({num_mb}) divisible by "
                f"--pipeline-model-parallel-size {pp}")
    if args.sequence_parallel and tp == 1:
        info("warning: --sequence-parallel has no effect with --tensor-model-parallel-size 1; "
             "disabled")
        args.sequence_parallel = False
    sp_multiple = tp * cp * (2 if cp > 1 else 1)
    if args.sequence_parallel and args.seq_length % sp_multiple != 0:
        raise ConfigError(f"--seq-length {args.seq_length}: must be divisible by TP {tp} x CP "
                          f"{cp}{' x 2' if cp > 1 else ''} = {sp_multiple} with "
                          "--sequence-parallel")
    if cp > 1 and args.seq_length % (2 * cp) != 0:
        raise ConfigError(f"--seq-length {args.seq_length}: must be divisible by 2 x "
                          f"--context-parallel-size {cp}")
    if args.num_attention_heads % tp != 0:
        raise ConfigError(f"--num-attention-heads {args.num_attention_heads}: must be divisible "
                          f"by --tensor-model-parallel-size {tp}")
    if args.num_query_groups % tp != 0 or args.num_attention_heads % args.num_query_groups:
        raise ConfigError(f"--num-query-groups {args.num_query_groups}: must divide "
                          f"--num-attention-heads and be divisible by TP {tp}")
    _validate_moe(args)
    _validate_schedule(args)
    derive_train_iters(args)  # --train-samples: its iterations, now that the schedule is valid
    _validate_impl(args)
    _validate_exits(args)
    nitp = NITPConfig.from_args(args)
    try:
        nitp.validate(args.num_layers, args.hidden_size, tp)
    except NITPConfigError as e:
        raise ConfigError(str(e))
    if nitp.enabled:
        if args.enable_cuda_graph:
            raise ConfigError("--enable-cuda-graph: not supported with --nitp (graph replay "
                              "skips the Python forward of layer k, which captures the implicit target)")
        if args.overlap_moe_expert_parallel_comm:
            raise ConfigError("--overlap-moe-expert-parallel-comm: not supported with --nitp "
                              "(the overlapped schedule runs layer k's parts, not its forward, which "
                              "captures the implicit target)")
        if not nitp.stop_grad and args.recompute_granularity == "full":
            raise ConfigError("--nitp-no-stop-grad with --recompute-granularity full: the "
                              "target is captured inside a recomputed (no-grad) block; use "
                              "selective recompute or keep stop-grad")
    return nitp


def _validate_shape_and_outputs(args):
    """What megatron-core would build silently wrong, or fail on mid-step."""
    if args.kv_channels is None:  # _fill_defaults leaves it unset when it does not divide
        raise ConfigError(f"--hidden-size {args.hidden_size}: not divisible by "
                          f"--num-attention-heads {args.num_attention_heads}; give --kv-channels "
                          "(the head dimension) or a hidden size that is a multiple of the heads")
    if args.position_embedding_type == "rope" and args.kv_channels % 2:
        raise ConfigError(f"--kv-channels {args.kv_channels} (the head dimension): RoPE rotates "
                          "pairs of channels and needs an even head dimension")
    if args.nitp and args.nitp_shift == 1 and args.seq_length < 2:
        raise ConfigError(f"--seq-length {args.seq_length}: NITP predicts the next position's "
                          "target and needs --seq-length >= 2")
    if args.train_iters == 0 and not args.save:
        raise ConfigError("--train-iters 0: needs --save (it writes the initial model as "
                          "iteration 0); give --save DIR or --train-iters >= 1")
    if args.wandb_project and os.environ.get("WANDB_MODE", "offline") in ("online", "run") \
            and not _wandb_api_key():
        raise ConfigError(f"--wandb-project {args.wandb_project}: WANDB_MODE="
                          f"{os.environ['WANDB_MODE']} but no wandb API key (set WANDB_API_KEY "
                          "or run `wandb login`), or unset WANDB_MODE to log offline")


def _wandb_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def _validate_schedule(args):
    """megatron's OptimizerParamScheduler asserts these; say it in terms of the flags."""
    for message in sample_schedule_errors(args):
        raise ConfigError(message)
    for message in decoupled_lr_errors(args):
        raise ConfigError(message)
    for message in decoupled_lr_notices(args):
        info(message)
    if args.train_samples is not None:
        warmup, decay, _, _ = schedule_lengths(args)
        if warmup >= decay:
            raise ConfigError(f"--lr-warmup-samples/--lr-warmup-fraction: the warmup ({warmup:g} "
                              f"samples) must be shorter than the decay ({decay} samples, "
                              "--lr-decay-samples, default --train-samples)")
        return  # the checks below are the iteration-based ones
    if args.lr_decay_iters < 1 and args.train_iters:  # 0 only for a seed checkpoint
        raise ConfigError(f"--lr-decay-iters {args.lr_decay_iters}: must be >= 1 (the length of "
                          "the decay; default --train-iters)")
    if args.lr_decay_iters and args.lr_warmup_iters >= args.lr_decay_iters:
        raise ConfigError(f"--lr-warmup-iters {args.lr_warmup_iters}: must be smaller than the "
                          f"decay length (--lr-decay-iters, default --train-iters) "
                          f"{args.lr_decay_iters}")
    if args.lr_decay_style == "WSD" and args.lr_wsd_decay_iters is not None and (
            args.lr_wsd_decay_iters > args.lr_decay_iters - args.lr_warmup_iters):
        raise ConfigError(f"--lr-wsd-decay-iters {args.lr_wsd_decay_iters}: longer than the "
                          f"{args.lr_decay_iters - args.lr_warmup_iters} iterations after warmup")
    if args.min_lr > args.lr:
        raise ConfigError(f"--min-lr {args.min_lr}: must not exceed --lr {args.lr}")


def _validate_moe(args):
    moe_flags = [f for f, v in (("--moe-router-topk", args.moe_router_topk != 2),
                                ("--moe-ffn-hidden-size", args.moe_ffn_hidden_size),
                                ("--moe-shared-expert-intermediate-size",
                                 args.moe_shared_expert_intermediate_size),
                                ("--expert-model-parallel-size",
                                 args.expert_model_parallel_size > 1),
                                ("--moe-layer-freq", args.moe_layer_freq != 1),
                                ("--moe-grouped-gemm", args.moe_grouped_gemm),
                                ("--moe-shared-expert-overlap", args.moe_shared_expert_overlap),
                                ("--moe-aux-loss-coeff", args.moe_aux_loss_coeff))
                 if v]
    if not args.num_experts:
        if moe_flags:
            raise ConfigError(f"{moe_flags[0]}: given without --num-experts")
        return
    if args.moe_router_topk > args.num_experts:
        raise ConfigError(f"--moe-router-topk {args.moe_router_topk}: must be <= --num-experts "
                          f"{args.num_experts}")
    if args.num_experts % args.expert_model_parallel_size != 0:
        raise ConfigError(f"--expert-model-parallel-size {args.expert_model_parallel_size}: "
                          f"must divide --num-experts {args.num_experts}")
    if args.moe_router_topk < 1:
        raise ConfigError(f"--moe-router-topk {args.moe_router_topk}: must be >= 1")
    freq = args.moe_layer_freq
    if isinstance(freq, list):
        if len(freq) != args.num_layers:
            raise ConfigError(f"--moe-layer-freq: pattern has {len(freq)} entries, expected "
                              f"--num-layers {args.num_layers}")
        if not set(freq) <= {0, 1} or 1 not in freq:
            raise ConfigError("--moe-layer-freq: pattern entries must be 0 (dense) or 1 (MoE), "
                              "with at least one MoE layer")
    elif not 1 <= freq <= args.num_layers:
        raise ConfigError(f"--moe-layer-freq {freq}: must be in [1, --num-layers "
                          f"{args.num_layers}] (every Nth layer is MoE)")


def _validate_impl(args):
    impl = args.transformer_impl
    if impl != "local" and importlib.util.find_spec("transformer_engine") is not None:
        # Only here is megatron-core imported (seconds of CPU): without TE the answer is known.
        from ..models.specs import resolve_transformer_impl

        try:
            impl = resolve_transformer_impl(impl)
        except ValueError as e:
            raise ConfigError(str(e))
    elif args.dry_run and impl in (None, "transformer_engine"):
        # A dry run plans the GPU run, which uses Transformer Engine (dry_run.py).
        impl = "transformer_engine"
        args.run_time_needs = ["Transformer Engine (--transformer-impl transformer_engine; "
                               "not importable here)"]
    elif impl == "transformer_engine":
        raise ConfigError("--transformer-impl transformer_engine: Transformer Engine is not "
                          "importable here; use --transformer-impl local")
    else:
        impl = "local"
    resolved = dict(transformer_impl=impl, max_position_embeddings=args.max_position_embeddings,
                    tokenizer_type=args.tokenizer_type)
    for message in deviation_notices(args, resolved):
        info(message)
    for message in moe_parallel_notices(args):
        info(message)
    for message in option_errors(args, impl):  # models/options.py: family options
        raise ConfigError(message)
    if args.context_parallel_size > 1 and impl == "local":
        raise ConfigError("--context-parallel-size > 1: needs --transformer-impl "
                          "transformer_engine (megatron's local attention has no CP)")
    if args.reset_attention_mask and impl != "local":
        # TE's attention with the causal mask type ignores the per-sample mask tensor.
        raise ConfigError("--reset-attention-mask: needs --transformer-impl local (Transformer "
                          "Engine's causal attention would ignore the document mask)")
    # On CPU, bf16 is allowed: torch's CPU kernels compute in bf16 (slowly, but correctly enough
    # to debug a bf16 configuration). Only a GPU without bf16 is rejected.
    import torch

    if args.overlap_param_gather and not (args.use_distributed_optimizer
                                          and args.overlap_grad_reduce):
        # Megatron-LM's rule: the gather it overlaps is the distributed optimizer's.
        raise ConfigError("--overlap-param-gather: needs --use-distributed-optimizer and "
                          "--overlap-grad-reduce")
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        raise ConfigError("--override-opt_param-scheduler and --use-checkpoint-opt_param-"
                          "scheduler: give at most one (flags win, or the checkpoint wins)")
    if args.finetune and not (args.load or args.pretrained_checkpoint):
        raise ConfigError("--finetune: needs --load (the checkpoint whose weights to start from)")
    if args.bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("--bf16: this GPU has no bf16 support (needs Ampere or newer); "
                          "drop --bf16")
    _validate_precision(args, impl, torch.cuda.is_available())


def _validate_precision(args, impl, cuda):
    """--fp16/--bf16 loss scaling, recompute, fp8 (parallel/precision.py)."""
    from ..parallel.precision import (derive_precision_args, precision_errors,
                                      precision_notices, precision_run_needs)

    derive_precision_args(args)
    for message in precision_errors(args, impl, cuda):
        raise ConfigError(message)
    for line in precision_notices(args) + (precision_run_needs(args) if args.dry_run else []):
        info(line)


def _validate_exits(args):
    """Preemption exits only help a requeue if they leave a checkpoint behind."""
    if args.exit_duration_in_mins is not None and not (
            math.isfinite(args.exit_duration_in_mins) and args.exit_duration_in_mins > 0):
        raise ConfigError(f"--exit-duration-in-mins {args.exit_duration_in_mins}: must be a "
                          "positive number of minutes")
    for flag, on in (("--exit-signal-handler", args.exit_signal_handler),
                     ("--exit-duration-in-mins", args.exit_duration_in_mins)):
        if on and not args.save:
            info(f"warning: {flag} without --save: the run will exit 0 without a checkpoint, "
                 "so a requeue starts over")
