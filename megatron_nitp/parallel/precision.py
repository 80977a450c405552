"""Precision, activation recompute and fp8 flags: Megatron-LM 0.16.1's meaning on megatron-core.

Megatron-LM copies these flags into megatron-core's configs (TransformerConfig in
core_transformer_config_from_args, DistributedDataParallelConfig in get_model, OptimizerConfig
in get_megatron_optimizer_config); the same fields are filled here, from the same flags, with
Megatron-LM's derivations (validate_args):

- --recompute-activations is --recompute-granularity selective;
- --apply-query-key-layer-scaling also sets --attention-softmax-in-fp32;
- under --bf16 the gradients are accumulated and all-reduced in fp32 unless --grad-reduce-in-bf16
  (--accumulate-allreduce-grads-in-fp32 is then implied); under --fp16 and fp32 only that flag
  asks for it;
- --fp16 uses megatron-core's Float16Module and mixed-precision optimizer with its
  DynamicGradScaler (--initial-loss-scale, --min-loss-scale, --loss-scale-window, --hysteresis),
  or a ConstantGradScaler with --loss-scale.

What needs Transformer Engine on a GPU (--fp8-*, --tp-comm-overlap) is refused in one line
elsewhere, before any work; a --dry-run accepts it and says what the run will need. Nothing here
imports megatron-core, so validation and dry runs stay cheap.
"""

import math

# megatron-core 0.16.1 TransformerConfig.__post_init__'s allowed selective-recompute modules.
RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe",
                     "shared_experts")

# TransformerConfig field -> args dest, for the fp8 family (the CLI names are Megatron-LM's:
# the field with dashes, except fp8 = --fp8-format and fp8_param = --fp8-param-gather).
FP8_FIELDS = {
    "fp8": "fp8", "fp8_recipe": "fp8_recipe", "fp8_param": "fp8_param_gather",
    "fp8_quantizer_factory": "fp8_quantizer_factory", "fp8_margin": "fp8_margin",
    "fp8_interval": "fp8_interval", "fp8_amax_history_len": "fp8_amax_history_len",
    "fp8_amax_compute_algo": "fp8_amax_compute_algo", "fp8_wgrad": "fp8_wgrad",
    "first_last_layers_bf16": "first_last_layers_bf16",
    "num_layers_at_start_in_bf16": "num_layers_at_start_in_bf16",
    "num_layers_at_end_in_bf16": "num_layers_at_end_in_bf16",
}
TP_COMM_FIELDS = {"tp_comm_overlap": "tp_comm_overlap",
                  "tp_comm_bootstrap_backend": "tp_comm_bootstrap_backend"}

# Flags given -> (dest, default): what counts as "asked for" in the one-line refusals.
_TE_GPU_FLAGS = (("--fp8-format", "fp8", None), ("--fp8-param-gather", "fp8_param_gather", False),
                 ("--tp-comm-overlap", "tp_comm_overlap", False))


def derive_precision_args(args) -> None:
    """Megatron-LM's validate_args derivations, applied once (idempotent)."""
    if args.recompute_activations:
        args.recompute_granularity = "selective"
    if args.apply_query_key_layer_scaling:
        args.attention_softmax_in_fp32 = True
    if args.bf16:
        if args.grad_reduce_in_bf16:
            args.accumulate_allreduce_grads_in_fp32 = False
        else:
            args.accumulate_allreduce_grads_in_fp32 = True


def uses_grad_scaler(args) -> bool:
    """megatron-core builds a grad scaler for fp16 (dynamic, or constant with --loss-scale) and
    for any run given --loss-scale (constant); the schedule must then scale the loss."""
    return bool(args.fp16 or args.loss_scale)


def params_dtype_name(args) -> str:
    return "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"


def _dtype(args):
    import torch

    return getattr(torch, params_dtype_name(args))


