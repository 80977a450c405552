"""Timing one step: wall-clock and CPU time with the process's rusage deltas, and where the
time goes op by op (torch.profiler)."""

import resource
import time
from typing import NamedTuple

from .variant import sync


class Timed(NamedTuple):
    wall_s: float
    cpu_s: float
    rusage: dict  # minor page faults, voluntary / involuntary context switches
    result: object  # the step's StepResult


def timed_step(v, batches, geometry=None) -> Timed:
    sync(v.device)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0, c0 = time.perf_counter(), time.process_time()
    result = v.step(batches, geometry=geometry)
    sync(v.device)
    w, c = time.perf_counter() - w0, time.process_time() - c0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return Timed(w, c, dict(minflt=r1.ru_minflt - r0.ru_minflt, nvcsw=r1.ru_nvcsw - r0.ru_nvcsw,
                            nivcsw=r1.ru_nivcsw - r0.ru_nivcsw), result)


def alternating(names, r):
    """Repeat r's order: as given on even repeats, reversed on odd ones, so that load from other
    jobs on the machine hits every variant alike."""
    return list(names) if r % 2 == 0 else list(reversed(names))


def profile_ops(built, batches, top=15):
    """Where the extra time goes: self CPU time per op (torch.profiler), one step per variant,
    and the ops whose time grows most from NTP to NITP."""
    from torch.profiler import ProfilerActivity, profile

    per_op, totals, flops = {}, {}, {}
    for name in ("ntp", "nitp"):
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            built[name].step(batches)
        averages = prof.key_averages()
        table = {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in averages}
        per_op[name] = table
        totals[name] = sum(t for t, _ in table.values())
        # FLOPs of the matmuls the step really ran (torch's counter: mm, bmm, addmm, baddbmm):
        # independent of load, so it checks the implementation against the App. G formula.
        flops[name] = sum(e.flops for e in averages if e.flops)
    ops = set(per_op["ntp"]) | set(per_op["nitp"])
    diff = []
    for op in ops:
        t0, n0 = per_op["ntp"].get(op, (0.0, 0))
        t1, n1 = per_op["nitp"].get(op, (0.0, 0))
        diff.append(dict(op=op, ntp_s=t0, nitp_s=t1, extra_s=t1 - t0, ntp_calls=n0,
                         nitp_calls=n1))
    diff.sort(key=lambda r: -abs(r["extra_s"]))
    return dict(self_cpu_total_s=totals, counted_flops=flops,
                counted_flops_ratio=flops["nitp"] / flops["ntp"], top_extra_ops=diff[:top])
