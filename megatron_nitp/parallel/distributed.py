"""Process-group setup: torch.distributed + megatron-core model parallel state, on GPU or CPU.

One entry point, `initialize_distributed`, for every launcher we support (torchrun, srun, plain
`python`), plus `destroy_distributed_model_parallel` so one launch can try several layouts (tests
do this: each launch costs seconds of imports) and `get_pg_collection` for modules that take
process groups explicitly (megatron-core 0.16.1's `pg_collection=` arguments).
"""

import os
import random
import socket
import subprocess
from datetime import timedelta
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_nitp.parallel.cpu_compat import apply_cpu_compat
from megatron_nitp.parallel.without_te import apply_without_transformer_engine


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0] if out else "127.0.0.1"
    except (OSError, subprocess.CalledProcessError):
        # "node[01-04]" without scontrol: the prefix plus the first number is the first host.
        head = nodelist.split(",")[0]
        if "[" in head:
            prefix, rest = head.split("[", 1)
            return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        return head


def _launch_environment() -> dict:
    """rank / world_size / local_rank / init_method of this process, from the launcher's env."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (or anything that mimics it)
        return dict(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            init_method="env://",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:  # srun, one task per device
        addr = env.get("MASTER_ADDR") or _first_slurm_host()
        # Derive the port from the job id so every task of one job agrees without talking.
        port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return dict(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            init_method=f"tcp://{addr}:{port}",
        )
    # Plain `python script.py`: a world of one, on a port nobody else uses.
    return dict(
        rank=0, world_size=1, local_rank=0, init_method=f"tcp://127.0.0.1:{_free_port()}"
    )


def initialize_distributed(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: Optional[int] = None,
    context_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    seed: int = 1234,
    timeout_minutes: int = 10,
    expert_tensor_parallel_size: Optional[int] = None,
) -> ProcessGroupCollection:
    """Initialise torch.distributed (once per process) and megatron's model-parallel state.

    Backend: nccl with the CUDA device of the local rank when CUDA exists, else gloo with the CPU
    compatibility layer applied. Seeds megatron's RNG tracker (`model_parallel_cuda_manual_seed`)
    and the default generators identically on every rank: megatron initialises some weights
    (e.g. with `use_cpu_initialization=False` on CPU) from the default generator, so ranks must
    agree on it for the sharded model to equal the single-process one.

    Calling it again without `destroy_distributed_model_parallel()` in between is an error: a
    silent re-initialisation would hide a layout mix-up. Returns the `ProcessGroupCollection`.
    """
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        launch = _launch_environment()
        if use_cuda:
            torch.cuda.set_device(launch["local_rank"] % torch.cuda.device_count())
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=launch["init_method"],
            rank=launch["rank"],
            world_size=launch["world_size"],
            timeout=timedelta(minutes=timeout_minutes),
        )
    apply_without_transformer_engine()  # GPUs without Transformer Engine too
    apply_cpu_compat()

    if parallel_state.model_parallel_is_initialized():
        raise RuntimeError(
            "megatron model parallel state is already initialised; call "
            "destroy_distributed_model_parallel() before choosing another layout"
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        expert_tensor_parallel_size=expert_tensor_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    # force_reset_rng: a previous layout's tracker holds seeds for other TP/EP ranks.
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return get_pg_collection()


def destroy_distributed_model_parallel() -> None:
    """Forget megatron's model-parallel layout but keep the world process group.

    megatron's `destroy_model_parallel` only drops its references to the groups; the gloo/nccl
    communicators of the old layout live until garbage collection, which is fine for the few
    layouts a test launch walks through.
    """
    if dist.is_initialized():
        dist.barrier()  # no rank may still be talking on the old groups
    parallel_state.destroy_model_parallel()
    # megatron-core sizes its MoE aux-loss tracker by the first model's layer count (MTP layers
    # included): the next model, of another depth, needs a fresh one.
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    get_moe_layer_wise_logging_tracker().clear()


def get_pg_collection() -> ProcessGroupCollection:
    """megatron's `ProcessGroupCollection` for the current layout.

    megatron-core 0.16.1 modules (GPTModel, TransformerBlock, DDP, `finalize_model_grads`,
    the optimizer setup) accept `pg_collection=`; with None they build the same collection from
    `parallel_state` themselves, so passing this is equivalent and makes the groups explicit.
    """
    return ProcessGroupCollection.use_mpu_process_groups()