def _range_errors(args):
    for flag, value, ok, what in (
            ("--loss-scale", args.loss_scale, args.loss_scale is None or args.loss_scale > 0,
             "a positive number (a power of 2 is usual)"),
            ("--initial-loss-scale", args.initial_loss_scale, args.initial_loss_scale > 0,
             "a positive number"),
            ("--min-loss-scale", args.min_loss_scale, args.min_loss_scale > 0,
             "a positive number"),
            ("--loss-scale-window", args.loss_scale_window, args.loss_scale_window >= 1,
             ">= 1 (iterations)"),
            ("--hysteresis", args.hysteresis, args.hysteresis >= 1, ">= 1"),
            ("--fp8-margin", args.fp8_margin, args.fp8_margin >= 0, ">= 0"),
            ("--fp8-interval", args.fp8_interval, args.fp8_interval >= 1, ">= 1"),
            ("--fp8-amax-history-len", args.fp8_amax_history_len,
             args.fp8_amax_history_len >= 1, ">= 1"),
            ("--num-layers-at-start-in-bf16", args.num_layers_at_start_in_bf16,
             args.num_layers_at_start_in_bf16 >= 0, ">= 0"),
            ("--num-layers-at-end-in-bf16", args.num_layers_at_end_in_bf16,
             args.num_layers_at_end_in_bf16 >= 0, ">= 0")):
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            yield f"{flag} {value}: must be {what}"
    if not args.loss_scale and args.fp16 and args.min_loss_scale > args.initial_loss_scale:
        yield (f"--min-loss-scale {args.min_loss_scale}: must not exceed --initial-loss-scale "
               f"{args.initial_loss_scale}")


def _recompute_errors(args):
    """Megatron-LM's validate_args assertions and TransformerConfig's recompute checks, said in
    terms of the flags, before any process group exists."""
    g, method, n = args.recompute_granularity, args.recompute_method, args.recompute_num_layers
    per_stage = args.num_layers // max(args.pipeline_model_parallel_size, 1)
    modules = args.recompute_modules
    if modules is not None and g != "selective":
        yield ("--recompute-modules: only with --recompute-granularity selective (or "
               "--recompute-activations)")
    if g is None:
        for flag, value in (("--recompute-method", method), ("--recompute-num-layers", n),
                            ("--distribute-saved-activations", args.distribute_saved_activations)):
            if value:
                yield f"{flag}: needs --recompute-granularity full"
        return
    if g == "selective":
        if method is not None:
            yield (f"--recompute-method {method}: not with --recompute-granularity selective "
                   "(selective recompute always covers every layer)")
        if n is not None:
            yield (f"--recompute-num-layers {n}: not with --recompute-granularity selective; "
                   "choose the submodules with --recompute-modules")
        bad = sorted(set(modules or ()) - set(RECOMPUTE_MODULES))
        if bad:
            yield (f"--recompute-modules {' '.join(bad)}: not a recompute module; choose from "
                   f"{', '.join(RECOMPUTE_MODULES)}")
        mods = set(modules or ("core_attn",))
        if "moe_act" in mods and not args.moe_grouped_gemm:
            yield "--recompute-modules moe_act: needs --moe-grouped-gemm"
        if "mla_up_proj" in mods and not args.multi_latent_attention:
            yield "--recompute-modules mla_up_proj: needs --multi-latent-attention"
        if {"moe", "moe_act", "shared_experts"} & mods and not args.num_experts:
            yield (f"--recompute-modules {' '.join(sorted({'moe', 'moe_act', 'shared_experts'} & mods))}"
                   ": needs --num-experts (a MoE model)")
        if ("shared_experts" in mods and args.moe_shared_expert_intermediate_size
                and args.moe_shared_expert_overlap):
            yield ("--recompute-modules shared_experts: not with --moe-shared-expert-overlap")
        if args.fp8 and {"moe_act", "layernorm"} & mods and args.fp8_recipe == "delayed":
            yield ("--recompute-modules moe_act/layernorm: not with --fp8-recipe delayed "
                   "(delayed scaling cannot recompute them)")
        if args.distribute_saved_activations:
            yield "--distribute-saved-activations: needs --recompute-granularity full"
        return
    # full
    if method is None:
        yield ("--recompute-granularity full: needs --recompute-method uniform or block (and "
               "--recompute-num-layers)")
    if n is None:
        yield (f"--recompute-granularity full: needs --recompute-num-layers (1 to the {per_stage} "
               "layers per pipeline stage)")
    elif n > per_stage:
        yield (f"--recompute-num-layers {n}: must be at most the {per_stage} layers per pipeline "
               "stage")
    if args.distribute_saved_activations:
        if args.tensor_model_parallel_size == 1:
            yield ("--distribute-saved-activations: needs --tensor-model-parallel-size > 1 (it "
                   "splits the saved inputs over the TP group)")
        if args.sequence_parallel:
            yield "--distribute-saved-activations: not with --sequence-parallel"


