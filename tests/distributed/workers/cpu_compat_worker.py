"""Worker for tests/distributed/test_cpu_compat.py: megatron-core's real parallel code paths on
CPU/gloo (through `apply_cpu_compat`) give the single-process numbers.

Every case trains the tiny GPT of tiny_gpt.py for a few steps with megatron DDP, the megatron
optimizer (grad clipping on), megatron's schedules and `finalize_model_grads`, and compares losses,
grad norms, first-step gradients and final parameters (each local shard) with a plain-PyTorch
single-process oracle at fp32, rtol 1e-4. Prints "PASS <case>" on global rank 0.

  --cases tp2_sp,pp2_1f1b,...   (see CASES)   --tmpdir DIR (checkpoints)
"""

import argparse
import os

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.rerun_state_machine import get_rerun_state_machine
from megatron.core.tensor_parallel import broadcast_data, get_cuda_rng_tracker
from megatron.core.tensor_parallel.random import get_data_parallel_rng_tracker_name
from megatron.core.transformer.moe.moe_utils import (
    get_moe_layer_wise_logging_tracker,
    track_moe_metrics,
)

import tiny_gpt as T
from megatron_nitp.parallel.distributed import (
    destroy_distributed_model_parallel,
    initialize_distributed,
)

STEPS = 2
NUM_MICROBATCHES = 4


def layout(**sizes):
    """Switch megatron's model-parallel layout (re-seeds every RNG identically)."""
    if ps.model_parallel_is_initialized():
        destroy_distributed_model_parallel()
    initialize_distributed(**sizes)


_WEIGHTS = {}
_ORACLES = {}


def oracle(kind: str, steps: int = STEPS, optim: T.Optim = T.Optim()):
    """(global weights, single-process TrainResult), computed once per process under TP=PP=EP=1."""
    key = (kind, steps, optim.name)
    if key not in _ORACLES:
        layout()
        overrides = T.moe_overrides() if kind == "moe" else {}
        config = T.tiny_config(**overrides)
        if kind not in _WEIGHTS:
            _WEIGHTS[kind] = T.snapshot(T.build_chunks(config))
        weights = _WEIGHTS[kind]
        batches = T.global_batches(NUM_MICROBATCHES)
        _ORACLES[key] = (weights, T.reference_train(weights, config, batches, steps, optim))
    return _ORACLES[key]


def check_against_oracle(kind: str, name: str, sizes: dict, **config_overrides) -> None:
    weights, ref = oracle(kind)
    layout(**sizes)
    config = T.tiny_config(**config_overrides)
    result = T.megatron_train(weights, config, T.global_batches(NUM_MICROBATCHES), STEPS)
    T.assert_matches_reference(result, ref, name)


# ------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------


def tp2_sp():
    """TP2 + sequence parallel with the SP norm; RNG tracker forks control CPU randomness."""
    check_against_oracle("dense", "tp2_sp", dict(tensor_model_parallel_size=2), sequence_parallel=True)

    tracker = get_cuda_rng_tracker()
    default_state = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), default_state), "fork must restore the default stream"
    with tracker.fork():
        second = torch.rand(4)
    assert not torch.equal(first, second), "the tracked stream must advance between forks"
    with tracker.fork(get_data_parallel_rng_tracker_name()):
        data_parallel = torch.rand(4)
    tp = ps.get_tensor_model_parallel_group()
    firsts = [torch.empty(4) for _ in range(2)]
    dps = [torch.empty(4) for _ in range(2)]
    dist.all_gather(firsts, first, group=tp)
    dist.all_gather(dps, data_parallel, group=tp)
    assert not torch.equal(*firsts), "model-parallel RNG must differ between TP ranks"
    assert torch.equal(*dps), "data-parallel RNG must agree between TP ranks"

    # Data loaders broadcast the batch from TP rank 0 (tensor_parallel.broadcast_data).
    tokens = torch.arange(12).view(2, 6)
    data = {"tokens": tokens} if ps.get_tensor_model_parallel_rank() == 0 else None
    assert torch.equal(broadcast_data(["tokens"], data, torch.int64)["tokens"], tokens)
    # The rerun state machine's any-rank vote (private, but it is what the patch covers).
    vote = get_rerun_state_machine()._reduce_any(dist.get_rank() == 0)
    assert vote is True


def pp2_1f1b():
    """PP2, 1F1B schedule, tied embeddings (embedding-group grad all-reduce in finalize)."""
    check_against_oracle("dense", "pp2_1f1b", dict(pipeline_model_parallel_size=2))


def pp2_vpp2():
    """PP2 x VPP2 interleaved schedule (one layer per model chunk)."""
    check_against_oracle(
        "dense",
        "pp2_vpp2",
        dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
    )


def recompute():
    """Full and selective recompute equal no recompute, with dropout on (RNG replay), TP2 + SP."""
    weights, ref = oracle("dense")
    batches = T.global_batches(NUM_MICROBATCHES)
    dropout = dict(hidden_dropout=0.1, attention_dropout=0.1, sequence_parallel=True)
    modes = {
        "none": {},
        "full": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
        "selective": dict(recompute_granularity="selective"),
    }
    results = {}
    for mode, extra in modes.items():
        layout(tensor_model_parallel_size=2)  # same seeds, same dropout masks
        config = T.tiny_config(**dropout, **extra)
        results[mode] = T.megatron_train(weights, config, batches, STEPS)
    assert abs(results["none"].losses[0] - ref.losses[0]) > 1e-3, "dropout must change the loss"
    for mode in ("full", "selective"):
        T.assert_same_training(results[mode], results["none"], f"recompute {mode}")


