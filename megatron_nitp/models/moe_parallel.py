"""MoE parallelism and kernel flags: expert tensor parallelism, the flex dispatcher, fused
permutation and grouped GEMM, as Megatron-LM 0.16.1 reads them.

--expert-tensor-parallel-size is megatron-core's `expert_tensor_parallel_size`: the experts are
split over ETP ranks while attention keeps TP; parallel_state then lays the experts out over
ETP x EP x PP ranks with expert data parallelism over the rest (so ETP x EP x PP must divide the
world). Unset, it is TP (Megatron-LM's default). The flex dispatcher has no CPU implementation
in megatron-core: without CUDA and its backend it is refused here in one line, before any work,
instead of failing mid start-up (the dispatcher's import). --moe-grouped-gemm and
--moe-permute-fusion are kernels for the same function: without them they are switched off with
one notice (parallel/speed.py), so that a GPU config still dry-runs and debugs on a CPU.
"""

import importlib.util


def expert_tensor_parallel_size(args) -> int:
    return args.expert_tensor_parallel_size or args.tensor_model_parallel_size


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _flex_backend_available(backend: str) -> bool:
    """megatron-core's flex dispatcher imports `deep_ep` (deepep) or `hybrid_ep` (hybridep)."""
    module = "deep_ep" if backend == "deepep" else "hybrid_ep"
    return importlib.util.find_spec(module) is not None


def moe_parallel_notices(args):
    """Expert flags on a dense model: no effect, as in Megatron-LM (its dense example scripts
    give --expert-tensor-parallel-size 1), said once each; and the benchmarking router."""
    if args.num_experts:
        if args.moe_router_force_load_balancing:
            return ["notice: --moe-router-force-load-balancing: the router picks experts from "
                    "random logits (Megatron-LM's benchmarking mode): the run measures speed, "
                    "its model is not one to keep"]
        return []
    given = [f for f, v in (
        ("--expert-tensor-parallel-size", args.expert_tensor_parallel_size is not None),
        ("--moe-permute-fusion", args.moe_permute_fusion),
    ) if v]
    return [f"notice: {flag}: no effect without --num-experts (a dense model)" for flag in given]


def moe_parallel_run_needs(args):
    """What a --dry-run's job will need at run time (dry_run.py)."""
    if args.num_experts and args.moe_token_dispatcher_type == "flex":
        backend = args.moe_flex_dispatcher_backend
        return [f"--moe-token-dispatcher-type flex: CUDA with the {backend} backend "
                "(--moe-flex-dispatcher-backend)"]
    return []


def moe_parallel_errors(args, transformer_impl):
    experts = args.num_experts
    if not experts:
        return
    etp = expert_tensor_parallel_size(args)
    if etp < 1:
        yield f"--expert-tensor-parallel-size {etp}: must be >= 1"
        return
    ep, pp = args.expert_model_parallel_size, args.pipeline_model_parallel_size
    dp = getattr(args, "data_parallel_size", None)  # a resolved value: not on parsed flags
    if dp:  # set by validate_args from the world size
        world = dp * args.tensor_model_parallel_size * pp * args.context_parallel_size
        if world % (etp * ep * pp):
            yield (f"--expert-tensor-parallel-size {etp}: expert-TP x --expert-model-parallel-size "
                   f"{ep} x --pipeline-model-parallel-size {pp} = {etp * ep * pp} must divide the "
                   f"world size {world} (megatron-core's expert layout)")
    tp = args.tensor_model_parallel_size
    if etp != tp and ep == 1:
        # megatron-core 0.16.1 marks expert weights as expert-parallel (reduced over the expert
        # data-parallel group, which expert-TP defines) only when EP > 1; at EP 1 they are reduced
        # as dense weights over the dense DP group, which is wrong when expert-TP != TP. Measured
        # on the CPU suite at TP2 + SP, expert-TP 1: expert gradients about half the right ones.
        yield (f"--expert-tensor-parallel-size {etp}: differs from --tensor-model-parallel-size "
               f"{tp}, which megatron-core 0.16.1 reduces correctly only with "
               f"--expert-model-parallel-size > 1; use EP > 1 or expert-TP = TP")
    width = args.moe_ffn_hidden_size or args.ffn_hidden_size
    if width and width % etp:
        yield (f"--expert-tensor-parallel-size {etp}: must divide the expert width "
               f"(--moe-ffn-hidden-size) {width}")
    if (args.moe_token_dispatcher_type == "flex"
            and not args.dry_run):  # a dry run: moe_parallel_run_needs
        backend = args.moe_flex_dispatcher_backend
        if not _cuda() or not _flex_backend_available(backend):
            yield (f"--moe-token-dispatcher-type flex: needs CUDA with the {backend} backend "
                   f"installed (--moe-flex-dispatcher-backend); use alltoall or allgather here")
