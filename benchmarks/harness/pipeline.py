"""The PP=2 run (torchrun, 2 processes, target layer on stage 0, so the target rides next to
the hidden state across the boundary): the bytes megatron's p2p layer sends, NTP vs NITP."""

import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

from .ratios import flops_ratio, flops_summary, pipeline_ratios
from .shapes import MICRO, SHAPES, variant_args
from .timing import alternating, timed_step
from .variant import Variant, make_batches


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
        for name in alternating(("ntp", "nitp"), r):
            dist.barrier()  # both stages start the step together
            counter.reset()
            wall[name].append(timed_step(built[name], batches).wall_s)
            p2p[name] = counter.read()  # identical every step (fixed shapes)
    mine = dict(rank=dist.get_rank(), p2p=p2p,
                step_time_median_s={n: statistics.median(w) for n, w in wall.items()})
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() == 0:
        with open(opts.pipeline_out, "w") as fh:
            json.dump(pipeline_record(opts, args["nitp"], ranks), fh, indent=1)
    dist.barrier()


def pipeline_record(opts, a, ranks):
    """The "pipeline_p2p" record from every rank's byte counts and median step times."""
    per_variant = {}
    for n in ("ntp", "nitp"):
        fwd = sum(r["p2p"][n]["forward_bytes"] for r in ranks)
        bwd = sum(r["p2p"][n]["backward_bytes"] for r in ranks)
        # The step of the pipeline is as slow as its slowest stage.
        per_variant[n] = dict(p2p_bytes_per_step=fwd + bwd, forward_bytes=fwd, backward_bytes=bwd,
                              step_time_median_s=max(r["step_time_median_s"][n] for r in ranks))
    f = flops_summary(a)
    predicted_extra = (2 * opts.num_microbatches * f["pipeline_carry_boundaries"]
                       * f["pipeline_carry_bytes_per_microbatch_per_boundary"])
    return dict(
        kind="pipeline_p2p", shape=f"{opts.pipeline_shape}_pp2", device=opts.device,
        dtype="bfloat16" if a.bf16 else "float32", pipeline_model_parallel_size=2,
        num_layers=a.num_layers, hidden_size=a.hidden_size, seq_length=a.seq_length,
        micro_batch_size=a.micro_batch_size, num_microbatches=opts.num_microbatches,
        vocab_size=a.padded_vocab_size, nitp_target_layer=a.nitp_target_layer,
        repeats=opts.repeats, threads_per_rank=opts.threads,
        ntp=per_variant["ntp"], nitp=per_variant["nitp"],
        **pipeline_ratios(per_variant["ntp"], per_variant["nitp"], predicted_extra),
        flops_ratio=flops_ratio(a),
        per_rank=ranks,
    )


def run_pipeline(opts, shape, script):
    """Launch `script --pipeline-worker` (the benchmark's CLI) under torchrun with 2 processes
    and return rank 0's record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "pipeline.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.abspath(script), "--pipeline-worker", "--pipeline-shape", shape,
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
