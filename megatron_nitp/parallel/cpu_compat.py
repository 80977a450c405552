"""CPU/gloo compatibility layer: run megatron-core 0.16.1's real code paths without a GPU.

megatron-core assumes CUDA in a few dozen places (device="cuda" literals, CUDA RNG state, CUDA
streams, `tensor.type()` names, a spawn-based checkpoint writer). `apply_cpu_compat()` patches
exactly those places so that TP/SP/PP/VPP/DP/EP layouts, both pipeline schedules, megatron DDP +
`finalize_model_grads`, the plain and distributed optimizers (with grad clipping), the RNG
tracker, activation recompute, both MoE dispatchers and distributed checkpointing run on CPU over
gloo and give the single-process numbers. It exists so that users without GPUs can debug the
parallel code, and so that tests can check parallel equivalence on CPU.

Rules: applied only when `torch.cuda.is_available()` is False (no-op otherwise), idempotent,
every patch names the megatron-core function it covers and why. Each patch was confirmed necessary
by disabling it and watching `tests/distributed/test_cpu_compat.py` fail (error or wrong numbers).
What megatron-core needs without Transformer Engine on any device (GPU too) is in without_te.py,
applied from here and, on GPUs, by `initialize_distributed`.

What is global and what is scoped:
- global, but only turning CUDA-less errors into CPU behaviour: `torch.cuda.current_device`,
  `synchronize`, RNG get/set/seed, streams/events, `Tensor.cuda()`. On a CPU-only build these raise,
  so no working code can depend on the old behaviour.
- scoped to megatron modules: the device="cuda" literals (a `torch` proxy in named modules),
  `Tensor.type()` reporting CUDA names (only to callers in `megatron.core.optimizer`), and
  function replacements in megatron modules.
"""

import contextlib
import logging
import multiprocessing as mp
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .without_te import apply_without_transformer_engine

_APPLIED = False

_CPU = torch.device("cpu")


def apply_cpu_compat() -> bool:
    """Apply every patch once; return True if the CPU layer is active, False on CUDA machines."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    _patch_cuda_runtime_queries()
    _patch_cuda_rng_to_cpu_generator()
    _patch_cuda_streams_and_events()
    _patch_tensor_cuda_and_type()
    _patch_cuda_device_literals()
    _patch_moe()
    _patch_uneven_all_gather()
    _patch_dist_checkpointing()
    apply_without_transformer_engine()  # a CPU never has Transformer Engine
    _APPLIED = True
    return True


def cpu_compat_applied() -> bool:
    """True once `apply_cpu_compat()` has patched this process."""
    return _APPLIED


# ---------------------------------------------------------------------------------------------
# torch.cuda runtime queries
# ---------------------------------------------------------------------------------------------


def _patch_cuda_runtime_queries() -> None:
    """`torch.cuda.current_device()` -> the CPU device; `torch.cuda.synchronize()` -> no-op.

    megatron allocates with `device=torch.cuda.current_device()` all over (tensor_parallel
    layers/mappings, p2p_communication, param_and_grad_buffer, distrib_optimizer, router, rotary
    embeddings, ...) and synchronises in parallel_state and p2p; returning the CPU device makes
    all of those allocate on CPU, which is what gloo needs.
    """
    torch.cuda.current_device = lambda: _CPU
    torch.cuda.synchronize = lambda device=None: None


# ---------------------------------------------------------------------------------------------
# RNG: megatron's "CUDA" RNG state becomes the CPU default generator
# ---------------------------------------------------------------------------------------------


class _DropForkWarning(logging.Filter):
    """`CudaRNGStatesTracker.fork` warns when the CPU RNG changes inside a fork. With the CUDA
    state mapped onto the CPU generator, every dropout inside a fork changes it by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _patch_cuda_rng_to_cpu_generator() -> None:
    """CUDA RNG get/set/seed -> the CPU default generator.

    Covers `tensor_parallel.random._get_cuda_rng_state` / `_set_cuda_rng_state` (used by
    `CudaRNGStatesTracker.add/fork`, `model_parallel_cuda_manual_seed`, `CheckpointFunction`,
    i.e. `tensor_parallel.checkpoint` = full and selective recompute) and `torch.cuda.get_rng_state
    /set_rng_state/manual_seed` called directly by the tracker and the rerun state machine. On a
    CPU build `_set_cuda_rng_state` queues its setter with `_lazy_call`, which never runs: forks
    would silently not fork. Mapped to the CPU generator, a tracker fork really selects the
    generator that CPU dropout draws from, and recompute replays the same dropout masks.
    """
    from megatron.core.tensor_parallel import random as mp_random

    def get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
        return torch.get_rng_state()

    def set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False):
        torch.set_rng_state(new_state)

    def manual_seed(seed: int) -> None:
        # Not torch.manual_seed: that calls torch.cuda.manual_seed_all, keep it out of the loop.
        torch.default_generator.manual_seed(int(seed))

    mp_random._get_cuda_rng_state = get_rng_state
    mp_random._set_cuda_rng_state = set_rng_state
    for namespace in (torch.cuda, torch.cuda.random):
        namespace.get_rng_state = lambda device="cuda": torch.get_rng_state()
        namespace.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
        namespace.manual_seed = manual_seed
    logging.getLogger(mp_random.__name__).addFilter(_DropForkWarning())


