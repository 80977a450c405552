"""Peak memory of one variant, in the GPU meaning (`torch.cuda.max_memory_allocated`): the most
tensor bytes alive at once during a training step.

On CUDA it is read from the caching allocator's counters. On CPU every allocation and free of
the CPU allocator is recorded by `torch.profiler.profile(profile_memory=True)` from before the
model is built until after the second step (Adam allocates its state in the first): bytes alive
at the start of step 2 = persistent state, the running sum of the events inside step 2 = its
peak. Exact tensor bytes, unlike RSS (Python heap, libraries, allocator caching; never goes
down)."""

import gc

import torch

from .variant import Variant

STEP_MARK = "overhead/measured_step"


def cpu_memory_from_profile(prof):
    """(bytes alive at the start of the marked step, most bytes alive during it) from the CPU
    allocator events the profiler recorded; counting starts when the profiler started."""
    events = prof.profiler.kineto_results.events()
    marks = [e for e in events if e.name() == STEP_MARK]
    assert len(marks) == 1, f"expected one '{STEP_MARK}' range, found {len(marks)}"
    start, end = marks[0].start_ns(), marks[0].end_ns()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    alive = 0
    at_start = None
    peak = 0
    for t, n in mem:
        if t >= start and at_start is None:
            at_start = peak = alive
        if t > end:
            break
        alive += n
        if at_start is not None:
            peak = max(peak, alive)
    if at_start is None:  # nothing allocated during the step (impossible in practice)
        at_start = peak = alive
    return at_start, peak


def build_and_measure_memory(name, args, device, batches, seed):
    """Build the variant and take two steps; return (variant, memory record).

    persistent_bytes: what the variant holds between steps (parameters, gradient buffers,
    Adam state); peak_bytes: the most bytes alive during the second step."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        v = Variant(name, args, device, seed)
        v.step(batches)
        torch.cuda.synchronize()
        at_start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        v.step(batches)
        torch.cuda.synchronize()
        persistent = at_start - before
        peak = torch.cuda.max_memory_allocated() - before
    else:
        from torch.profiler import ProfilerActivity, profile, record_function

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            v = Variant(name, args, device, seed)
            v.step(batches)
            with record_function(STEP_MARK):
                v.step(batches)
        persistent, peak = cpu_memory_from_profile(prof)
        del prof
    return v, dict(persistent_bytes=int(persistent), peak_bytes=int(peak),
                   activation_peak_bytes=int(peak - persistent))
