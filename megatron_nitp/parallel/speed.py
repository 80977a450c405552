"""Speed settings: Megatron-LM's flags and defaults, and what of them can run on this machine.

The flags (arguments.py) mean what they mean in Megatron-LM 0.16.1: the kernel fusions default
on, the DDP overlaps off. A fusion needs its kernel: on a CPU none exists, and on a GPU without
apex/Transformer Engine the gradient-accumulation and RoPE fusions have none. What cannot run is
switched off and named in one notice line (Megatron-LM, too, turns gradient-accumulation fusion
off when its extension is missing); the functions computed are the same, only slower.
The DDP overlaps are plain asynchronous collectives and run everywhere, gloo included.
"""

import importlib.util

import torch

# flag -> args attribute, for the fusions (all default on, as in Megatron-LM).
FUSIONS = {
    "--gradient-accumulation-fusion": "gradient_accumulation_fusion",
    "--bias-swiglu-fusion": "bias_swiglu_fusion",
    "--bias-gelu-fusion": "bias_gelu_fusion",
    "--bias-dropout-fusion": "bias_dropout_fusion",
    "--masked-softmax-fusion": "masked_softmax_fusion",
    "--rope-fusion": "apply_rope_fusion",
}


def _importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _unavailable_fusions(args):
    """Fusions asked for whose kernel this machine lacks, by flag."""
    moe_kernels = [flag for flag, attr in (("--moe-grouped-gemm", "moe_grouped_gemm"),
                                           ("--moe-permute-fusion", "moe_permute_fusion"))
                   if getattr(args, attr) and args.num_experts]
    if not torch.cuda.is_available():
        unused = "--bias-gelu-fusion" if args.swiglu else "--bias-swiglu-fusion"
        return [flag for flag, attr in FUSIONS.items() if getattr(args, attr) and flag != unused
                ] + (["--cross-entropy-loss-fusion"] if args.cross_entropy_loss_fusion else []
                     ) + moe_kernels
    te = _importable("transformer_engine")
    off = []
    # MoE kernels: TE's grouped GEMM / fused permutation (the legacy grouped GEMM: its package).
    if "--moe-grouped-gemm" in moe_kernels and not (te or _importable("grouped_gemm")):
        off.append("--moe-grouped-gemm")
    if "--moe-permute-fusion" in moe_kernels and not te:
        off.append("--moe-permute-fusion")
    # megatron's linear layers raise without the apex extension (or TE's own layers).
    if args.gradient_accumulation_fusion and not (
            te or _importable("fused_weight_gradient_mlp_cuda")):
        off.append("--gradient-accumulation-fusion")
    # megatron's RoPE asserts when fused RoPE is asked for and neither TE nor apex provides it.
    if args.apply_rope_fusion and not (te or _importable("fused_rotary_positional_embedding")):
        off.append("--rope-fusion")
    # The local spec's softmax imports megatron's CUDA extension inside its forward.
    if args.masked_softmax_fusion and not _importable("scaled_upper_triang_masked_softmax_cuda"):
        off.append("--masked-softmax-fusion")
    return off


def speed_settings(args):
    """({TransformerConfig/DDP field: value}, notice or None). `args` is not changed."""
    off = set(_unavailable_fusions(args))

    def on(flag, attr):
        return bool(getattr(args, attr)) and flag not in off

    activation = ("--bias-swiglu-fusion", "bias_swiglu_fusion") if args.swiglu else (
        "--bias-gelu-fusion", "bias_gelu_fusion")
    settings = dict(
        gradient_accumulation_fusion=on("--gradient-accumulation-fusion",
                                        "gradient_accumulation_fusion"),
        bias_activation_fusion=on(*activation),
        bias_dropout_fusion=on("--bias-dropout-fusion", "bias_dropout_fusion"),
        masked_softmax_fusion=on("--masked-softmax-fusion", "masked_softmax_fusion"),
        apply_rope_fusion=on("--rope-fusion", "apply_rope_fusion"),
        persist_layer_norm=not args.no_persist_layer_norm,  # apex/TE norms only; else unused
        cross_entropy_loss_fusion=(args.cross_entropy_loss_fusion
                                   and "--cross-entropy-loss-fusion" not in off),
        moe_grouped_gemm=on("--moe-grouped-gemm", "moe_grouped_gemm"),
        moe_permute_fusion=args.moe_permute_fusion
        and "--moe-permute-fusion" not in off,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
    )
    notice = None
    if off:
        where = "on CPU" if not torch.cuda.is_available() else "without apex/Transformer Engine"
        notice = (f"notice: {where}, no kernel for {', '.join(sorted(off))}: switched off "
                  "(same results, unfused)")
    return settings, notice
