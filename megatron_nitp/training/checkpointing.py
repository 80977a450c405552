"""Save and resume full training state with megatron-core's distributed checkpointing.

Model (every virtual chunk), optimizer (`fully_reshardable`, so TP/PP/DP may change between save
and load), scheduler, iteration, consumed samples, NITP config and args. Written to
`iter_XXXXXXX.tmp` and renamed only when every rank has finished, then the tracker moves: a run
killed mid-save resumes from the previous complete checkpoint.
"""

import os
import shutil
import signal
import time

import torch
from megatron.core import dist_checkpointing, parallel_state

from ..nitp.config import saved_head_in_use
from . import rng_state
from .checkpoint_io import (
    RUN_CONFIG,
    TRACKER,
    CheckpointError,
    iteration_dir,
    json_safe_args,
    latest_iteration,
    read_run_config,
)
from .debug import FAULTS
from .log import info
from .out_of_space import out_of_space
from .schedule_resume import group_schedule, keep_group_schedule

SHARDING = "fully_reshardable"
HEAD_PREFIX = "nitp_head."


def _model_state(chunks, drop_head=False):
    state = {}
    for i, chunk in enumerate(chunks):
        sd = chunk.sharded_state_dict()
        if drop_head:
            sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIX)}
        state[f"model{i}"] = sd
    return state


