"""NITP vs NTP, side by side: step time, peak memory and the FLOPs-predicted ratio (issue #5).

  python benchmarks/overhead.py --out runs/overhead.json [--markdown runs/overhead.md]
  python benchmarks/overhead.py --full --out runs/overhead_gpu.json     # GPU: the full shapes

For each shape (the paper's 0.5B dense and 1.9B-A0.3B MoE widths, read from
examples/configs/*.yaml; depth, sequence and batch reduced on CPU) one process builds the NTP
model and the NITP model from the same seed and trains them on the same batches, alternating
NTP/NITP step by step (the order flips every repeat), so that background load on a shared
machine hits both alike. It reports:

  step time    median wall-clock time of a whole training step (zero grads, forward, backward,
               finalize grads, clip, Adam, scheduler), NITP head and loss included; also the
               median CPU time of the process (less sensitive to time slicing by other jobs).
  peak memory  the GPU meaning of peak memory (`torch.cuda.max_memory_allocated`): the most
               tensor bytes alive at once during a training step, counting the variant's
               parameters, gradient buffers and Adam state plus the step's activations and
               temporaries. On CUDA it is read from the caching allocator's counters. On CPU
               every allocation and free of the CPU allocator is recorded by
               `torch.profiler.profile(profile_memory=True)` from before the model is built
               until after the second step (Adam allocates its state in the first): bytes alive
               at the start of step 2 = persistent state, the running sum of the events inside
               step 2 = its peak. Exact tensor bytes, unlike RSS (which includes the Python
               heap, libraries and allocator caching, and never goes down).
  FLOPs ratio  (NTP + NITP training FLOPs per token) / NTP, from megatron_nitp.nitp.flops for
               the shape actually benchmarked (App. G: head 72 d^2, cosine 18 d).

A pipeline run (torchrun, 2 processes, PP=2, target layer on stage 0, so the target rides next
to the hidden state across the boundary) counts the bytes megatron's p2p layer sends, by
wrapping `megatron.core.pipeline_parallel.p2p_communication._p2p_ops` / `_batched_p2p_ops`.

Writes a JSON list of records (--out) and a Markdown table (printed; --markdown FILE).
This file is the CLI; each concern is a module of benchmarks/harness/ (shapes, variant,
memory, timing, ratios, pipeline, report), model, optimizer and step the engine's.
"""

import argparse
import os
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)  # run from a checkout without `pip install -e .`

import torch  # noqa: E402

from harness.pipeline import pipeline_worker, run_pipeline  # noqa: E402
from harness.ratios import check_finite  # noqa: E402
from harness.report import log, markdown, summary_lines, write_outputs  # noqa: E402
from harness.shapes import MICRO, SHAPES, VARIANTS, shape_table  # noqa: E402
from harness.side_by_side import run_shape  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/overhead.json", help="JSON list of records.")
    p.add_argument("--markdown", default=None, help="Also write the Markdown table here.")
    p.add_argument("--shapes", default=None,
                   help=f"Comma-separated subset of {', '.join(SHAPES)} (default: all).")
    p.add_argument("--full", action="store_true",
                   help="Full paper shapes (depth, seq 8192, bf16): needs a GPU.")
    p.add_argument("--micro", action="store_true", help="A tiny shape (tests, smoke runs).")
    p.add_argument("--repeats", type=int, default=5, help="Timed steps per variant.")
    p.add_argument("--warmup", type=int, default=1,
                   help="Untimed steps per variant after the two memory-measuring steps.")
    p.add_argument("--num-microbatches", type=int, default=1, help="Microbatches per step.")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="ntp and nitp are timed; nitp_recompute (--nitp-head-recompute) is "
                        "measured for memory only.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default on CPU: 1, leaving the second core to "
                        "other jobs, whose preemption of one of two OpenMP threads otherwise "
                        "stalls every parallel region).")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--profile", action="store_true",
                   help="Also profile one step of each variant (torch.profiler) and record the "
                        "ops whose self CPU time grows most from NTP to NITP.")
    p.add_argument("--sequential", action="store_true",
                   help="Build and time one variant after the other instead of alternating "
                        "steps of two co-resident models (default with --full).")
    p.add_argument("--no-pipeline", action="store_true", help="Skip the PP=2 run.")
    p.add_argument("--pipeline-shapes", default="dense_0.5b",
                   help="Shapes for the PP=2 run (bytes do not depend on the vocabulary).")
    p.add_argument("--pipeline-microbatches", type=int, default=4)
    p.add_argument("--pipeline-repeats", type=int, default=None,
                   help="Timed steps per variant in the PP=2 run (default: min(3, --repeats); "
                        "the byte counts are the same every step).")
    p.add_argument("--pipeline-vocab-size", type=int, default=None,
                   help="Vocabulary for the PP=2 run (default on CPU: 32768, to keep two "
                        "ranks x two models in memory; p2p bytes do not depend on it).")
    # internal: the torchrun worker
    p.add_argument("--pipeline-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pipeline-shape", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pipeline-out", default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.full and opts.device != "cuda":
        p.error("--full needs a GPU (the full shapes do not fit a CPU run)")
    if opts.full:
        opts.sequential = True
    if opts.threads is None:
        opts.threads = 1 if opts.device == "cpu" else torch.get_num_threads()
    if opts.pipeline_vocab_size is None and opts.device == "cpu" and not opts.micro:
        opts.pipeline_vocab_size = 32768
    if opts.pipeline_repeats is None:
        opts.pipeline_repeats = min(3, opts.repeats)
    opts.variants = [v for v in opts.variants.split(",") if v]
    if not {"ntp", "nitp"} <= set(opts.variants) or not set(opts.variants) <= set(VARIANTS):
        p.error(f"--variants must include ntp and nitp, from {VARIANTS}")
    return opts


def main(argv=None):
    opts = parse(argv)
    if opts.pipeline_worker:
        return pipeline_worker(opts)
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_nitp.parallel.distributed import initialize_distributed

    torch.set_num_threads(opts.threads)
    initialize_distributed(seed=opts.seed)
    records = []
    t0 = time.time()
    for shape, (config_file, overrides) in shape_table(opts.micro, opts.full, opts.shapes).items():
        log(f"[{shape}] NTP vs NITP, {opts.repeats} alternating repeats on {opts.device}, "
            f"{opts.threads} thread(s)")
        records.append(run_shape(shape, config_file, overrides, opts))
    if not opts.no_pipeline:
        shapes = list(MICRO) if opts.micro else opts.pipeline_shapes.split(",")
        for shape in shapes:
            log(f"[{shape}] pipeline PP=2 (torchrun, 2 processes)")
            records.append(run_pipeline(opts, shape, script=__file__))
    check_finite(records)
    write_outputs(records, markdown(records), opts.out, opts.markdown)
    for line in summary_lines(records):
        print(line)
    log(f"done in {time.time() - t0:.0f}s; wrote {opts.out}")


if __name__ == "__main__":
    main()