def distopt_checkpoint(tmpdir: str):
    """DistributedOptimizer (Adam) at TP1 x DP2, dist-checkpoint save (fully_reshardable), load at
    TP2 x DP1 into a zeroed model: the next two steps equal the uninterrupted single-process run.
    The second resumed loss depends on Adam's restored moments and step count."""
    adam = T.Optim(name="adam", lr=1e-2)
    weights, ref = oracle("dense", steps=4, optim=adam)
    batches = T.global_batches(NUM_MICROBATCHES)
    ckpt = os.path.join(tmpdir, "distopt_ckpt", "iter_0000002")  # does not exist yet
    metadata = {"distrib_optim_sharding_type": "fully_reshardable"}

    def state(model, optimizer, scheduler, is_loading):
        model_sd = model[0].module.sharded_state_dict()
        return {
            "model": model_sd,
            "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata),
            "scheduler": scheduler.state_dict(),
        }

    def scheduler_for(optimizer):
        return OptimizerParamScheduler(
            optimizer, init_lr=adam.lr, max_lr=adam.lr, min_lr=adam.lr, lr_warmup_steps=0,
            lr_decay_steps=100, lr_decay_style="constant", start_wd=0.0, end_wd=0.0,
            wd_incr_steps=100, wd_incr_style="constant",
        )  # fmt: skip

    def run(model, optimizer, scheduler, config, steps):
        out = []
        for _ in range(steps):
            out.append(T.megatron_step(model, optimizer, T.dp_slice(batches), config))
            scheduler.step(increment=1)
        return out

    layout()  # TP1, DP2
    config = T.tiny_config()
    model, optimizer = T.megatron_setup(weights, config, adam, use_distributed_optimizer=True)
    scheduler = scheduler_for(optimizer)
    first = run(model, optimizer, scheduler, config, 2)
    dist_checkpointing.save(state(model, optimizer, scheduler, False), ckpt)
    rest = run(model, optimizer, scheduler, config, 2)
    T.assert_close([l for l, _ in first + rest], ref.losses, "distopt: uninterrupted losses")
    T.assert_close([n for _, n in first + rest], ref.grad_norms, "distopt: grad norms")

    layout(tensor_model_parallel_size=2)  # TP2, DP1
    config = T.tiny_config()
    zeros = {name: torch.zeros_like(w) for name, w in weights.items()}
    model, optimizer = T.megatron_setup(zeros, config, adam, use_distributed_optimizer=True)
    scheduler = scheduler_for(optimizer)
    loaded = dist_checkpointing.load(state(model, optimizer, scheduler, True), ckpt)
    model[0].module.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    assert scheduler.num_steps == 2
    resumed = run(model, optimizer, scheduler, config, 2)
    T.assert_close([l for l, _ in resumed], ref.losses[2:], "distopt: resumed losses")
    T.assert_close([n for _, n in resumed], ref.grad_norms[2:], "distopt: resumed grad norms")


def moe_ep2():
    """MoE (4 experts, top-2, aux loss) at EP2 with the allgather and the alltoall dispatcher."""
    for dispatcher in ("allgather", "alltoall"):
        check_against_oracle(
            "moe", f"moe_ep2_{dispatcher}", dict(expert_model_parallel_size=2),
            **T.moe_overrides(dispatcher),
        )  # fmt: skip

    # Aux-loss logging on a rank that never saw an MoE layer (e.g. a dense pipeline stage):
    # track_moe_metrics creates the tracker entries itself.
    get_moe_layer_wise_logging_tracker().clear()
    logged = {}
    track_moe_metrics(
        loss_scale=1.0, iteration=1, total_loss_dict=logged, force_initialize=True,
        track_names=["load_balancing_loss"], num_layers=4, moe_layer_freq=[0, 1, 0, 1],
    )  # fmt: skip
    assert logged["load_balancing_loss"].item() == 0.0


def moe_tp2_ep2_sp():
    """MoE at TP2 x EP2 with SP; expert-TP 2 makes the alltoall dispatcher gather uneven splits."""
    for dispatcher in ("allgather", "alltoall"):
        check_against_oracle(
            "moe", f"moe_tp2_ep2_sp_{dispatcher}",
            dict(tensor_model_parallel_size=2, expert_model_parallel_size=2),
            sequence_parallel=True, **T.moe_overrides(dispatcher),
        )  # fmt: skip


def moe_ep2_pp2():
    """MoE at EP2 x PP2 (one MoE layer per stage), both dispatchers."""
    for dispatcher in ("allgather", "alltoall"):
        check_against_oracle(
            "moe", f"moe_ep2_pp2_{dispatcher}",
            dict(pipeline_model_parallel_size=2, expert_model_parallel_size=2),
            **T.moe_overrides(dispatcher),
        )  # fmt: skip


CASES = {
    "tp2_sp": tp2_sp,
    "pp2_1f1b": pp2_1f1b,
    "pp2_vpp2": pp2_vpp2,
    "recompute": recompute,
    "distopt_checkpoint": distopt_checkpoint,
    "moe_ep2": moe_ep2,
    "moe_tp2_ep2_sp": moe_tp2_ep2_sp,
    "moe_ep2_pp2": moe_ep2_pp2,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument("--tmpdir", required=True)
    args = parser.parse_args()
    for name in args.cases.split(","):
        case = CASES[name]
        case(args.tmpdir) if name == "distopt_checkpoint" else case()
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"PASS {name}", flush=True)


if __name__ == "__main__":
    main()
