"""training/rng_state.py: what a checkpoint's RNG state restores, and when a resume loads it
(Megatron-LM's rule, plus the expert-parallel DP-keyed case)."""

import random

import numpy as np
import pytest
import torch


def _draws():
    from megatron.core import tensor_parallel

    with tensor_parallel.get_cuda_rng_tracker().fork():  # attention dropout's generator
        tracked = torch.nn.functional.dropout(torch.ones(64), 0.5)
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(),
            torch.nn.functional.dropout(torch.ones(64), 0.5).tolist(), tracked.tolist())


def test_restore_replays_every_generator(mp):
    from megatron_nitp.training import rng_state

    saved = rng_state.capture()
    first = _draws()
    assert _draws() != first  # the generators moved on
    rng_state.restore(saved)
    assert _draws() == first


def test_the_saved_object_is_megatron_lms_per_pp_tp_rank(mp):
    from megatron_nitp.training import rng_state

    obj = rng_state.sharded_for_save()
    assert obj.unique_key == "rng_state/shard_0.0_1.1" and obj.replica_id == 0
    assert set(obj.data[0]) == {"random_rng_state", "np_rng_state", "torch_rng_state",
                                "cuda_rng_state", "rng_tracker_states"}
    assert "model-parallel-rng" in obj.data[0]["rng_tracker_states"]


SAVED = dict(tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
             expert_model_parallel_size=1, data_parallel_size=1, context_parallel_size=1)


@pytest.mark.parametrize("saved, flags, ep, dp, expected", [
    ({}, dict(), 1, 1, (True, None)),
    ({}, dict(finetune=True), 1, 1, (False, None)),
    ({}, dict(no_load_rng=True), 1, 1, (False, None)),
    (dict(no_save_rng=True), dict(), 1, 1, (False, None)),
    (dict(tensor_model_parallel_size=2), dict(), 1, 1, (False, "(TP, PP) mismatch")),
    (dict(pipeline_model_parallel_size=2), dict(), 1, 1, (False, "(TP, PP) mismatch")),
    (dict(data_parallel_size=4), dict(), 1, 1, (True, None)),  # keyed by PP/TP only
    (dict(expert_model_parallel_size=2, data_parallel_size=2), dict(), 2, 2, (True, None)),
    (dict(expert_model_parallel_size=2, data_parallel_size=4), dict(), 2, 2,
     (False, "expert-parallel RNG state")),
    (dict(expert_model_parallel_size=2, data_parallel_size=2), dict(), 1, 2,
     (False, "expert-parallel RNG state")),
])
def test_load_decision_is_megatron_lms_rule(mp, monkeypatch, saved, flags, ep, dp, expected):
    from megatron.core import parallel_state as ps

    from megatron_nitp.training import rng_state

    monkeypatch.setattr(ps, "get_expert_model_parallel_world_size", lambda: ep)
    monkeypatch.setattr(ps, "get_data_parallel_world_size", lambda **kw: dp)
    load, notice = rng_state.load_decision({**SAVED, **saved}, flags.get("finetune", False),
                                           flags.get("no_load_rng", False), True)
    assert load == expected[0]
    assert (notice is None) if expected[1] is None else (expected[1] in notice)


def test_a_checkpoint_without_rng_state_says_so_once(mp):
    from megatron_nitp.training import rng_state

    load, notice = rng_state.load_decision(SAVED, False, False, has_rng_state=False)
    assert not load and notice.startswith("notice: the checkpoint holds no RNG state")