def _te_gpu_asked(args):
    return [flag for flag, dest, default in _TE_GPU_FLAGS if getattr(args, dest) != default]


def precision_errors(args, impl: str, cuda: bool):
    """One-line refusals, in order. impl: the resolved --transformer-impl; cuda: a GPU is here."""
    yield from _range_errors(args)
    if args.fp16 and args.bf16:
        yield "--fp16 and --bf16: give at most one"
    yield from _recompute_errors(args)
    if args.fp8_param_gather and not args.fp8:
        yield "--fp8-param-gather: needs --fp8-format (e4m3 or hybrid)"
    if args.fp8_param_gather and not args.use_distributed_optimizer:
        yield "--fp8-param-gather: needs --use-distributed-optimizer"
    if args.fp8 and args.fp8_recipe == "custom" and not args.fp8_quantizer_factory:
        yield "--fp8-recipe custom: needs --fp8-quantizer-factory (a Python import path)"
    if args.fp8 and args.first_last_layers_bf16:
        if args.fp8_recipe == "delayed":
            yield "--first-last-layers-bf16: not with --fp8-recipe delayed (Megatron-LM's rule)"
        per_stage = args.num_layers // max(args.pipeline_model_parallel_size, 1)
        for flag, n in (("--num-layers-at-start-in-bf16", args.num_layers_at_start_in_bf16),
                        ("--num-layers-at-end-in-bf16", args.num_layers_at_end_in_bf16)):
            if n > per_stage:
                yield f"{flag} {n}: at most the {per_stage} layers per pipeline stage"
    if args.tp_comm_overlap and not args.sequence_parallel:
        yield ("--tp-comm-overlap: needs --sequence-parallel (with --tensor-model-parallel-size "
               "> 1)")
    if (cuda and args.cross_entropy_loss_fusion and args.cross_entropy_fusion_impl == "te"
            and impl != "transformer_engine" and not args.dry_run):
        yield ("--cross-entropy-fusion-impl te: needs Transformer Engine; use native (the "
               "default)")
    if args.transformer_impl == "local":
        for flag in _te_gpu_asked(args):
            yield f"{flag}: needs --transformer-impl transformer_engine (not local)"
    if args.dry_run:
        return  # planning a job for another machine: precision_run_needs says what it needs
    for flag in _te_gpu_asked(args):
        if not cuda or impl != "transformer_engine":
            yield (f"{flag}: needs Transformer Engine on a GPU (--transformer-impl "
                   "transformer_engine); not available here")


def precision_run_needs(args):
    """What a --dry-run's job will need at run time, one line each."""
    return [f"notice: {flag}: needs Transformer Engine at run time (on a GPU)"
            for flag in _te_gpu_asked(args)]


