"""The learning-rate/weight-decay schedule on resume: Megatron-LM's two flags, said out loud.

megatron-core's `OptimizerParamScheduler.load_state_dict` compares each saved schedule value
with the one built from the flags (`_check_and_set`): with `--override-opt_param-scheduler` the
flags win, with `--use-checkpoint-opt_param-scheduler` the checkpoint wins, with neither
(Megatron-LM 0.16.1's default) a difference is an assertion. Here the same comparison runs
before the model is built, from the checkpoint's `common.pt`: a difference without a flag is one
ConfigError naming the values and both flags, and with a flag a notice names each differing
value and which one is used. megatron-core then applies the choice itself.

The batch sizes (--global-batch-size, --rampup-batch-size) are part of the schedule here: a
change needs one of the two flags too, and with either the run uses its own batch sizes (as
Megatron-LM does, whose scheduler flags never set them); the iterations left then follow from
the consumed samples (sample_schedule.continue_sample_plan).
"""

import os

from .checkpoint_io import CheckpointError
from .log import info
from .validation import ConfigError

# The values megatron's scheduler saves and checks, and the flags they come from.
FLAGS = {
    "max_lr": "--lr",
    "min_lr": "--min-lr",
    "lr_warmup_steps": "--lr-warmup-iters (-samples, -fraction)",
    "lr_decay_steps": "--lr-decay-iters (default --train-iters; or -samples)",
    "lr_decay_style": "--lr-decay-style",
    "start_wd": "--weight-decay",
    "end_wd": "--weight-decay",
    "wd_incr_steps": "--train-iters (the weight-decay schedule's length)",
    "wd_incr_style": "constant weight decay",
}


def scheduler_kwargs(args) -> dict:
    """OptimizerParamScheduler's keyword arguments from the flags (step.build_optimizer)."""
    from .sample_schedule import schedule_lengths

    # Iterations, or samples with --train-samples (Megatron-LM's units for each mode).
    warmup_steps, decay_steps, wd_incr_steps, _ = schedule_lengths(args)
    if not args.train_iters:  # a seed checkpoint takes no step; megatron asserts warmup < decay
        decay_steps = max(decay_steps, warmup_steps + 1)
    return dict(
        init_lr=args.lr_warmup_init if warmup_steps else args.lr,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=wd_incr_steps,
        wd_incr_style="constant",
        wsd_decay_steps=args.lr_wsd_decay_iters,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
    )


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def schedule_differences(args, saved_state: dict):
    """[(name, checkpoint value, flag value)] for every checked value that differs."""
    mine = scheduler_kwargs(args)
    return [(name, saved_state[name], mine[name]) for name in FLAGS
            if name in saved_state and not _same(saved_state[name], mine[name])]


