"""Checkpoint directory layout (Megatron-LM's), shared by the engine and tools/:

    CKPT/latest_checkpointed_iteration.txt     the last *complete* checkpoint's iteration
    CKPT/iter_0000010/                         megatron dist-checkpoint of {"model0", ...}
    CKPT/iter_0000010/run_config.json          args, NITP config, iteration, tokenizer

A save is written to `iter_XXXXXXX.tmp` and renamed when complete; only then does the pointer
move. A crash mid-save leaves the previous checkpoint as the latest.
"""

import json
import os

TRACKER = "latest_checkpointed_iteration.txt"
RUN_CONFIG = "run_config.json"


class CheckpointError(RuntimeError):
    pass


def iteration_dir(ckpt_dir: str, iteration: int) -> str:
    return os.path.join(ckpt_dir, f"iter_{iteration:07d}")


def latest_iteration(ckpt_dir: str):
    """The iteration the tracker names, or None when the directory holds no checkpoint."""
    path = os.path.join(ckpt_dir, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path}: corrupted tracker file (expected an iteration number, "
                              f"found {text[:40]!r})")
    return int(text)


def read_run_config(ckpt_dir: str, iteration=None) -> dict:
    if iteration is None:
        iteration = latest_iteration(ckpt_dir)
        if iteration is None:
            raise CheckpointError(f"{ckpt_dir}: no checkpoint ({TRACKER} not found)")
    path = os.path.join(iteration_dir(ckpt_dir, iteration), RUN_CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing; checkpoint iteration {iteration} is incomplete "
                              "or not written by megatron-nitp")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupted ({e})")


def json_safe_args(args) -> dict:
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(
                isinstance(x, (str, int, float, bool, type(None))) for x in v):
            out[k] = list(v)
    return out