# ---------------------------------------------------------------------------------------------
# CUDA streams / events: synchronous CPU stand-ins
# ---------------------------------------------------------------------------------------------


class _CpuEvent:
    """Stand-in for torch.cuda.Event: CPU work is synchronous, so every event is complete."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event) -> float:
        return 0.0


class _CpuStream:
    """Stand-in for torch.cuda.Stream: one synchronous queue."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event if event is not None else _CpuEvent()

    def synchronize(self):
        pass

    def query(self) -> bool:
        return True


_THE_CPU_STREAM = _CpuStream()


def _patch_cuda_streams_and_events() -> None:
    """torch.cuda.Stream/Event/stream()/current_stream()/default_stream() -> CPU stand-ins.

    Covers `MoEAlltoAllTokenDispatcher.__init__` (creates `cuda_dtoh_stream`) and
    `_maybe_dtoh_and_synchronize` (records an event on it, waits on it), the shared-expert overlap
    stream, and DDP/param_and_grad_buffer communication streams. On CPU everything is synchronous,
    so "wait" is always already satisfied; the stand-ins keep the control flow identical.
    """
    torch.cuda.Stream = _CpuStream
    torch.cuda.Event = _CpuEvent
    torch.cuda.current_stream = lambda device=None: _THE_CPU_STREAM
    torch.cuda.default_stream = lambda device=None: _THE_CPU_STREAM
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Tensor.cuda() and Tensor.type()
# ---------------------------------------------------------------------------------------------


_CUDA_TYPE_CALLERS = ("megatron.core.optimizer",)


def _patch_tensor_cuda_and_type() -> None:
    """`Tensor.cuda()` -> the tensor itself; `Tensor.type()` -> CUDA type names for megatron's optimizer.

    `.cuda()`: `LanguageModule.setup_embeddings_and_output_layer` (tied embeddings under PP),
    `tensor_parallel.broadcast_data`, `DistributedOptimizer` gloo paths and
    `check_param_hashes_across_dp_replicas` move tensors with `.cuda()`; on CPU they are already
    where gloo wants them.

    `.type()`: `clip_grad_by_total_norm_fp32` asserts `grad.type() == 'torch.cuda.FloatTensor'`,
    `DistributedOptimizer._build_model_and_main_param_groups` and
    `Float16OptimizerWithFloat16Params.__init__` dispatch on 'torch.cuda.{Float,Half,BFloat16}Tensor'
    and raise TypeError for anything else. Only callers inside `megatron.core.optimizer` see the
    CUDA name (checked on the caller's frame), so no other code is lied to.
    """
    original_cuda = torch.Tensor.cuda
    original_type = torch.Tensor.type

    def cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
        if self.device.type == "cpu":
            return self
        return original_cuda(self, device, non_blocking, memory_format)

    def type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs and self.device.type == "cpu":
            name = original_type(self)
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith(_CUDA_TYPE_CALLERS) and name.startswith("torch."):
                return "torch.cuda." + name[len("torch.") :]
            return name
        return original_type(self, dtype, non_blocking, **kwargs)

    torch.Tensor.cuda = cuda
    torch.Tensor.type = type