def saved_scheduler_state(iteration_path: str):
    import torch

    path = os.path.join(iteration_path, "common.pt")
    try:
        common = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated or garbage: one line, as load_checkpoint says it
        raise CheckpointError(f"--load {path}: cannot read the checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    return common.get("opt_param_scheduler") if isinstance(common, dict) else None


# Schedule settings megatron's scheduler does not save; the run config's args hold them.
FROM_SAVED_ARGS = {
    "lr_wsd_decay_iters": "--lr-wsd-decay-iters",
    "lr_wsd_decay_style": "--lr-wsd-decay-style",
    # The embedding/output layers' group (training/decoupled_lr.py): its max/min lr live in the
    # optimizer's param group, not in the scheduler's state.
    "decoupled_lr": "--decoupled-lr",
    "decoupled_min_lr": "--decoupled-min-lr",
}
# The batch sizes: Megatron-LM counts schedule steps in samples, so a new --global-batch-size
# trips its schedule check with --train-iters (here steps are iterations: it is compared
# directly); a new --rampup-batch-size, or batch size with --train-samples, it follows silently.
# Here either is a schedule change, and with either scheduler flag the batch sizes are this
# run's, as in Megatron-LM (its flags choose the scheduler's values, not the batch sizes).
BATCH_ARGS = {
    "global_batch_size": "--global-batch-size",
    "rampup_batch_size": "--rampup-batch-size",
}


def _batch_differences(args, saved_args, consumed):
    """[(name, checkpoint value, flag value)] of the batch sizes the rest of the run would use:
    a ramp both runs have finished by `consumed` samples is no change."""
    diffs = []
    for name in BATCH_ARGS:
        if name not in saved_args:
            continue
        saved, mine = saved_args[name], getattr(args, name)
        if name == "rampup_batch_size":
            from .batch_rampup import ramp_ahead

            if ramp_ahead(saved, consumed) == ramp_ahead(mine, consumed):
                continue
        elif _same(saved, mine):
            continue
        diffs.append((name, saved, mine))
    return diffs


def _show(value):
    """A value as its flag is written (a ramp's three numbers; 'none' for an unset one)."""
    if value is None:
        return "none"
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _as_flags(diffs):
    """The flags that keep the checkpoint's batch sizes."""
    return " ".join(f"no {BATCH_ARGS[name]}" if saved is None else f"{BATCH_ARGS[name]} "
                    f"{_show(saved)}" for name, saved, _ in diffs)


def group_schedule(optimizer):
    """Each param group's peak and final lr, as built from this run's flags."""
    return [(g.get("max_lr"), g.get("min_lr")) for g in optimizer.param_groups]


def keep_group_schedule(optimizer, scheduler, built):
    """After `optimizer.load_state_dict`: megatron-core 0.16.1 takes each param group's max_lr and
    min_lr (which its scheduler anneals) from the checkpoint, so --override-opt_param-scheduler
    would not change them; the flags' values go back unless --use-checkpoint-opt_param-scheduler.
    Without either flag a difference was refused before the load (check_schedule_on_resume)."""
    if scheduler.use_checkpoint_opt_param_scheduler:
        return
    for group, (max_lr, min_lr) in zip(optimizer.param_groups, built):
        group["max_lr"], group["min_lr"] = max_lr, min_lr


def check_schedule_on_resume(args, iteration_path: str, log=info, saved_args=None, consumed=0):
    """Before the model is built: a schedule or batch-size change needs one of the two flags.
    `saved_args`/`consumed`: the checkpoint's run-config args and consumed samples."""
    state = saved_scheduler_state(iteration_path)
    if not state:
        return
    saved_args = saved_args or {}
    flags = dict(FLAGS, **FROM_SAVED_ARGS, **BATCH_ARGS)
    diffs = schedule_differences(args, state) + [
        (name, saved_args[name], getattr(args, name)) for name in FROM_SAVED_ARGS
        if name in saved_args and not _same(saved_args[name], getattr(args, name))]
    batch = _batch_differences(args, saved_args, consumed)
    if not diffs and not batch:
        return
    listed = "; ".join(f"{name} {_show(saved)} in the checkpoint, {_show(mine)} from "
                       f"{flags[name]}" for name, saved, mine in diffs + batch)
    keep = f"pass {_as_flags(batch)} to keep the checkpoint's" if batch else ""
    if args.use_checkpoint_opt_param_scheduler:
        # megatron-core restores what its scheduler and param groups saved; the WSD settings
        # come from here, and the decoupled ones are recorded as the groups hold them.
        for name, saved, _ in diffs:
            if name.startswith(("lr_wsd_", "decoupled_")):
                setattr(args, name, saved)
    if args.override_opt_param_scheduler:
        log(f"notice: resume changes the schedule: {listed}; using the flags' values "
            "(--override-opt_param-scheduler)")
    elif args.use_checkpoint_opt_param_scheduler:
        what = "the checkpoint's values" if diffs else "the checkpoint's learning-rate schedule"
        log(f"notice: resume changes the schedule: {listed}; using {what} "
            "(--use-checkpoint-opt_param-scheduler)"
            + ("; the batch sizes are this run's, as in Megatron-LM" if batch else ""))
    elif diffs:
        raise ConfigError(f"--load {args.load}: the schedule differs from the checkpoint's "
                          f"({listed}); pass --override-opt_param-scheduler to use the new "
                          "values or --use-checkpoint-opt_param-scheduler to keep the "
                          "checkpoint's"
                          + (f"; either way the batch sizes are this run's ({keep})"
                             if batch else ""))
    else:  # only the batch sizes: the two flags would do the same
        raise ConfigError(f"--load {args.load}: the batch sizes differ from the checkpoint's "
                          f"({listed}); pass --override-opt_param-scheduler (or "
                          "--use-checkpoint-opt_param-scheduler) to resume with this run's, "
                          f"or {keep}")
