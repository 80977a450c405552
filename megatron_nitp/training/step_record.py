"""The record of one training step as the logs show it (console, JSONL, TensorBoard, wandb),
with what Megatron-LM's logging flags add: --log-params-norm, --log-num-zeros-in-grad,
--log-throughput, --log-timers-to-tensorboard, --log-memory-to-tensorboard.
"""

import resource

import torch

from ..models.mtp import mtp_loss_names


def throughput_tflops(args, nitp_enabled, seconds, world_size, global_batch_size=None):
    """Model TFLOP/s per device: nitp/flops.py's training FLOPs per token (matmuls incl. the MTP
    layers and the attention scores, plus NITP's head and loss when on; recompute not counted) x
    the step's tokens / (step time x devices)."""
    from ..nitp.flops import training_flops_per_token

    f = training_flops_per_token(args)
    per_token = (f["baseline_flops_per_token"] + f["attention_score_flops_per_token"]
                 + (f["nitp_flops_per_token"] if nitp_enabled else 0))
    tokens = (global_batch_size or args.global_batch_size) * args.seq_length
    return per_token * tokens / (max(seconds, 1e-12) * 1e12 * world_size)


def memory_counters():
    """CUDA: the allocator's counters Megatron-LM writes (mem-*); CPU: the process's peak RSS."""
    if torch.cuda.is_available():
        m = torch.cuda.memory_stats()
        return {"mem_reserved_bytes": m["reserved_bytes.all.current"],
                "mem_allocated_bytes": m["allocated_bytes.all.current"],
                "mem_max_allocated_bytes": m["allocated_bytes.all.peak"],
                "mem_allocated_count": m["allocation.all.current"]}
    return {"mem_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def step_record(args, nitp_enabled, iteration, result, seconds, lr, consumed, elapsed,
                model_chunks, global_batch_size=None):
    """Every rank calls it on a due step (the params norm is a collective). global_batch_size:
    the step's (--rampup-batch-size), default --global-batch-size."""
    gbs = global_batch_size or args.global_batch_size
    rec = {"iteration": iteration, "lm_loss": result.losses.get("lm loss"),
           "nitp_loss": result.losses.get("nitp loss") if nitp_enabled else None,
           "lr": lr, "grad_norm": result.grad_norm,
           "tokens_per_sec": gbs * args.seq_length / max(seconds, 1e-12),
           "global_batch_size": gbs,
           "elapsed_s": round(elapsed, 3), "consumed_samples": consumed,
           "skipped": not result.ok, **result.metrics,
           # Megatron-LM's "mtp_1 loss", ... as mtp_1_loss, ...
           **{n.replace(" ", "_"): result.losses.get(n)
              for n in mtp_loss_names(args.mtp_num_layers)}}
    rec["iteration_time_s"] = seconds
    if args.log_throughput:
        rec["throughput_tflops"] = throughput_tflops(args, nitp_enabled, seconds,
                                                     torch.distributed.get_world_size(), gbs)
    if args.log_params_norm:
        from .params_norm import params_l2_norm

        rec["params_norm"] = params_l2_norm(model_chunks)
    if args.log_num_zeros_in_grad and result.num_zeros_in_grad is not None:
        rec["num_zeros_in_grad"] = int(result.num_zeros_in_grad)
    if args.log_memory_to_tensorboard:
        rec.update(memory_counters())
    return rec
