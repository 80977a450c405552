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
"""

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)  # run from a checkout without `pip install -e .`

import torch  # noqa: E402

CONFIGS = os.path.join(REPO, "examples", "configs")

# name -> (paper config, reduced overrides for CPU). The widths (d, ffn, heads, experts, vocab)
# come from the config; only depth, sequence and batch shrink. Target layer 1: ~20% of depth
# as in the paper is layer 1 at these depths (the position costs nothing in one process).
SHAPES = {
    "dense_0.5b": ("dense_0.5b.yaml",
                   dict(num_layers=4, seq_length=256, micro_batch_size=1, nitp_target_layer=1)),
    "moe_1.9b_a0.3b": ("moe_1.9b_a0.3b.yaml",
                       dict(num_layers=2, moe_layer_freq=[0, 1], seq_length=256,
                            micro_batch_size=1, nitp_target_layer=1)),
}
# A shape small enough to run the whole benchmark in seconds (tests, smoke checks).
MICRO = {
    "micro_dense": ("dense_0.5b.yaml",
                    dict(num_layers=2, hidden_size=64, ffn_hidden_size=128,
                         num_attention_heads=4, num_query_groups=2, kv_channels=16,
                         vocab_size=512, seq_length=32, micro_batch_size=2,
                         nitp_target_layer=1)),
}
VARIANTS = ("ntp", "nitp", "nitp_recompute")


# --------------------------------------------------------------------------------------------
# arguments of one variant
# --------------------------------------------------------------------------------------------


def variant_args(config_file, overrides, variant, device, pp=1):
    """parse_args of the paper config with the reduced shape and a one-device layout."""
    from megatron_nitp.models.builder import padded_vocab_size
    from megatron_nitp.training.arguments import parse_args

    # On a GPU the default: Transformer Engine when it imports, else the local spec.
    argv = ["--config", os.path.join(CONFIGS, config_file),
            "--nitp" if variant != "ntp" else "--no-nitp"]
    if device != "cuda":
        argv += ["--transformer-impl", "local"]
    if variant == "nitp_recompute":
        argv.append("--nitp-head-recompute")
    args = parse_args(argv)
    for key, value in overrides.items():
        setattr(args, key, value)
    args.max_position_embeddings = args.seq_length
    # One device (or PP=2 for the pipeline run): no TP/EP/DP, so no distributed optimizer.
    args.tensor_model_parallel_size = 1
    args.pipeline_model_parallel_size = pp
    args.expert_model_parallel_size = 1
    args.use_distributed_optimizer = False
    args.global_batch_size = args.micro_batch_size
    if device != "cuda":  # CPU: fp32 (bf16 matmuls are emulated and slow), no grouped GEMM
        args.bf16 = False
        args.moe_grouped_gemm = False
    args.padded_vocab_size = padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by,
                                               args.tensor_model_parallel_size)
    return args


def flops_summary(args):
    from megatron_nitp.nitp.flops import training_flops_per_token

    f = training_flops_per_token(args)
    return {k: f[k] for k in ("baseline_flops_per_token", "nitp_flops_per_token", "overhead_pct",
                              "nitp_head_flops_per_token", "nitp_loss_flops_per_token",
                              "pipeline_carry_boundaries",
                              "pipeline_carry_bytes_per_microbatch_per_boundary",
                              "total_params", "nitp_head_params")}


def flops_ratio(args):
    f = flops_summary(args)
    return 1.0 + f["nitp_flops_per_token"] / f["baseline_flops_per_token"]


# --------------------------------------------------------------------------------------------
# one variant: model, optimizer, data, step
# --------------------------------------------------------------------------------------------


class Variant:
    """A built model (DDP-wrapped chunks) + optimizer that can take training steps."""

    def __init__(self, name, args, device, seed):
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
        from megatron_nitp.models.builder import (build_model_chunks,
                                                  transformer_config_from_args)
        from megatron_nitp.nitp.config import NITPConfig
        from megatron_nitp.training.step import build_optimizer, wrap_ddp

        # Same seed for every variant: identical backbones (the head is built after them).
        torch.manual_seed(seed)
        model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
        self.name, self.args, self.device = name, args, device
        self.config = transformer_config_from_args(args)
        self.nitp = NITPConfig.from_args(args)
        self.chunks = build_model_chunks(args, self.config, self.nitp)
        if device == "cuda":
            for c in self.chunks:
                c.cuda()
        self.model = wrap_ddp(self.chunks, self.config, args.use_distributed_optimizer)
        self.optimizer, self.scheduler = build_optimizer(args, self.model, self.config)
        self.iteration = 0

    def step(self, batches):
        from megatron_nitp.training.step import train_step

        result = train_step(self.args, self.model, self.optimizer, self.scheduler, self.config,
                            self.nitp, iter(batches), len(batches), self.iteration)
        self.iteration += 1
        return result.losses


def make_batches(args, num_microbatches, seed):
    """Random tokens, all positions counted: the same microbatches for every variant."""
    g = torch.Generator().manual_seed(seed)
    s, b = args.seq_length, args.micro_batch_size
    out = []
    for _ in range(num_microbatches):
        seq = torch.randint(0, args.vocab_size, (b, s + 1), generator=g)
        out.append(dict(tokens=seq[:, :-1], labels=seq[:, 1:], loss_mask=torch.ones(b, s),
                        position_ids=torch.arange(s).repeat(b, 1)))
    return out


def use_cuda_batches():
    """training.step.forward_backward builds its forward step with make_forward_step's default
    device ("cpu"), which would move every batch to the CPU: give it the GPU."""
    from functools import partial

    from megatron_nitp.training import step

    step.make_forward_step = partial(step.make_forward_step, device="cuda")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# peak memory of one variant
# --------------------------------------------------------------------------------------------

STEP_MARK = "overhead/measured_step"


def _cpu_memory_from_profile(prof):
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
        persistent, peak = _cpu_memory_from_profile(prof)
        del prof
    return v, dict(persistent_bytes=int(persistent), peak_bytes=int(peak),
                   activation_peak_bytes=int(peak - persistent))


# --------------------------------------------------------------------------------------------
# the single-process comparison of one shape
# --------------------------------------------------------------------------------------------


def timed_step(v, batches):
    """(wall s, CPU s, {minor page faults, voluntary / involuntary context switches})."""
    sync(v.device)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0, c0 = time.perf_counter(), time.process_time()
    v.step(batches)
    sync(v.device)
    w, c = time.perf_counter() - w0, time.process_time() - c0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return w, c, dict(minflt=r1.ru_minflt - r0.ru_minflt, nvcsw=r1.ru_nvcsw - r0.ru_nvcsw,
                      nivcsw=r1.ru_nivcsw - r0.ru_nivcsw)


def run_shape(shape, config_file, overrides, opts):
    device = opts.device
    load_before = os.getloadavg()[0]
    args = {n: variant_args(config_file, overrides, n, device) for n in opts.variants}
    batches = make_batches(args["ntp"], opts.num_microbatches, seed=opts.seed)
    memory = {}
    wall, cpu, system = ({n: [] for n in ("ntp", "nitp")} for _ in range(3))

    def timed(name, v):
        w, c, sysinfo = timed_step(v, batches)
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
            # Alternate, flipping the order every repeat: load on the machine hits both alike.
            for name in (["ntp", "nitp"] if r % 2 == 0 else ["nitp", "ntp"]):
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
    n, t = rec["ntp"], rec["nitp"]
    rec["step_time_ratio"] = t["step_time_median_s"] / n["step_time_median_s"]
    rec["cpu_time_ratio"] = t["cpu_time_median_s"] / n["cpu_time_median_s"]
    # Each repeat's NITP and NTP steps are adjacent in time: the median of their ratios is less
    # sensitive to load that drifts over the run than the ratio of medians.
    paired = [b / a for a, b in zip(n["step_time_s"], t["step_time_s"])]
    rec["paired_step_time_ratio"] = statistics.median(paired)
    rec["paired_step_time_ratio_range"] = [min(paired), max(paired)]
    rec["paired_cpu_time_ratio"] = statistics.median(
        b / a for a, b in zip(n["cpu_time_s"], t["cpu_time_s"]))
    rec["memory_ratio"] = t["peak_bytes"] / n["peak_bytes"]
    rec["persistent_memory_ratio"] = t["persistent_bytes"] / n["persistent_bytes"]
    rec["flops_ratio"] = flops_ratio(a)
    rec["flops"] = flops_summary(a)
    if profile is not None:
        rec["profile"] = profile
    if "nitp_recompute" in rec:
        rec["memory_ratio_head_recompute"] = rec["nitp_recompute"]["peak_bytes"] / n["peak_bytes"]
        rec["flops_ratio_head_recompute"] = flops_ratio(args["nitp_recompute"])
    return rec


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


# --------------------------------------------------------------------------------------------
# pipeline: bytes between stages (torchrun worker)
# --------------------------------------------------------------------------------------------


class P2PByteCounter:
    """Counts the bytes megatron's pipeline layer hands to send calls, by direction.

    Wraps the two module-level functions `P2PCommunicator._communicate` dispatches to
    (`_p2p_ops`, and `_batched_p2p_ops` when batch_p2p_comm is on, as on GPU); both receive the
    very tensors that go on the wire."""

    def __init__(self):
        from megatron.core.pipeline_parallel import p2p_communication as p2p

        self.forward_bytes = self.backward_bytes = self.messages = 0
        for fname in ("_p2p_ops", "_batched_p2p_ops"):
            setattr(p2p, fname, self._wrap(getattr(p2p, fname)))

    def _wrap(self, fn):
        def counted(*, tensor_send_prev, tensor_recv_prev, tensor_send_next, tensor_recv_next,
                    **kwargs):
            if tensor_send_next is not None:  # activations, to the next stage
                self.forward_bytes += tensor_send_next.numel() * tensor_send_next.element_size()
                self.messages += 1
            if tensor_send_prev is not None:  # gradients, to the previous stage
                self.backward_bytes += tensor_send_prev.numel() * tensor_send_prev.element_size()
                self.messages += 1
            return fn(tensor_send_prev=tensor_send_prev, tensor_recv_prev=tensor_recv_prev,
                      tensor_send_next=tensor_send_next, tensor_recv_next=tensor_recv_next,
                      **kwargs)

        counted.__wrapped__ = fn
        return counted

    def reset(self):
        self.forward_bytes = self.backward_bytes = self.messages = 0

    def read(self):
        return dict(forward_bytes=self.forward_bytes, backward_bytes=self.backward_bytes,
                    messages=self.messages)


def pipeline_worker(opts):
    """One rank of the PP=2 run: NTP and NITP alternating; rank 0 writes the record."""
    import torch.distributed as dist
    from megatron_nitp.parallel.distributed import initialize_distributed

    torch.set_num_threads(opts.threads)
    if opts.device == "cuda":
        use_cuda_batches()
    table = MICRO if opts.micro else SHAPES
    config_file, overrides = table[opts.pipeline_shape]
    overrides = dict(overrides)
    if opts.pipeline_vocab_size:
        overrides["vocab_size"] = opts.pipeline_vocab_size
    initialize_distributed(pipeline_model_parallel_size=2, seed=opts.seed)
    counter = P2PByteCounter()
    args = {n: variant_args(config_file, overrides, n, opts.device, pp=2) for n in ("ntp", "nitp")}
    batches = make_batches(args["ntp"], opts.num_microbatches, seed=opts.seed)
    built = {n: Variant(n, args[n], opts.device, opts.seed) for n in ("ntp", "nitp")}
    for _ in range(max(1, opts.warmup)):
        for v in built.values():
            v.step(batches)
    wall = {n: [] for n in built}
    p2p = {}
    for r in range(opts.repeats):
        for name in (["ntp", "nitp"] if r % 2 == 0 else ["nitp", "ntp"]):
            dist.barrier()  # both stages start the step together
            counter.reset()
            w, _, _ = timed_step(built[name], batches)
            wall[name].append(w)
            p2p[name] = counter.read()  # identical every step (fixed shapes)
    mine = dict(rank=dist.get_rank(), p2p=p2p,
                step_time_median_s={n: statistics.median(w) for n, w in wall.items()})
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() == 0:
        a = args["nitp"]
        sent = {n: sum(r["p2p"][n]["forward_bytes"] + r["p2p"][n]["backward_bytes"]
                       for r in ranks) for n in built}
        fwd = {n: sum(r["p2p"][n]["forward_bytes"] for r in ranks) for n in built}
        bwd = {n: sum(r["p2p"][n]["backward_bytes"] for r in ranks) for n in built}
        f = flops_summary(a)
        predicted_extra = (2 * opts.num_microbatches * f["pipeline_carry_boundaries"]
                           * f["pipeline_carry_bytes_per_microbatch_per_boundary"])
        # The step of the pipeline is as slow as its slowest stage.
        step = {n: max(r["step_time_median_s"][n] for r in ranks) for n in built}
        rec = dict(
            kind="pipeline_p2p", shape=f"{opts.pipeline_shape}_pp2", device=opts.device,
            dtype="bfloat16" if a.bf16 else "float32", pipeline_model_parallel_size=2,
            num_layers=a.num_layers, hidden_size=a.hidden_size, seq_length=a.seq_length,
            micro_batch_size=a.micro_batch_size, num_microbatches=opts.num_microbatches,
            vocab_size=a.padded_vocab_size, nitp_target_layer=a.nitp_target_layer,
            repeats=opts.repeats, threads_per_rank=opts.threads,
            ntp=dict(p2p_bytes_per_step=sent["ntp"], forward_bytes=fwd["ntp"],
                     backward_bytes=bwd["ntp"], step_time_median_s=step["ntp"]),
            nitp=dict(p2p_bytes_per_step=sent["nitp"], forward_bytes=fwd["nitp"],
                      backward_bytes=bwd["nitp"], step_time_median_s=step["nitp"]),
            p2p_bytes_ratio=sent["nitp"] / sent["ntp"],
            p2p_extra_bytes_per_step=sent["nitp"] - sent["ntp"],
            p2p_extra_bytes_predicted=predicted_extra,
            step_time_ratio=step["nitp"] / step["ntp"],
            flops_ratio=flops_ratio(a),
            per_rank=ranks,
        )
        with open(opts.pipeline_out, "w") as fh:
            json.dump(rec, fh, indent=1)
    dist.barrier()


def run_pipeline(opts, shape):
    """Launch the PP=2 worker under torchrun and return its record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "pipeline.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.abspath(__file__), "--pipeline-worker", "--pipeline-shape", shape,
               "--pipeline-out", out, "--repeats", str(opts.pipeline_repeats), "--warmup",
               str(opts.warmup), "--num-microbatches", str(opts.pipeline_microbatches),
               "--threads", str(opts.threads), "--seed", str(opts.seed)]
        if opts.micro:
            cmd.append("--micro")
        if opts.pipeline_vocab_size:
            cmd += ["--pipeline-vocab-size", str(opts.pipeline_vocab_size)]
        env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads),
                   PYTHONWARNINGS="ignore", LOGLEVEL="WARNING")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RuntimeError(f"pipeline run failed ({proc.returncode}):\n{tail}")
        with open(out) as fh:
            return json.load(fh)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


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


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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