def _optimizer_state(optimizer, model_state, is_loading):
    """Only the distributed optimizer takes a sharding type (fully_reshardable: any TP/PP/DP)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    # megatron-core 0.16.1 reads the type from `metadata`: its deprecated `sharding_type`
    # argument leaves `metadata` None, and `sharded_param_state_fully_reshardable` then fails on
    # `metadata.get(...)`.
    kwargs = ({"metadata": {"distrib_optim_sharding_type": SHARDING}}
              if any(isinstance(o, DistributedOptimizer) for o in parts) else {})
    return optimizer.sharded_state_dict(model_state, is_loading=is_loading, **kwargs)


def _rank0():
    return torch.distributed.get_rank() == 0


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(ckpt_dir, iteration, *args, **kwargs):
    """Save (see _save_checkpoint); a failed save leaves no `.tmp` behind, and running out of
    room (disk full, quota, `ulimit -f`) is one CheckpointError naming the iteration and DIR."""
    # A file-size limit then fails the write with EFBIG instead of killing the run (SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        _save_checkpoint(ckpt_dir, iteration, *args, **kwargs)
    except BaseException as e:  # incl. Ctrl-C: no half-written save may stay behind
        if _rank0():
            shutil.rmtree(iteration_dir(ckpt_dir, iteration) + ".tmp", ignore_errors=True)
            _remove(os.path.join(ckpt_dir, TRACKER + ".tmp"))
        if out_of_space(e):
            latest = latest_iteration(ckpt_dir)
            kept = ("there is no earlier checkpoint" if latest is None else
                    f"the latest checkpoint is still iteration {latest}")
            raise CheckpointError(f"no space left on device while saving iteration {iteration} "
                                  f"to {ckpt_dir} (the partial save was removed; {kept})") from e
        raise


def _save_checkpoint(ckpt_dir, iteration, chunks, optimizer, scheduler, consumed_samples, args,
                     nitp_config, tokenizer_info, keep_last_n=None, log=info):
    import json

    final = iteration_dir(ckpt_dir, iteration)
    tmp = final + ".tmp"
    if _rank0():
        os.makedirs(ckpt_dir, exist_ok=True)
        _remove_partial_saves(ckpt_dir)
        os.makedirs(tmp)
    torch.distributed.barrier()
    start = time.time()
    model_state = _model_state(chunks)
    state = dict(model_state)
    if not args.no_save_optim:  # Megatron-LM: neither optimizer nor scheduler
        state["optimizer"] = _optimizer_state(optimizer, model_state, is_loading=False)
        state["opt_param_scheduler"] = scheduler.state_dict()
    saves_rng = not args.no_save_rng
    if saves_rng:  # Megatron-LM's per-rank ShardedObject (training/rng_state.py)
        state[rng_state.KEY] = rng_state.sharded_for_save()
    state["iteration"] = iteration
    state["consumed_samples"] = consumed_samples
    dist_checkpointing.save(state, tmp)
    FAULTS.slow_save(iteration)  # debug fault injection (training/debug.py)
    torch.distributed.barrier()
    if _rank0():
        run_config = dict(args=json_safe_args(args), nitp=nitp_config.to_dict(),
                          iteration=iteration, consumed_samples=consumed_samples,
                          tokenizer=tokenizer_info, rng_state=saves_rng)
        _write_atomic(os.path.join(tmp, RUN_CONFIG), json.dumps(run_config, indent=1))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(os.path.join(ckpt_dir, TRACKER), str(iteration))
        if keep_last_n:
            _prune(ckpt_dir, keep_last_n, iteration)
    torch.distributed.barrier()
    log(f"saved checkpoint iteration {iteration} to {final} in {time.time() - start:.1f} s")


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _remove_partial_saves(ckpt_dir):
    """`iter_X.tmp` directories are saves that a killed run never finished; no tracker points
    at them and nothing may load them, so the next save clears them away."""
    for name in os.listdir(ckpt_dir):
        if name.startswith("iter_") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)


def _prune(ckpt_dir, keep, newest):
    """Keep the `keep` latest checkpoints up to `newest` (the one the tracker now names).

    Directories numbered above `newest` are left alone: they are complete saves of a run that
    was killed between the rename and the tracker update, then resumed from an older checkpoint
    (a sort by number alone would keep them and delete the checkpoint just written).
    """
    its = sorted(int(d[5:]) for d in os.listdir(ckpt_dir)
                 if d.startswith("iter_") and d[5:].isdigit() and int(d[5:]) <= newest)
    for it in its[:-keep]:
        shutil.rmtree(iteration_dir(ckpt_dir, it), ignore_errors=True)


def verify_checkpoint_files(path):
    """Raise CheckpointError naming the file when a checkpoint directory is incomplete.

    megatron's torch_dist format keeps, in `.metadata`, the byte range of every tensor inside the
    `__R_K.distcp` shard files; each referenced file must exist and be long enough. Checked
    before any model is built, so a truncated or deleted shard costs seconds and one line instead
    of a model build and a loader traceback. (Bytes corrupted in place are not detected: the
    format has no checksums.)
    """
    import json

    from torch.distributed.checkpoint import FileSystemReader

    def missing(name):
        return CheckpointError(f"--load: checkpoint {path} is incomplete: {name} is missing "
                               "(partial copy or deleted file?)")

    meta_json = os.path.join(path, "metadata.json")
    if not os.path.isfile(meta_json):
        if os.path.isdir(path) and any(n.startswith("mp_rank_") for n in os.listdir(path)):
            # What --auto-detect-ckpt-format would find: Megatron-LM's legacy per-rank files.
            raise CheckpointError(f"--load: {path} is a legacy torch checkpoint (--ckpt-format "
                                  "torch); megatron-nitp reads torch_dist only (Megatron-LM's "
                                  "--ckpt-convert-format torch_dist converts it)")
        raise missing("metadata.json")
    try:
        with open(meta_json) as f:
            backend = json.load(f).get("sharded_backend")
    except (ValueError, AttributeError):  # bad JSON or undecodable bytes
        raise CheckpointError(f"--load: {meta_json}: corrupted (not megatron's JSON metadata)")
    if not os.path.isfile(os.path.join(path, "common.pt")):
        raise missing("common.pt")
    if backend != "torch_dist":
        raise CheckpointError(f"--load: {path} is a {backend} checkpoint; megatron-nitp reads "
                              "torch_dist only")
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise missing(".metadata")
    try:
        storage = FileSystemReader(path).read_metadata().storage_data
    except Exception as e:  # unpickling garbage raises anything
        raise CheckpointError(f"--load: {os.path.join(path, '.metadata')}: corrupted "
                              f"({type(e).__name__})")
    needed = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0),
                                         info.offset + info.length)
    for name, end in sorted(needed.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise missing(name)
        size = os.path.getsize(file)
        if size < end:
            raise CheckpointError(f"--load: checkpoint {path} is incomplete: {name} is "
                                  f"truncated ({size} bytes, the metadata needs {end})")


def _fresh_head(saved_run_config, nitp_config):
    return nitp_config.uses_head and not saved_head_in_use(saved_run_config.get("nitp"))


def loads_optimizer_state(saved_run_config, nitp_config) -> bool:
    """Whether a resume restores the optimizer and scheduler (not for a model-only checkpoint,
    one saved with --no-save-optim, nor when a fresh NITP head joins: the optimizer's parameter
    set changed)."""
    return not _fresh_head(saved_run_config, nitp_config) and \
        not saved_run_config.get("model_only", False) and \
        not saved_run_config.get("args", {}).get("no_save_optim", False)


def continues_schedule(saved_run_config, finetune=False, no_load_optim=False) -> bool:
    """Whether a resume restores the checkpoint's learning-rate schedule: not with --finetune or
    --no-load-optim (Megatron-LM: fresh optimizer and scheduler), nor from a model-only
    checkpoint (an HF import), nor from one saved with --no-save-optim (it holds none). A fresh
    NITP head keeps it: the schedule does not depend on the parameter set."""
    return not (finetune or no_load_optim or saved_run_config.get("model_only", False)
                or saved_run_config.get("args", {}).get("no_save_optim", False))


def load_checkpoint(ckpt_dir, chunks, optimizer, scheduler, nitp_config, log=info,
                    finetune=False, no_load_optim=False, strict="assume_ok_unexpected",
                    no_load_rng=False):
    """Restore state in place; returns (iteration, consumed_samples).

    `finetune` (Megatron-LM's --finetune): the model weights only; the run starts at iteration 0
    with its fresh optimizer and scheduler. `no_load_optim` (--no-load-optim): the model,
    iteration and consumed samples, with a fresh optimizer and scheduler. `strict`: megatron-core's
    StrictHandling for key mismatches (--dist-ckpt-strictness). The RNG state is restored
    unless `finetune` or `no_load_rng` (--no-load-rng), as Megatron-LM (training/rng_state.py)."""
    iteration = latest_iteration(ckpt_dir)
    if iteration is None:
        raise CheckpointError(f"--load {ckpt_dir}: no checkpoint found")
    path = iteration_dir(ckpt_dir, iteration)
    saved = read_run_config(ckpt_dir, iteration)
    fresh_head = _fresh_head(saved, nitp_config)
    model_only = saved.get("model_only", False)
    model_state = _model_state(chunks, drop_head=fresh_head)
    state = dict(model_state)
    load_optimizer = loads_optimizer_state(saved, nitp_config) and not finetune and \
        not no_load_optim
    if load_optimizer:
        state["optimizer"] = _optimizer_state(optimizer, model_state, is_loading=True)
    # A model-only checkpoint (HF import) starts a new run, as Megatron-LM's "release" one.
    load_rng, rng_notice = rng_state.load_decision(saved.get("args", {}), finetune or model_only,
                                                   no_load_rng,
                                                   saved.get("rng_state", False))
    if rng_notice:
        log(rng_notice)
    if load_rng:
        state[rng_state.KEY] = rng_state.sharded_for_load()
    try:
        loaded = dist_checkpointing.load(state, path, strict=strict)
    except Exception as e:  # corrupt or partial: say so in one line
        raise CheckpointError(f"--load {path}: cannot read the checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if isinstance(loaded, tuple):  # the return_* strictness values: (state, missing, unexpected)
        loaded, missing, unexpected = loaded
        log(f"--dist-ckpt-strictness {strict}: {len(missing)} missing keys "
            f"{sorted(missing)[:5]}, {len(unexpected)} unexpected keys {sorted(unexpected)[:5]}")
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded[f"model{i}"], strict=not fresh_head)
    if load_rng:
        rng_state.restore_loaded(loaded[rng_state.KEY])
    if not load_optimizer:
        # The mixed-precision optimizer copied its fp32 main weights from the initial model when
        # it was built; without its checkpoint state they must be refreshed from the loaded
        # weights (Megatron-LM does the same), or the first step writes the initial model back.
        optimizer.reload_model_params()
    if fresh_head and not finetune:
        log("notice: the checkpoint has no NITP head (an NTP run); starting a fresh head and a "
            "fresh optimizer state (the learning-rate schedule continues)")
    if load_optimizer:
        built = group_schedule(optimizer)
        optimizer.load_state_dict(loaded["optimizer"])
        keep_group_schedule(optimizer, scheduler, built)
    if continues_schedule(saved, finetune, no_load_optim) and "opt_param_scheduler" in loaded:
        # megatron's scheduler state omits the WSD fields: ours come from the current args.
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if finetune:
        log(f"--finetune: model weights of iteration {iteration} loaded; starting at iteration "
            "0 with a fresh optimizer and scheduler")
        return 0, 0
    elif model_only:
        log("notice: model-only checkpoint (e.g. converted from HF); fresh optimizer")
        return 0, 0
    elif not load_optimizer and not fresh_head:
        why = "--no-load-optim" if no_load_optim else "the checkpoint was saved with --no-save-optim"
        log(f"notice: {why}: model, iteration and consumed samples loaded; fresh optimizer and "
            "scheduler")
    return loaded.get("iteration", iteration), loaded.get("consumed_samples", 0)
