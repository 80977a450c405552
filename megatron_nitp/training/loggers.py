"""Training logs: one console line per interval, JSONL records, TensorBoard, wandb (offline OK).

Only global rank 0 writes; the engine hands it globally reduced numbers.
"""

import json
import math
import os
import time

from .log import get_logger


def _fmt_time(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def rewind_jsonl(path, iteration) -> int:
    """Drop the records after `iteration` from a --log-jsonl file; returns how many were dropped.

    A run continues from its checkpoint's iteration; records written after it by an earlier
    attempt (killed mid-save, or before its first save) describe steps that never reached a
    checkpoint and are about to be redone. Keeping them would log those iterations twice.
    A fresh run (iteration 0) therefore empties the file. Unreadable lines (a line cut by a kill)
    are dropped too. The file is rewritten atomically.
    """
    if not os.path.isfile(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                keep = line.endswith("\n") and rec["iteration"] <= iteration
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


# Written to TensorBoard/wandb only with --log-timers-to-tensorboard (Megatron-LM's meaning).
TIMER_KEYS = ("iteration_time_s", "throughput_tflops")


class RunLogger:
    def __init__(self, args, enabled: bool, start_iteration: int = 0):
        self.enabled = enabled
        self.log_interval = args.log_interval
        self.tb_interval = args.tensorboard_log_interval
        self.timers_to_tb = args.log_timers_to_tensorboard
        self.validation_ppl = args.log_validation_ppl_to_tensorboard
        self.ramp = args.rampup_batch_size is not None  # batch varies
        self.start = time.time()
        self.jsonl = None
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        if args.log_jsonl:
            os.makedirs(os.path.dirname(os.path.abspath(args.log_jsonl)), exist_ok=True)
            dropped = rewind_jsonl(args.log_jsonl, start_iteration)
            if dropped:
                get_logger().info(f"notice: --log-jsonl {args.log_jsonl}: dropped {dropped} "
                                  f"records after iteration {start_iteration} (this run "
                                  "continues from there)")
            self.jsonl = open(args.log_jsonl, "a", buffering=1)
        if args.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the earlier attempt's events from this step on.
            self.tb = SummaryWriter(log_dir=args.tensorboard_dir,
                                    purge_step=start_iteration + 1)
        if args.wandb_project:
            # No network here or on many clusters' compute nodes: default to offline runs
            # (`wandb sync` later) unless the user chose a mode.
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            save_dir = args.wandb_save_dir or os.path.join(args.save or ".", "wandb")
            os.makedirs(save_dir, exist_ok=True)
            self.wandb = wandb.init(project=args.wandb_project, name=args.wandb_exp_name,
                                    entity=args.wandb_entity, dir=save_dir, config={k: v for k, v in vars(args).items()
                                                          if isinstance(v, (int, float, str,
                                                                            bool, type(None)))})

    def print(self, msg):
        if self.enabled:
            get_logger().info(msg)

    # -- cadence (the same verdict on every rank: a due step may run collectives) --------------
    def console_due(self, iteration, ok=True, metrics=None) -> bool:
        """Console line and JSONL record: every --log-interval, and always on a skipped step or
        a metrics step (its measurement would otherwise be thrown away)."""
        return iteration % self.log_interval == 0 or not ok or bool(metrics)

    def tensorboard_due(self, iteration, ok=True, metrics=None) -> bool:
        """TensorBoard/wandb scalars: every --tensorboard-log-interval, and on a skipped or
        metrics step."""
        return iteration % self.tb_interval == 0 or not ok or bool(metrics)

    def due(self, iteration, ok=True, metrics=None) -> bool:
        return self.console_due(iteration, ok, metrics) or self.tensorboard_due(iteration, ok,
                                                                                metrics)

    def train(self, rec, train_iters, start_iteration):
        """One training step's record, to the sinks that are due."""
        it, ok, metrics = rec["iteration"], not rec.get("skipped"), rec.get("effective_rank")
        console = self.console_due(it, ok, metrics is not None)
        tb = self.tensorboard_due(it, ok, metrics is not None)
        if not self.timers_to_tb:
            tb_rec = {k: v for k, v in rec.items() if k not in TIMER_KEYS}
        else:
            tb_rec = rec
        self.record(rec, jsonl=console, scalars=False)
        if tb:
            self.record(tb_rec, jsonl=False, scalars=True)
        if console:
            self.train_line(rec, train_iters, start_iteration)

    def validation(self, rec):
        """rec: iteration, lm_loss, nitp_loss; with --log-validation-ppl-to-tensorboard also
        the LM perplexity exp(min(20, loss)) as Megatron-LM (NITP's loss is no log-likelihood:
        no perplexity)."""
        rec = dict(rec, split="valid")
        if self.validation_ppl and rec.get("lm_loss") is not None:
            rec["lm_ppl"] = math.exp(min(20.0, rec["lm_loss"]))
        self.record(rec)
        nitp = f" | nitp loss {rec['nitp_loss']:.4f}" if rec.get("nitp_loss") is not None else ""
        ppl = f" | lm PPL {rec['lm_ppl']:.4e}" if "lm_ppl" in rec else ""
        self.print(f"validation at iter {rec['iteration']} | lm loss {rec['lm_loss']:.4f}"
                   f"{ppl}{nitp}")

    def record(self, rec: dict, jsonl=True, scalars=True):
        """rec: iteration, split ('train'/'valid'), lm_loss, nitp_loss, ..."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in rec.items()}
        if self.jsonl and jsonl:
            self.jsonl.write(json.dumps(clean) + "\n")
        if not scalars:
            return
        split = rec.get("split", "train")
        scalars = {f"{split}/{k}": v for k, v in rec.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iteration"
                   and v is not None and math.isfinite(v)}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, rec["iteration"])
            self.tb.flush()
        if self.wandb:
            self.wandb.log(scalars, step=rec["iteration"])

    def train_line(self, rec, train_iters, start_iteration):
        done = rec["iteration"] - start_iteration
        elapsed = time.time() - self.start
        eta = elapsed / max(done, 1) * (train_iters - rec["iteration"])
        parts = [f"iter {rec['iteration']:>6d}/{train_iters}"]
        if self.ramp:  # as Megatron-LM's line: the step's batch and the samples so far
            parts += [f"consumed samples {rec['consumed_samples']}",
                      f"global batch size {rec['global_batch_size']}"]
        parts.append(f"lm loss {rec['lm_loss']:.4f}")
        if rec.get("nitp_loss") is not None:
            parts.append(f"nitp loss {rec['nitp_loss']:.4f}")
        parts += [f"{k[:-5]} loss {v:.4f}" for k, v in rec.items()  # MTP, as Megatron-LM's
                  if k.startswith("mtp_") and k.endswith("_loss") and v is not None]
        parts += [f"lr {rec['lr']:.3e}", f"grad norm {rec['grad_norm']:.3f}",
                  f"tokens/s {rec['tokens_per_sec']:.0f}", f"elapsed {_fmt_time(elapsed)}",
                  f"ETA {_fmt_time(eta)}"]
        if rec.get("throughput_tflops") is not None:
            parts.append(f"TFLOP/s/device {rec['throughput_tflops']:.3f}")
        if rec.get("params_norm") is not None:
            parts.append(f"params norm {rec['params_norm']:.3f}")
        if rec.get("num_zeros_in_grad") is not None:
            parts.append(f"num zeros {rec['num_zeros_in_grad']}")
        if rec.get("effective_rank") is not None:
            parts.append(f"erank {rec['effective_rank']:.2f} "
                         f"pair-cos {rec['pair_cosine']:.3f}")
        if rec.get("loss_scale") is not None:  # Megatron-LM's fp16 fields
            parts.append(f"loss scale {rec['loss_scale']:.1f} | number of skipped iterations "
                         f"{rec['skipped_iterations']:3d}")
        if rec.get("skipped"):
            parts.append("SKIPPED (loss-scale overflow)" if rec.get("overflow")
                         else "SKIPPED (non-finite)")
        self.print(" | ".join(parts))

    def close(self):
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