# ---------------------------------------------------------------------------------------------
# device="cuda" literals inside megatron modules
# ---------------------------------------------------------------------------------------------


def _to_cpu_if_cuda(device: Any) -> Any:
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")):
        return _CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return _CPU
    return device


class _CpuDeviceTorch:
    """The `torch` module, except that tensor factories put device="cuda" tensors on the CPU.

    Installed as the `torch` global of the megatron modules listed in `_MODULES_WITH_CUDA_LITERALS`
    only; everything else is delegated to the real module (isinstance checks against
    `torch.Tensor` etc. keep working because the attribute is the real class).
    """

    _FACTORIES = (
        "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "eye", "linspace",
        "rand", "randn", "randint", "zeros_like", "ones_like", "empty_like", "full_like",
    )  # fmt: skip

    def __init__(self, real_torch):
        self._torch = real_torch
        for name in self._FACTORIES:
            setattr(self, name, self._cpu_factory(getattr(real_torch, name)))

    @staticmethod
    def _cpu_factory(factory: Callable) -> Callable:
        def cpu_factory(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _to_cpu_if_cuda(kwargs["device"])
            return factory(*args, **kwargs)

        cpu_factory.__name__ = factory.__name__
        return cpu_factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)


# module -> the functions in it that allocate with a device="cuda" literal
_MODULES_WITH_CUDA_LITERALS = {
    "megatron.core.pipeline_parallel.schedules": "forward_backward_no_pipelining / "
    "_pipelining_with_interleaving / _pipelining_without_interleaving (total_num_tokens)",
    "megatron.core.optimizer.optimizer": "MixedPrecisionOptimizer.__init__ (found_inf), "
    "FP32Optimizer.__init__ (_scale), ChainedOptimizer",
    "megatron.core.optimizer.grad_scaler": "ConstantGradScaler / DynamicGradScaler.__init__ "
    "(_scale, min_scale, growth and backoff factors: --fp16, --loss-scale)",
    "megatron.core.optimizer.clip_grads": "get_grad_norm_fp32, clip_grad_by_total_norm_fp32, "
    "count_zeros_fp32",
    "megatron.core.utils": "local_multi_tensor_l2_norm (grad norm / clipping without apex)",
    "megatron.core.transformer.utils": "get_default_causal_mask (local DotProductAttention)",
    "megatron.core.tensor_parallel.data": "broadcast_data (_build_key_size_numel_dictionaries)",
    "megatron.core.rerun_state_machine": "RerunStateMachine._reduce_any (rerun / result checks)",
    "megatron.core.transformer.moe.moe_utils": "track_moe_metrics(force_initialize=True) (MoE "
    "aux-loss logging on ranks without MoE layers)",
}


def _patch_cuda_device_literals() -> None:
    """Replace the `torch` global of the megatron modules that hard-code device="cuda"."""
    import importlib

    proxy = _CpuDeviceTorch(torch)
    for module_name in _MODULES_WITH_CUDA_LITERALS:
        module = importlib.import_module(module_name)
        module.torch = proxy


# ---------------------------------------------------------------------------------------------
# MoE
# ---------------------------------------------------------------------------------------------


