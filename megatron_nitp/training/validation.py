"""Configuration checks that run before any process group or model exists.

Each failure is one ConfigError whose message names the option(s) and what would be valid; the
entry point prints it as a single line and exits 2 (tracebacks only with --debug).
"""

import os

import torch

from ..nitp.config import NITPConfig, NITPConfigError


class ConfigError(ValueError):
    pass


def launch_world_size() -> int:
    env = os.environ
    return int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)


def validate_args(args, world_size=None):
    world_size = world_size or launch_world_size()
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    ep = args.expert_model_parallel_size
    for name, v in (("--tensor-model-parallel-size", tp), ("--pipeline-model-parallel-size", pp),
                    ("--context-parallel-size", cp), ("--expert-model-parallel-size", ep)):
        if v < 1:
            raise ConfigError(f"{name} {v}: must be >= 1")
    if world_size % (tp * pp * cp) != 0:
        raise ConfigError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
            f"--pipeline-model-parallel-size {pp} x --context-parallel-size {cp} = {tp * pp * cp}")
    dp = world_size // (tp * pp * cp)
    args.data_parallel_size = dp
    if ep > 1 and (dp * cp * tp) % ep != 0:
        raise ConfigError(f"--expert-model-parallel-size {ep}: must divide DP x CP x TP = "
                          f"{dp * cp * tp} (world {world_size})")
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    if args.global_batch_size % (args.micro_batch_size * dp) != 0:
        raise ConfigError(
            f"--global-batch-size {args.global_batch_size}: must be a multiple of "
            f"--micro-batch-size {args.micro_batch_size} x data-parallel size {dp}")
    if args.num_layers % pp != 0:
        raise ConfigError(f"--num-layers {args.num_layers}: must be divisible by "
                          f"--pipeline-model-parallel-size {pp}")
    if args.num_layers_per_virtual_pipeline_stage:
        if pp == 1:
            raise ConfigError("--num-layers-per-virtual-pipeline-stage: needs "
                              "--pipeline-model-parallel-size > 1")
        per_stage = args.num_layers // pp
        if per_stage % args.num_layers_per_virtual_pipeline_stage != 0:
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
        print("warning: --sequence-parallel has no effect with --tensor-model-parallel-size 1; "
              "disabled", flush=True)
        args.sequence_parallel = False
    if args.sequence_parallel and args.seq_length % (tp * cp * (2 if cp > 1 else 1)) != 0:
        raise ConfigError(f"--seq-length {args.seq_length}: must be divisible by TP x CP"
                          f"{' x 2' if cp > 1 else ''} with --sequence-parallel")
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
    _validate_impl(args)
    nitp = NITPConfig.from_args(args)
    try:
        nitp.validate(args.num_layers, args.hidden_size, tp)
    except NITPConfigError as e:
        raise ConfigError(str(e))
    if nitp.enabled:
        if args.enable_cuda_graph:
            raise ConfigError("--enable-cuda-graph: not supported with --nitp (graph replay "
                              "bypasses the layer hook that captures the implicit target)")
        if args.overlap_moe_expert_parallel_comm:
            raise ConfigError("--overlap-moe-expert-parallel-comm: not supported with --nitp "
                              "(the overlapped schedule bypasses the target hook)")
        if not nitp.stop_grad and args.recompute_granularity == "full":
            raise ConfigError("--nitp-no-stop-grad with --recompute-granularity full: the "
                              "target is captured inside a recomputed (no-grad) block; use "
                              "selective recompute or keep stop-grad")
    return nitp


def _validate_moe(args):
    moe_flags = [f for f, v in (("--moe-router-topk", args.moe_router_topk != 2),
                                ("--moe-ffn-hidden-size", args.moe_ffn_hidden_size),
                                ("--moe-shared-expert-intermediate-size",
                                 args.moe_shared_expert_intermediate_size),
                                ("--expert-model-parallel-size",
                                 args.expert_model_parallel_size > 1)) if v]
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
    freq = args.moe_layer_freq
    if isinstance(freq, list) and len(freq) != args.num_layers:
        raise ConfigError(f"--moe-layer-freq: pattern has {len(freq)} entries, expected "
                          f"--num-layers {args.num_layers}")


def _validate_impl(args):
    from ..models.specs import resolve_transformer_impl

    try:
        impl = resolve_transformer_impl(args.transformer_impl)
    except ValueError as e:
        raise ConfigError(str(e))
    if args.context_parallel_size > 1 and impl == "local":
        raise ConfigError("--context-parallel-size > 1: needs --transformer-impl "
                          "transformer_engine (megatron's local attention has no CP)")
    if args.bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("--bf16: this GPU has no bf16 support (needs Ampere or newer); "
                          "drop --bf16")
