"""Megatron-LM's sample-based training (--train-samples) and its schedule flags.

As in Megatron-LM 0.16.1 (training.py: get_optimizer_param_scheduler, update_train_iters):
--train-samples gives the run train_samples // global-batch-size iterations, and the scheduler
then counts *samples*: it advances by the global batch size each iteration and its warmup/decay
lengths are --lr-warmup-samples / --lr-decay-samples (default train-samples). An
iteration-based run keeps counting iterations (its checkpoints' scheduler state stays as it
was); the two give the same learning rate at the same iteration when the sample counts are
multiples of the global batch. With --rampup-batch-size (training/batch_rampup.py) the
iterations follow the ramp and the scheduler advances by each step's batch.
--lr-warmup-fraction sets the warmup to that fraction of the
decay length in either mode. Mixing the two modes' flags is refused, as Megatron-LM asserts.
A resumed --train-samples run plans its remaining iterations from the checkpoint's consumed
samples: Megatron-LM keeps the iteration count planned from sample 0, so a batch size or ramp
changed on resume (schedule_resume.py) would stop it short of, or past, --train-samples.
"""

from .batch_rampup import rampup_errors, rampup_plan


def sample_schedule_errors(args):
    """One message per inconsistent schedule flag (a check: it changes nothing; validation calls
    it once the global and data-parallel batch sizes are known, then derive_train_iters)."""
    if args.train_samples is None:
        if args.lr_decay_samples is not None or args.lr_warmup_samples:
            flag = "--lr-decay-samples" if args.lr_decay_samples is not None else \
                "--lr-warmup-samples"
            yield f"{flag}: needs sample-based training (--train-samples); with --train-iters " \
                  "use the -iters flags"
        elif args.lr_warmup_fraction is not None and args.lr_warmup_iters:
            yield "--lr-warmup-fraction and --lr-warmup-iters: give one of the two"
        elif args.rampup_batch_size is not None:
            yield from rampup_errors(args)
        return
    if args.train_iters is not None:
        yield "--train-iters and --train-samples: give one of the two"
    elif args.lr_decay_iters is not None:
        yield "--lr-decay-iters: iteration-based; with --train-samples use --lr-decay-samples"
    elif args.lr_warmup_iters:
        yield "--lr-warmup-iters: iteration-based; with --train-samples use --lr-warmup-samples"
    elif args.lr_warmup_fraction is not None and args.lr_warmup_samples:
        yield "--lr-warmup-fraction and --lr-warmup-samples: give one of the two"
    elif args.lr_decay_style == "WSD":
        yield "--lr-decay-style WSD with --train-samples: not supported (--lr-wsd-decay-samples " \
              "is not implemented); use --train-iters"
    elif args.rampup_batch_size is not None:
        yield from rampup_errors(args)
    elif args.train_samples < args.global_batch_size:
        yield (f"--train-samples {args.train_samples}: less than one global batch "
               f"({args.global_batch_size})")


def derive_train_iters(args):
    """--train-samples: --train-iters is the plan from sample 0 (Megatron-LM's update_train_iters:
    whole global batches, or the ramp's steps then whole batches). Resolution derives it once
    sample_schedule_errors has passed, before anything reads train_iters."""
    if args.train_samples is not None:
        args.train_iters = sample_plan(args)[0]


def schedule_lengths(args):
    """(warmup, decay, weight-decay increment) steps and the scheduler's increment per
    iteration, in Megatron-LM's units for the run's mode."""
    if args.train_samples is not None:
        decay = args.lr_decay_samples or args.train_samples
        warmup = args.lr_warmup_samples
        wd_incr, increment = args.train_samples, args.global_batch_size
    else:
        decay = args.lr_decay_iters
        warmup = args.lr_warmup_iters
        wd_incr, increment = args.train_iters, 1
    if args.lr_warmup_fraction is not None:
        warmup = args.lr_warmup_fraction * decay
    return warmup, decay, wd_incr, increment


def scheduler_increment(args, batch_size: int) -> int:
    """The scheduler's step: one iteration, or (counting samples) the step's batch, which
    --rampup-batch-size makes smaller than --global-batch-size while it ramps."""
    return batch_size if args.train_samples is not None else 1


def sample_plan(args, iteration=0, consumed=0):
    """(train_iters, samples consumed at the end) of a run continuing from `iteration` and
    `consumed` samples with this run's batch sizes (0, 0: Megatron-LM's update_train_iters)."""
    gbs = args.global_batch_size
    if args.train_samples is None:
        return args.train_iters, consumed + max(args.train_iters - iteration, 0) * gbs
    if args.rampup_batch_size is not None:
        steps, end = rampup_plan(args, consumed)
    else:
        steps = max(args.train_samples - consumed, 0) // gbs
        end = consumed + steps * gbs
    return iteration + steps, end


def planned_samples(args, iteration=0, consumed=0) -> int:
    """The training split's size: the samples the run consumes by its end, never fewer than a
    straight run's (the dataset's sample order depends on its size)."""
    return max(sample_plan(args)[1], sample_plan(args, iteration, consumed)[1])


def continue_sample_plan(args, run_config: dict, log):
    """On resume: a --train-samples run's iterations are those done plus what its batch sizes
    need from the checkpoint's consumed samples to --train-samples (not with --finetune or
    from a model-only checkpoint: those start at sample 0)."""
    if args.train_samples is None or args.finetune or run_config.get("model_only", False):
        return
    iteration, consumed = run_config.get("iteration", 0), run_config.get("consumed_samples", 0)
    planned = sample_plan(args, iteration, consumed)[0]
    if planned != args.train_iters:
        log(f"notice: --train-samples {args.train_samples}: {planned - iteration} more "
            f"iterations from the checkpoint's {consumed} consumed samples (iteration "
            f"{iteration}), {planned} in all; planned from sample 0 with this run's batch "
            f"sizes it would be {args.train_iters}")
        args.train_iters = planned
