"""App. D's metrics on vs off, side by side: what a metrics step costs, and what that is per step
at a logging interval.

  python benchmarks/metrics_overhead.py --out runs/metrics_overhead.json [--markdown FILE]

One NITP model per shape (the shapes of benchmarks/overhead.py: the paper's 0.5B dense and
1.9B-A0.3B MoE widths, depth/sequence/batch reduced on CPU; `--micro` for a smoke run) trains on
the same microbatches, alternating a plain step and a step that measures effective rank and pair
cosine of the whole mini-batch (the `GeometryProbe` the engine uses on a metrics step: per
microbatch N, Σx, Σxxᵀ in float64 and the drawn tokens' unit vectors, then `reduce_geometry`,
eigenvalues included). The order flips every repeat so background load hits both alike.

Reported: median step time off / on (side by side), the measurement's own work timed alone on
the same shapes (every microbatch's sums + the reduction with its eigendecomposition: on a loaded
CPU the side-by-side difference is within the noise), and the overhead averaged over a run at
interval k, work / (k x step time off), for k = 1, 10, 100 and the interval the paper configs
use (examples/configs: `nitp-metrics-interval`).
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)

import torch  # noqa: E402

# benchmarks/harness: the shapes, variant args, model and batches of overhead.py
from harness.report import log, write_outputs  # noqa: E402
from harness.shapes import CONFIGS, SHAPES, shape_table, variant_args  # noqa: E402
from harness.timing import alternating, timed_step  # noqa: E402
from harness.variant import Variant, make_batches, sync  # noqa: E402

INTERVALS = (1, 10, 100)


def config_interval(config_file):
    import yaml

    with open(os.path.join(CONFIGS, config_file)) as fh:
        return yaml.safe_load(fh).get("nitp-metrics-interval")


def run_shape(shape, config_file, overrides, opts):
    from megatron_nitp.nitp.metrics import GeometryProbe

    args = variant_args(config_file, overrides, "nitp", opts.device)
    batches = make_batches(args, opts.num_microbatches, seed=opts.seed)
    v = Variant("nitp", args, opts.device, opts.seed)
    gbs = args.micro_batch_size * len(batches)

    def step(measure):
        probe = (GeometryProbe.for_step(v.iteration, opts.seed, gbs, args.seq_length,
                                        args.micro_batch_size, 0, 1, opts.num_pairs)
                 if measure else None)
        timed = timed_step(v, batches, geometry=probe)
        if measure:
            assert timed.result.metrics["effective_rank"] > 0, timed.result
        return timed.wall_s

    for _ in range(opts.warmup):
        step(False), step(True)
    times = {False: [], True: []}
    for i in range(opts.repeats):
        for measure in alternating((False, True), i):
            times[measure].append(step(measure))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    work = measurement_work_s(args, len(batches), opts)
    # Side by side, the difference is within the noise of a loaded machine; the measurement's
    # own work (timed alone, same shapes) is the number the overhead uses.
    extra = work
    interval = config_interval(config_file)
    rec = {"shape": shape, "device": opts.device, "hidden_size": args.hidden_size,
           "num_layers": args.num_layers, "seq_length": args.seq_length,
           "micro_batch_size": args.micro_batch_size, "num_microbatches": len(batches),
           "num_pairs": opts.num_pairs, "repeats": opts.repeats,
           "step_s_off": off, "step_s_on": on, "side_by_side_extra_s": on - off,
           "metrics_step_extra_s": extra,
           "times_off": times[False], "times_on": times[True],
           "config_interval": interval,
           "overhead_at_interval": {str(k): extra / (k * off)
                                    for k in sorted(set(INTERVALS) | ({interval} - {None}))}}
    log(f"[{shape}] off {off:.3f}s on {on:.3f}s (side by side); the measurement alone "
                 f"{extra:.3f}s per metrics step; "
                 + ", ".join(f"every {k}: {100 * r:+.2f}%"
                             for k, r in rec["overhead_at_interval"].items()))
    return rec


def measurement_work_s(args, num_microbatches, opts, repeats=5):
    """Median time of a metrics step's extra work alone: every microbatch's sums of a
    [s, mbs, d] final hidden state, then reduce_geometry (eigenvalues, pairs)."""
    from megatron_nitp.nitp.metrics import GeometryProbe, reduce_geometry

    s, b, d = args.seq_length, args.micro_batch_size, args.hidden_size
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(s, b, d, generator=g).to(opts.device) for _ in range(num_microbatches)]
    valid = torch.ones(s, b, dtype=torch.bool, device=opts.device)
    pos = torch.arange(s, device=opts.device)
    times = []
    for it in range(repeats):
        probe = GeometryProbe.for_step(it, opts.seed, b * num_microbatches, s, b, 0, 1,
                                       opts.num_pairs)
        sync(opts.device)
        t0 = time.perf_counter()
        reports = [probe.next_microbatch().sums(h, valid, pos) for h in hidden]
        reduce_geometry(reports, probe.plan)
        sync(opts.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def markdown(records):
    ks = sorted({int(k) for r in records for k in r["overhead_at_interval"]})
    lines = ["| shape | step off (s) | step on (s) | measurement alone (s) | "
             + " | ".join(f"overhead every {k}" for k in ks) + " |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in ks) + " |"]
    for r in records:
        cells = [f"{100 * r['overhead_at_interval'][str(k)]:+.2f}%"
                 if str(k) in r["overhead_at_interval"] else "—" for k in ks]
        lines.append(f"| {r['shape']} ({r['num_layers']} x {r['hidden_size']}, seq "
                     f"{r['seq_length']}, {r['num_microbatches']} microbatches) | "
                     f"{r['step_s_off']:.3f} | {r['step_s_on']:.3f} | "
                     f"{r['metrics_step_extra_s']:.3f} s ({100 * r['metrics_step_extra_s'] / r['step_s_off']:.1f}%) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/metrics_overhead.json")
    p.add_argument("--markdown", default=None)
    p.add_argument("--shapes", default=None, help=f"subset of {', '.join(SHAPES)}")
    p.add_argument("--micro", action="store_true", help="a tiny shape (tests, smoke runs)")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-microbatches", type=int, default=4)
    p.add_argument("--num-pairs", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1234)
    opts = p.parse_args(argv)
    opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    return opts


def main(argv=None):
    import warnings

    warnings.filterwarnings("ignore")
    opts = parse(argv)
    from megatron_nitp.parallel.distributed import initialize_distributed

    torch.set_num_threads(opts.threads)
    initialize_distributed(seed=opts.seed)
    table = shape_table(opts.micro, shapes=opts.shapes)
    records = [run_shape(name, cfg, ov, opts) for name, (cfg, ov) in table.items()]
    write_outputs(records, markdown(records), opts.out, opts.markdown)


if __name__ == "__main__":
    main()