def shape_table(opts):
    if opts.micro:
        return dict(MICRO)
    table = {}
    for name, (config_file, reduced) in SHAPES.items():
        # --full: the paper shape itself, one GPU (no overrides but the layout).
        table[name] = (config_file, {} if opts.full else reduced)
    if opts.shapes:
        wanted = opts.shapes.split(",")
        unknown = set(wanted) - set(table)
        if unknown:
            raise SystemExit(f"error: --shapes: unknown {sorted(unknown)}; known {list(table)}")
        table = {k: table[k] for k in wanted}
    return table


def main(argv=None):
    opts = parse(argv)
    if opts.pipeline_worker:
        return pipeline_worker(opts)
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_nitp.parallel.distributed import initialize_distributed

    torch.set_num_threads(opts.threads)
    initialize_distributed(seed=opts.seed)
    if opts.device == "cuda":
        use_cuda_batches()
    records = []
    t0 = time.time()
    for shape, (config_file, overrides) in shape_table(opts).items():
        log(f"[{shape}] NTP vs NITP, {opts.repeats} alternating repeats on {opts.device}, "
            f"{opts.threads} thread(s)")
        records.append(run_shape(shape, config_file, overrides, opts))
    if not opts.no_pipeline:
        shapes = list(MICRO) if opts.micro else opts.pipeline_shapes.split(",")
        for shape in shapes:
            log(f"[{shape}] pipeline PP=2 (torchrun, 2 processes)")
            records.append(run_pipeline(opts, shape))
    for r in records:
        for key in ("step_time_ratio", "memory_ratio", "flops_ratio"):
            if key in r and not math.isfinite(r[key]):
                raise RuntimeError(f"{r['shape']}: {key} is {r[key]}")
    write_outputs(records, markdown(records), opts.out, opts.markdown)
    for line in summary_lines(records):
        print(line)
    log(f"done in {time.time() - t0:.0f}s; wrote {opts.out}")



def write_outputs(records, table: str, out: str, markdown_path=None):
    """The benchmark's JSON records at `out`, its markdown table at `markdown_path` and stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(records, fh, indent=1)
    if markdown_path:
        with open(markdown_path, "w") as fh:
            fh.write(table)
    print(table)

if __name__ == "__main__":
    main()
