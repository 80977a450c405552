"""Megatron-LM's --rampup-batch-size <start> <increment> <ramp-up samples>, on megatron-core's
num_microbatches_calculator (not re-implemented here).

The global batch starts at <start> and grows by <increment> every
<ramp-up samples> / ((--global-batch-size - start) / increment) consumed samples; once more than
<ramp-up samples> are consumed it is --global-batch-size. As in Megatron-LM 0.16.1: only with
--train-samples (it asserts no ramp-up for iteration-based training); the number of iterations
follows update_train_iters; before each step the calculator is updated from the consumed samples,
the step runs its microbatches, and consumed samples and the sample-counting scheduler advance
by that step's batch; evaluation keeps the full global batch; a checkpoint is saved (with
--save) before the batch grows. The batch depends only on the consumed samples, which every
checkpoint holds, so a resumed run continues the ramp exactly. A ramp changed on resume is a
schedule change (training/schedule_resume.py); with --override-opt_param-scheduler or
--use-checkpoint-opt_param-scheduler the new ramp runs from the consumed samples
(sample_schedule.continue_sample_plan).
"""

FLAG = "--rampup-batch-size"


def _calculator(args):
    """A private calculator (rank -1: it does not log) for planning; the run's own is the
    global one (Trainer). Imported here: validation and --dry-run stay megatron-core free."""
    from megatron.core.num_microbatches_calculator import \
        RampupBatchsizeNumMicroBatchesCalculator

    start, increment, samples = args.rampup_batch_size
    return RampupBatchsizeNumMicroBatchesCalculator(
        args.global_batch_size, args.micro_batch_size, args.data_parallel_size, False, -1,
        start, increment, samples)


def rampup_plan(args, consumed=0):
    """(iterations, samples consumed at the end) of a --train-samples run with the ramp from
    `consumed` samples on (0: the whole run), by Megatron-LM's update_train_iters rule: ramp-phase
    steps while the consumed samples are within both the ramp and --train-samples, then whole
    global batches (a partial last one is dropped)."""
    calc = _calculator(args)
    iterations = 0
    ramp = args.rampup_batch_size[2]
    while consumed <= ramp and consumed <= args.train_samples:
        calc.update(consumed, consistency_check=False)
        consumed += calc.get_current_global_batch_size()
        iterations += 1
    constant = max(args.train_samples - consumed, 0) // args.global_batch_size
    return iterations + constant, consumed + constant * args.global_batch_size


def ramp_ahead(ramp, consumed):
    """The part of a ramp a run resumed at `consumed` samples still follows: None once it is
    over (megatron-core's calculator gives the full global batch past its samples)."""
    return None if ramp is None or consumed > ramp[2] else list(ramp)


def rampup_errors(args):
    """One message for a ramp megatron-core would assert on (or divide by zero with) before or
    during the run (a check: the run's iterations are sample_schedule.derive_train_iters')."""
    start, increment, samples = args.rampup_batch_size
    gbs, unit = args.global_batch_size, args.micro_batch_size * args.data_parallel_size
    usage = f"{FLAG} <start batch size> <batch size increment> <ramp-up samples>"
    if args.train_samples is None:
        yield (f"{FLAG}: needs sample-based training (--train-samples), as in Megatron-LM "
               "(no batch-size ramp-up with --train-iters)")
    elif start <= 0 or increment <= 0 or samples < 0:
        yield f"{FLAG} {start} {increment} {samples}: {usage} needs start > 0, increment > 0 " \
              "and samples >= 0"
    elif start >= gbs:
        yield (f"{FLAG} {start} {increment} {samples}: the start batch size must be smaller "
               f"than --global-batch-size {gbs}")
    elif (gbs - start) % increment:
        yield (f"{FLAG} {start} {increment} {samples}: the increment must divide "
               f"--global-batch-size {gbs} - start {start} = {gbs - start}")
    else:
        calc, consumed = _calculator(args), 0
        while consumed <= samples:  # every batch size the ramp reaches, as the run will
            calc.update(consumed, consistency_check=False)
            size = calc.get_current_global_batch_size()
            if size % unit:
                yield (f"{FLAG} {start} {increment} {samples}: the ramp's batch size {size} is "
                       f"not a multiple of --micro-batch-size {args.micro_batch_size} x "
                       f"data-parallel size {args.data_parallel_size} = {unit}")
                return
            consumed += size
