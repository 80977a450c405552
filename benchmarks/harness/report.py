"""The report: the Markdown table of overhead.py's records, its summary lines, the JSON and
Markdown files every benchmark writes, and progress lines on stderr."""

import json
import os
import sys


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def write_outputs(records, table: str, out: str, markdown_path=None):
    """The benchmark's JSON records at `out`, its markdown table at `markdown_path` and stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(records, fh, indent=1)
    if markdown_path:
        with open(markdown_path, "w") as fh:
            fh.write(table)
    print(table)


def _mib(n):
    return f"{n / 2**20:.1f}"


def markdown(records):
    lines = ["| shape | layers x d, seq x mbs, vocab | NTP step (s) | NITP step (s) | "
             "step-time ratio NITP/NTP | per-repeat ratio: median [min, max] | CPU-time ratio | "
             "NTP peak (MiB) | NITP peak (MiB) | peak-memory ratio | with head recompute | "
             "FLOPs-predicted ratio | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["kind"] != "single_process":
            continue
        rc = r.get("memory_ratio_head_recompute")
        lo, hi = r["paired_step_time_ratio_range"]
        lines.append(
            f"| {r['shape']} | {r['num_layers']} x {r['hidden_size']}, {r['seq_length']} x "
            f"{r['micro_batch_size']}, {r['vocab_size']} | {r['ntp']['step_time_median_s']:.3f} | "
            f"{r['nitp']['step_time_median_s']:.3f} | **{r['step_time_ratio']:.3f}** | "
            f"{r['paired_step_time_ratio']:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{r['cpu_time_ratio']:.3f} | {_mib(r['ntp']['peak_bytes'])} | "
            f"{_mib(r['nitp']['peak_bytes'])} | **{r['memory_ratio']:.3f}** | "
            f"{'%.3f' % rc if rc is not None else '-'} | **{r['flops_ratio']:.3f}** | "
            f"{r['load_average'][0]:.0f}-{r['load_average'][1]:.0f} |")
    singles = [r for r in records if r["kind"] == "single_process"]
    if singles:
        lines += ["", "| shape | persistent NTP / NITP (MiB) | ratio | step activations NTP / NITP"
                  " / NITP+recompute (MiB) | NITP head params |", "|---|---|---|---|---|"]
        for r in singles:
            rc = r.get("nitp_recompute")
            lines.append(
                f"| {r['shape']} | {_mib(r['ntp']['persistent_bytes'])} / "
                f"{_mib(r['nitp']['persistent_bytes'])} | {r['persistent_memory_ratio']:.3f} | "
                f"{_mib(r['ntp']['activation_peak_bytes'])} / "
                f"{_mib(r['nitp']['activation_peak_bytes'])} / "
                f"{_mib(rc['activation_peak_bytes']) if rc else '-'} | "
                f"{r['flops']['nitp_head_params']:,} of {r['flops']['total_params']:,} |")
    for r in singles:
        if "profile" not in r:
            continue
        tot = r["profile"]["self_cpu_total_s"]
        fl = r["profile"]["counted_flops"]
        lines += ["", f"Profile of one step, {r['shape']} (self CPU time; NTP {tot['ntp']:.3f}s, "
                  f"NITP {tot['nitp']:.3f}s; matmul FLOPs counted by torch.profiler: NTP "
                  f"{fl['ntp']:.4g}, NITP {fl['nitp']:.4g}, ratio "
                  f"{r['profile']['counted_flops_ratio']:.4f}):", "",
                  "| op | NTP (s) | NITP (s) | extra (s) | calls NTP / NITP |",
                  "|---|---|---|---|---|"]
        for o in r["profile"]["top_extra_ops"]:
            lines.append(f"| {o['op']} | {o['ntp_s']:.3f} | {o['nitp_s']:.3f} | "
                         f"{o['extra_s']:+.3f} | {o['ntp_calls']} / {o['nitp_calls']} |")
    pipes = [r for r in records if r["kind"] == "pipeline_p2p"]
    if pipes:
        lines += ["", "| pipeline run | p2p bytes/step NTP | p2p bytes/step NITP | ratio | "
                  "extra (measured) | extra (predicted) | step-time ratio | FLOPs ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in pipes:
            lines.append(
                f"| {r['shape']} ({r['num_layers']} layers, k={r['nitp_target_layer']}, "
                f"{r['num_microbatches']} microbatches) | {r['ntp']['p2p_bytes_per_step']:,} | "
                f"{r['nitp']['p2p_bytes_per_step']:,} | {r['p2p_bytes_ratio']:.3f} | "
                f"{r['p2p_extra_bytes_per_step']:,} | {r['p2p_extra_bytes_predicted']:,} | "
                f"{r['step_time_ratio']:.3f} | {r['flops_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def summary_lines(records):
    out = []
    for r in records:
        if r["kind"] == "single_process":
            out.append(f"{r['shape']}: step-time ratio NITP/NTP {r['step_time_ratio']:.3f}, "
                       f"peak-memory ratio {r['memory_ratio']:.3f}, "
                       f"FLOPs-predicted ratio {r['flops_ratio']:.3f}")
        else:
            out.append(f"{r['shape']}: p2p bytes ratio NITP/NTP {r['p2p_bytes_ratio']:.3f} "
                       f"({r['nitp']['p2p_bytes_per_step']:,} vs {r['ntp']['p2p_bytes_per_step']:,}"
                       f" bytes per step), step-time ratio NITP/NTP {r['step_time_ratio']:.3f}")
    return out

