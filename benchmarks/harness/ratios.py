"""NITP next to NTP: the FLOPs-predicted ratio (App. G, megatron_nitp.nitp.flops) and the
measured ratios of a record."""

import math
import statistics


def flops_summary(args):
    from megatron_nitp.nitp.flops import training_flops_per_token

    f = training_flops_per_token(args)
    return {k: f[k] for k in ("baseline_flops_per_token", "nitp_flops_per_token", "overhead_pct",
                              "nitp_head_flops_per_token", "nitp_loss_flops_per_token",
                              "pipeline_carry_boundaries",
                              "pipeline_carry_bytes_per_microbatch_per_boundary",
                              "total_params", "nitp_head_params")}


def flops_ratio(args):
    """(NTP + NITP training FLOPs per token) / NTP for the shape benchmarked."""
    f = flops_summary(args)
    return 1.0 + f["nitp_flops_per_token"] / f["baseline_flops_per_token"]


def single_process_ratios(n, t):
    """Ratios of the NITP variant's record `t` to the NTP one's `n` (time, CPU time, memory)."""
    # Each repeat's NITP and NTP steps are adjacent in time: the median of their ratios is less
    # sensitive to load that drifts over the run than the ratio of medians.
    paired = [b / a for a, b in zip(n["step_time_s"], t["step_time_s"])]
    return dict(
        step_time_ratio=t["step_time_median_s"] / n["step_time_median_s"],
        cpu_time_ratio=t["cpu_time_median_s"] / n["cpu_time_median_s"],
        paired_step_time_ratio=statistics.median(paired),
        paired_step_time_ratio_range=[min(paired), max(paired)],
        paired_cpu_time_ratio=statistics.median(
            b / a for a, b in zip(n["cpu_time_s"], t["cpu_time_s"])),
        memory_ratio=t["peak_bytes"] / n["peak_bytes"],
        persistent_memory_ratio=t["persistent_bytes"] / n["persistent_bytes"],
    )


def pipeline_ratios(ntp, nitp, predicted_extra):
    """Ratios of the PP=2 run: bytes between stages and the step time of the slowest stage."""
    return dict(p2p_bytes_ratio=nitp["p2p_bytes_per_step"] / ntp["p2p_bytes_per_step"],
                p2p_extra_bytes_per_step=nitp["p2p_bytes_per_step"] - ntp["p2p_bytes_per_step"],
                p2p_extra_bytes_predicted=predicted_extra,
                step_time_ratio=nitp["step_time_median_s"] / ntp["step_time_median_s"])


def check_finite(records):
    for r in records:
        for key in ("step_time_ratio", "memory_ratio", "flops_ratio"):
            if key in r and not math.isfinite(r[key]):
                raise RuntimeError(f"{r['shape']}: {key} is {r[key]}")
