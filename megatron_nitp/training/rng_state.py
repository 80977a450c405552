"""Per-rank RNG state in checkpoints, as Megatron-LM 0.16.1 keeps it (training/checkpointing.py
`get_rng_state` and the "rng states" part of `load_checkpoint`).

Saved: python `random`, numpy, the torch CPU and CUDA generators and megatron-core's CUDA RNG
tracker states (model-parallel, data-parallel, expert-parallel), as one dist-checkpoint
`ShardedObject` named `rng_state`: one object per (PP, TP) rank, written by data-parallel rank 0
(the DP replicas share their seeds), or, with expert parallelism (whose tracker seeds differ
across the DP ranks that hold other experts), one per (PP, TP, DP) rank. On CPU the "CUDA" state
is the CPU default generator (parallel/cpu_compat.py), the one dropout draws from.

Restored on resume unless --no-load-rng or --finetune, or the checkpoint was saved with
--no-save-rng. As in Megatron-LM, a checkpoint saved at another TP or PP size has no state for
this rank and its RNG state is ignored with a notice; at another DP size the DP-rank-0 state is
loaded by every rank (the objects are keyed by PP/TP only), except with expert parallelism,
where the objects are keyed by DP rank too: Megatron-LM then fails on the missing key, here the
state is ignored with a notice.
"""

import random
from typing import Optional, Tuple

import numpy as np
import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

KEY = "rng_state"


def _tracker_states_as_tensors() -> dict:
    states = tensor_parallel.get_cuda_rng_tracker().get_states()
    return {name: tensor_parallel.convert_cuda_rng_state(state, to_graphable=False).clone()
            for name, state in states.items()}


def capture() -> dict:
    """This rank's generator states now (Megatron-LM's `rng_state` dict)."""
    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state(),
        "rng_tracker_states": _tracker_states_as_tensors(),
    }


def restore(state: dict) -> None:
    """Set every generator back to `state` (a `capture()` result)."""
    random.setstate(state["random_rng_state"])
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    torch.cuda.set_rng_state(state["cuda_rng_state"])
    tracker = tensor_parallel.get_cuda_rng_tracker()
    graph_safe = tensor_parallel.is_graph_safe_cuda_rng_tracker(tracker)
    tracker.set_states({name: tensor_parallel.convert_cuda_rng_state(s, to_graphable=graph_safe)
                        for name, s in state["rng_tracker_states"].items()})


def _sharded(data) -> ShardedObject:
    pp, tp = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    pp_size = ps.get_pipeline_model_parallel_world_size()
    tp_size = ps.get_tensor_model_parallel_world_size()
    dp = ps.get_data_parallel_rank(with_context_parallel=True)
    if ps.get_expert_model_parallel_world_size() > 1:
        dp_size = ps.get_data_parallel_world_size(with_context_parallel=True)
        return ShardedObject(KEY, data, (pp_size, tp_size, dp_size), (pp, tp, dp), replica_id=0)
    return ShardedObject(KEY, data, (pp_size, tp_size), (pp, tp), replica_id=dp)


def sharded_for_save() -> ShardedObject:
    """The entry `state["rng_state"]` of a save: a list of one state, as Megatron-LM's (its
    list holds every DP rank's state only with --data-parallel-random-init)."""
    return _sharded([capture()])


def sharded_for_load() -> ShardedObject:
    """The placeholder a load fills with this rank's saved state."""
    return _sharded([capture()])


def _dp_keyed(ep_size, dp_cp_size):
    """The DP x CP size the `rng_state` objects are keyed by (None: not keyed by DP)."""
    return dp_cp_size if ep_size > 1 else None


def load_decision(saved_args: dict, finetune: bool, no_load_rng: bool,
                  has_rng_state: bool) -> Tuple[bool, Optional[str]]:
    """(load the RNG state?, notice to print or None), Megatron-LM's rule plus the EP case."""
    if finetune or no_load_rng or saved_args.get("no_save_rng", False):
        return False, None
    if not has_rng_state:  # a checkpoint written before RNG state was saved, or an HF import
        return False, ("notice: the checkpoint holds no RNG state: random streams (dropout) "
                       "continue from --seed, not from the saved run")
    saved = (saved_args.get("tensor_model_parallel_size", 1),
             saved_args.get("pipeline_model_parallel_size", 1))
    mine = (ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_world_size())
    if saved != mine:
        return False, (f"notice: (TP, PP) mismatch after resume ({mine} vs {saved} from "
                       "checkpoint): RNG state will be ignored")
    # With EP the objects are keyed by DP x CP rank as well: another such size has no key.
    saved_dp_cp = (saved_args.get("data_parallel_size", 1)
                   * saved_args.get("context_parallel_size", 1))
    if _dp_keyed(saved_args.get("expert_model_parallel_size", 1), saved_dp_cp) != _dp_keyed(
            ps.get_expert_model_parallel_world_size(),
            ps.get_data_parallel_world_size(with_context_parallel=True)):
        return False, ("notice: expert-parallel RNG state is kept per data-parallel rank and "
                       "the DP or EP layout changed since the save: RNG state will be ignored")
    return True, None


def restore_loaded(loaded) -> None:
    """Apply what `dist_checkpointing.load` returned for `sharded_for_load()`."""
    states = loaded.data if isinstance(loaded, ShardedObject) else loaded
    restore(states[0])
