"""The single-process comparison of one shape: NTP and NITP built from the same seed, trained on
the same batches, alternating step by step (or one after the other with `sequential`)."""

import gc
import os
import statistics

import torch

from .memory import build_and_measure_memory
from .ratios import flops_ratio, flops_summary, single_process_ratios
from .report import log
from .shapes import variant_args
from .timing import alternating, profile_ops, timed_step
from .variant import make_batches


def run_shape(shape, config_file, overrides, opts):
    """One "single_process" record. opts: device, variants, num_microbatches, seed, repeats,
    warmup, sequential, profile."""
    device = opts.device
    load_before = os.getloadavg()[0]
    args = {n: variant_args(config_file, overrides, n, device) for n in opts.variants}
    batches = make_batches(args["ntp"], opts.num_microbatches, seed=opts.seed)
    memory = {}
    wall, cpu, system = ({n: [] for n in ("ntp", "nitp")} for _ in range(3))

    def timed(name, v):
        w, c, sysinfo, _ = timed_step(v, batches)
        wall[name].append(w)
        cpu[name].append(c)
        system[name].append(sysinfo)

    def build(name):
        v, memory[name] = build_and_measure_memory(name, args[name], device, batches, opts.seed)
        log(f"  [{shape}] {name}: built; peak {memory[name]['peak_bytes'] / 2**20:.1f} MiB "
            f"(persistent {memory[name]['persistent_bytes'] / 2**20:.1f} MiB)")
        return v

    # Variants measured for memory only are built, measured and dropped first, so that at most
    # the two timed models are alive at once.
    for name in opts.variants:
        if name not in ("ntp", "nitp"):
            build(name)
            gc.collect()
    if opts.sequential:
        # One model at a time (--full: two full-size models do not fit one GPU together).
        for name in ("ntp", "nitp"):
            v = build(name)
            for _ in range(opts.warmup):
                v.step(batches)
            for _ in range(opts.repeats):
                timed(name, v)
            log(f"  [{shape}] {name}: median step {statistics.median(wall[name]):.3f}s")
            del v
            gc.collect()
        built = None
    else:
        built = {name: build(name) for name in ("ntp", "nitp")}
        for _ in range(opts.warmup):
            for name in built:
                built[name].step(batches)
        for r in range(opts.repeats):
            for name in alternating(("ntp", "nitp"), r):
                timed(name, built[name])
            log(f"  [{shape}] repeat {r + 1}/{opts.repeats}: ntp {wall['ntp'][-1]:.3f}s "
                f"(cpu {cpu['ntp'][-1]:.3f}s) nitp {wall['nitp'][-1]:.3f}s "
                f"(cpu {cpu['nitp'][-1]:.3f}s)")
    profile = profile_ops(built, batches) if opts.profile and built else None
    del built
    gc.collect()

    a = args["nitp"]
    rec = dict(
        kind="single_process", shape=shape, config=config_file, device=device,
        dtype="bfloat16" if a.bf16 else "float32", threads=torch.get_num_threads(),
        num_layers=a.num_layers, hidden_size=a.hidden_size, ffn_hidden_size=a.ffn_hidden_size,
        num_experts=a.num_experts, seq_length=a.seq_length, micro_batch_size=a.micro_batch_size,
        num_microbatches=opts.num_microbatches, vocab_size=a.padded_vocab_size,
        nitp_target_layer=a.nitp_target_layer, repeats=opts.repeats, warmup=opts.warmup,
        interleaved=not opts.sequential,
        # 1-minute load average before/after: how busy the machine was (other jobs).
        load_average=[load_before, os.getloadavg()[0]], cpu_count=os.cpu_count(),
    )
    for name in opts.variants:
        r = dict(memory[name])
        if wall.get(name):
            r.update(step_time_s=wall[name], cpu_time_s=cpu[name], rusage=system[name],
                     step_time_median_s=statistics.median(wall[name]),
                     cpu_time_median_s=statistics.median(cpu[name]))
        rec[name] = r
    rec.update(single_process_ratios(rec["ntp"], rec["nitp"]))
    rec["flops_ratio"] = flops_ratio(a)
    rec["flops"] = flops_summary(a)
    if profile is not None:
        rec["profile"] = profile
    if "nitp_recompute" in rec:
        rec["memory_ratio_head_recompute"] = (rec["nitp_recompute"]["peak_bytes"]
                                              / rec["ntp"]["peak_bytes"])
        rec["flops_ratio_head_recompute"] = flops_ratio(args["nitp_recompute"])
    return rec