def _patch_moe() -> None:
    """The alltoall MoE dispatcher on CPU (`te_general_gemm`: see without_te.py).

    - `moe_utils.maybe_move_tensor_to_cpu(t, as_numpy=True)` converts only CUDA tensors, so on CPU
      `MoEAlltoAllTokenDispatcher._maybe_dtoh_and_synchronize` keeps tensors where the dispatcher
      expects numpy split sizes (it then calls `.tolist()`/`sum()` on them). Return numpy for CPU
      tensors too; patched where the dispatcher imported it by name.
    """
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    def maybe_move_tensor_to_cpu(tensor, as_numpy: bool = False, record_stream: bool = False):
        if torch.is_tensor(tensor):
            tensor = tensor.to(_CPU)
            if as_numpy:
                tensor = tensor.numpy()
        return tensor

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


def _patch_uneven_all_gather() -> None:
    """`tensor_parallel.mappings._gather_along_first_dim` with `output_split_sizes`: pad + gather + trim.

    gloo's allgather requires equal sizes; megatron gathers uneven splits for the alltoall
    dispatcher with expert-TP > 1 (`gather_from_sequence_parallel_region(...,
    output_split_sizes=output_splits_tp)`). Padding every shard to the largest and trimming gives
    the same tensor. (Uneven `reduce_scatter`, the backward, works on gloo in torch >= 2.x.)
    """
    from megatron.core.tensor_parallel import mappings

    original = mappings._gather_along_first_dim

    def _gather_along_first_dim(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or group.size() == 1:
            return original(input_, group, output_split_sizes, use_global_buffer)
        width = max(output_split_sizes)
        padded = input_.new_zeros((width,) + tuple(input_.shape[1:]))
        padded[: input_.shape[0]] = input_
        gathered = torch.empty(
            (width * group.size(),) + tuple(input_.shape[1:]), dtype=input_.dtype, device=_CPU
        )
        torch.distributed.all_gather_into_tensor(gathered, padded.contiguous(), group=group)
        pieces = [gathered[r * width : r * width + n] for r, n in enumerate(output_split_sizes)]
        return torch.cat(pieces, dim=0)

    mappings._gather_along_first_dim = _gather_along_first_dim


# ---------------------------------------------------------------------------------------------
# Distributed checkpointing
# ---------------------------------------------------------------------------------------------


def _patch_dist_checkpointing() -> None:
    """megatron.core.dist_checkpointing save on CPU.

    - `filesystem_async._get_write_results_queue` starts a multiprocessing Manager with the
      *spawn* context even for synchronous saves (TorchDistSaveShardedStrategy writes through
      FileSystemWriterAsync). Spawn re-imports the `__main__` script: without an
      `if __name__ == "__main__":` guard the save hangs forever. Spawn protects CUDA contexts; a CPU
      process has none, so fork is safe (and measured ~40% faster).
    - `filesystem_async._process_memory` (debug logging only) needs psutil, which megatron-core
      does not declare: report 0 instead of failing when it is missing.
    - `serialization.save` calls `Path(checkpoint_dir).iterdir()` on rank 0 and fails if the
      directory does not exist (Megatron-LM's trainer creates it; megatron-core does not). Create
      it first. NOTE: this one is not CPU specific; the project's checkpoint code must create the
      directory itself so that GPU runs (where this layer is off) behave the same.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    def _get_write_results_queue():
        if filesystem_async._results_queue is None:
            filesystem_async._results_queue = mp.get_context("fork").Manager().Queue()
        return filesystem_async._results_queue

    filesystem_async._get_write_results_queue = _get_write_results_queue

    if not filesystem_async.HAVE_PSUTIL:
        filesystem_async._process_memory = lambda: 0

    original_save = serialization.save

    def save(sharded_state_dict, checkpoint_dir, *args, **kwargs):
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        return original_save(sharded_state_dict, checkpoint_dir, *args, **kwargs)

    save.__doc__ = original_save.__doc__
    serialization.save = save
    dist_checkpointing.save = save