def precision_notices(args):
    """Flags Megatron-LM accepts that change nothing in this run (said once, not ignored)."""
    notes = []
    if args.grad_reduce_in_bf16 and not args.bf16:
        notes.append("notice: --grad-reduce-in-bf16: no effect without --bf16 (as in "
                     "Megatron-LM)")
    if not (args.fp16 or args.bf16) and args.attention_softmax_in_fp32 \
            and not args.apply_query_key_layer_scaling:
        notes.append("notice: --attention-softmax-in-fp32: an fp32 run computes the softmax in "
                     "fp32 anyway")
    if not args.fp16 and not args.loss_scale and any(
            getattr(args, d) != v for d, v in (("initial_loss_scale", 2.0 ** 32),
                                                ("min_loss_scale", 1.0),
                                                ("loss_scale_window", 1000),
                                                ("hysteresis", 2))):
        notes.append("notice: --initial-loss-scale/--min-loss-scale/--loss-scale-window/"
                     "--hysteresis: dynamic loss scaling is used by --fp16 only; no effect here")
    if args.fp8 and args.fp8_interval != 1:
        notes.append("notice: --fp8-interval: deprecated, ignored by Transformer Engine >= 1.8")
    return notes


def transformer_precision_config(args) -> dict:
    """TransformerConfig fields these flags set (core_transformer_config_from_args)."""
    dtype = _dtype(args)
    cfg = dict(
        fp16=bool(args.fp16), bf16=bool(args.bf16), params_dtype=dtype, pipeline_dtype=dtype,
        apply_query_key_layer_scaling=bool(args.apply_query_key_layer_scaling),
        attention_softmax_in_fp32=bool(args.attention_softmax_in_fp32),
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
        distribute_saved_activations=bool(args.distribute_saved_activations),
        recompute_modules=list(args.recompute_modules) if args.recompute_modules else None,
        cross_entropy_fusion_impl=args.cross_entropy_fusion_impl,
    )
    cfg.update({field: getattr(args, dest) for field, dest in FP8_FIELDS.items()})
    cfg.update({field: getattr(args, dest) for field, dest in TP_COMM_FIELDS.items()})
    return cfg


def ddp_precision_config(args) -> dict:
    """DistributedDataParallelConfig fields (get_model: grad_reduce_in_fp32 =
    accumulate_allreduce_grads_in_fp32, after the bf16 derivation)."""
    return dict(grad_reduce_in_fp32=bool(args.accumulate_allreduce_grads_in_fp32))


def optimizer_precision_config(args) -> dict:
    """OptimizerConfig fields: megatron-core picks the grad scaler from them."""
    return dict(fp16=bool(args.fp16), bf16=bool(args.bf16), params_dtype=_dtype(args),
                loss_scale=args.loss_scale, initial_loss_scale=args.initial_loss_scale,
                min_loss_scale=args.min_loss_scale, loss_scale_window=args.loss_scale_window,
                hysteresis=args.hysteresis)


def initialize_tp_communicators(args) -> None:
    """--tp-comm-overlap: Transformer Engine's userbuffers, as Megatron-LM's initialize does
    (after the process groups, before the model). Only reached on a GPU with TE."""
    if not args.tp_comm_overlap:
        return
    import yaml
    from transformer_engine.pytorch import module as te_module

    ub_cfgs = {}
    if args.tp_comm_overlap_cfg:
        with open(args.tp_comm_overlap_cfg) as f:
            ub_cfgs = yaml.safe_load(f) or {}
    shape = [args.seq_length * args.micro_batch_size // args.context_parallel_size,
             args.hidden_size]
    base = te_module.base
    if hasattr(base, "UserBufferQuantizationMode"):  # Transformer Engine >= 2.7
        modes = [base.UserBufferQuantizationMode.FP8 if args.fp8
                 else base.UserBufferQuantizationMode.NONE]
        if args.fp8 and args.first_last_layers_bf16 and (
                args.num_layers_at_start_in_bf16 > 0 or args.num_layers_at_end_in_bf16 > 0):
            modes.append(base.UserBufferQuantizationMode.NONE)
        base.initialize_ub(shape=shape, tp_size=args.tensor_model_parallel_size,
                           quantization_modes=modes, ub_cfgs=ub_cfgs,
                           bootstrap_backend=args.tp_comm_bootstrap_backend)
    else:
        base.initialize_ub(shape=shape, tp_size=args.tensor_model_parallel_size,
                           use_fp8=args.fp8 is not None, ub_cfgs=ub_cfgs,
                           bootstrap_backend=args.tp_comm_bootstrap_backend)
