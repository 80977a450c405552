"""The training engine behind pretrain_gpt_nitp.py and pretrain_moe_nitp.py.

argv -> RunConfig (resolve.py: defaults, validation, data, tokenizer, resume checks; frozen) ->
distributed init -> model chunks (DDP) + optimizer + scheduler -> resume -> loop:
step.train_step, then each component acts when it is due (loggers.RunLogger,
evaluator.Evaluator, checkpointer.Checkpointer, stop_policy.StopPolicy, profiling.StepProfiler).
"""

import contextlib
import gc
import sys
import time
import traceback

import torch

from ..errors import UserError
from .arguments import parse_args
from .checkpoint_io import CheckpointError
from .debug import FAULTS
from .log import get_logger, rank, set_logging_level
from .resolve import per_split_paths, resolve_run
from .run_config import RunConfig
from .sample_schedule import planned_samples
from .save_lock import SaveDirLock
from .stop_policy import SecondInterrupt
from .validation import ConfigError


def _device():
    """Where collectives' tensors live: NCCL needs CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")


def _fail(msg, debug=False):
    # Every rank reaches the same verdict; one line is enough (the other ranks exit quietly).
    if rank() == 0:
        if debug:
            traceback.print_exc()
        print(f"error: {msg}", file=sys.stderr, flush=True)
    else:
        # torchrun kills the other ranks as soon as one exits: let rank 0 print its line first.
        time.sleep(3)
    sys.exit(2)


def pretrain(model_family="gpt", argv=None):
    # --exit-duration-in-mins counts from here, as Megatron-LM's _TRAIN_START_TIME does: a job's
    # time limit also pays for imports, model build and checkpoint load.
    start_time = time.time()
    args = parse_args(argv, model_family)
    set_logging_level(args.logging_level)
    log = get_logger().info  # rank 0 prints (training/log.py)
    try:
        run, tokenizer = resolve_run(args, log)
    except (UserError, ValueError) as e:  # ValueError: megatron-core's own config checks
        _fail(str(e), args.debug)
    if run.dry_run:
        from .dry_run import dry_run

        return dry_run(run, run.nitp_config)
    return Trainer(run, tokenizer, log, start_time).run()


class Trainer:
    def __init__(self, run: RunConfig, tokenizer, log, start_time=None):
        # `args`: the frozen RunConfig, read as Megatron-LM reads its args.
        self.args, self.nitp, self.tokenizer, self.log = run, run.nitp_config, tokenizer, log
        self.start_time = start_time or time.time()

    # -- setup -------------------------------------------------------------------------------
    def _setup(self):
        from megatron.core import parallel_state as ps

        from ..models.builder import virtual_pipeline_size
        from ..models.moe_parallel import expert_tensor_parallel_size
        from ..parallel.distributed import initialize_distributed
        from ..parallel.precision import initialize_tp_communicators
        from ..parallel.speed import speed_settings
        from .loggers import RunLogger
        from .model_setup import build_model_and_optimizer

        a = self.args
        initialize_distributed(a.tensor_model_parallel_size, a.pipeline_model_parallel_size,
                               virtual_pipeline_size(a), a.context_parallel_size,
                               a.expert_model_parallel_size, seed=a.seed,
                               timeout_minutes=a.distributed_timeout_minutes,
                               expert_tensor_parallel_size=expert_tensor_parallel_size(a))
        self._lock_save_dir()
        initialize_tp_communicators(a)  # --tp-comm-overlap (TE userbuffers), before the model
        built = build_model_and_optimizer(a, self.nitp)
        self.config, self.chunks, self.model = built.config, built.chunks, built.model
        self.optimizer, self.scheduler = built.optimizer, built.scheduler
        notice = speed_settings(a)[1]
        if notice:
            self.log(notice)
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        # Evaluation keeps the full global batch (as Megatron-LM); training follows megatron-core's
        # calculator (constant, or --rampup-batch-size from the consumed samples).
        self.eval_microbatches = a.global_batch_size // (a.micro_batch_size * self.dp_size)
        from megatron.core import num_microbatches_calculator as nmb

        nmb.destroy_num_microbatches_calculator()  # in-process runs (tests) build one each
        nmb.init_num_microbatches_calculator(rank(), a.rampup_batch_size, a.global_batch_size,
                                             a.micro_batch_size, self.dp_size)
        self.iteration, self.consumed = 0, 0
        if a.load:
            from .checkpointing import load_checkpoint

            try:
                self.iteration, self.consumed = load_checkpoint(
                    a.load, self.chunks, self.optimizer, self.scheduler, self.nitp, self.log,
                    finetune=a.finetune, no_load_optim=a.no_load_optim,
                    strict=a.dist_ckpt_strictness, no_load_rng=a.no_load_rng)
            except CheckpointError as e:
                _fail(str(e), a.debug)
            self.log(f"resumed from {a.load} at iteration {self.iteration}")
        self._update_microbatches()
        # After the load: the logs rewind to the iteration this run continues from.
        self.logger = RunLogger(a, enabled=rank() == 0,
                                start_iteration=self.iteration)
        self._build_data()

    def _update_microbatches(self) -> bool:
        """The step's microbatches from the consumed samples; True when they changed."""
        from megatron.core.num_microbatches_calculator import (get_num_microbatches,
                                                               update_num_microbatches)

        before = getattr(self, "num_microbatches", None)
        update_num_microbatches(self.consumed, consistency_check=True)
        self.num_microbatches = get_num_microbatches()
        return before is not None and self.num_microbatches != before

    @property
    def global_batch(self) -> int:
        """This step's global batch (--rampup-batch-size: smaller while it ramps)."""
        return self.num_microbatches * self.args.micro_batch_size * self.dp_size

    def _lock_save_dir(self):
        """Rank 0 takes the --save lock; every rank learns the verdict (launched by srun, no
        launcher would stop ranks left waiting for a rank 0 that refused)."""
        refused = None
        if self.args.save and rank() == 0:
            try:
                SaveDirLock(self.args.save, self.log).acquire()
            except ConfigError as e:
                refused = str(e)
        if self._any_rank(refused is not None):
            _fail(refused or "", self.args.debug)

    def _build_data(self):
        from ..data.datasets import build_datasets
        from ..data.iterators import build_data_iterator

        a = self.args
        gbs = a.global_batch_size
        n_evals = (a.train_iters // a.eval_interval + 1) if a.eval_interval and a.eval_iters else 0
        train = planned_samples(a, self.iteration, self.consumed)  # to the run's last step
        sizes = (train, max(n_evals * a.eval_iters * gbs, 1), a.eval_iters * gbs)
        # Every rank calls it: megatron-core builds the index cache on rank 0 first, then loads
        # it on the others (its own barrier).
        train, valid, _ = build_datasets(a.data_path, a.split, a.mock_data, a.seq_length,
                                         self.tokenizer, a.seed, sizes, a.data_cache_path,
                                         per_split_paths=per_split_paths(a),
                                         reset_position_ids=a.reset_position_ids,
                                         reset_attention_mask=a.reset_attention_mask,
                                         eod_mask_loss=a.eod_mask_loss)
        n = len(self.chunks)

        def iters(ds, consumed):
            its = [build_data_iterator(ds, a.micro_batch_size, self.dp_rank, self.dp_size,
                                       consumed, a.num_workers) for _ in range(n)]
            return its if n > 1 else its[0]

        self.train_iter = iters(train, self.consumed)
        self.valid_ds, self._iters = valid, iters

    # -- helpers -----------------------------------------------------------------------------
    def _any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    # -- one step ----------------------------------------------------------------------------
    def _train_step(self):
        from .step import train_step

        probe = self._geometry_probe() if self._want_metrics() else None
        return train_step(self.args, self.model, self.optimizer, self.scheduler, self.config,
                          self.nitp, self.train_iter, self.num_microbatches, self.iteration,
                          geometry=probe, document_eod=self._document_eod(),
                          poison=FAULTS.nan_at(self.iteration + 1))

    def loss_scale(self):
        """The grad scaler's current scale (fp16 / --loss-scale), else None."""
        from ..parallel.precision import uses_grad_scaler

        if not uses_grad_scaler(self.args):
            return None
        return float(self.optimizer.get_loss_scale())

    def _document_eod(self):
        return self.tokenizer.eod if self.args.reset_attention_mask else None

    def _want_metrics(self):
        k = self.args.nitp_metrics_interval
        return bool(k) and (self.iteration + 1) % k == 0

    def _geometry_probe(self):
        """App. D's plan for this step's mini-batch (the same pairs on every rank)."""
        from ..nitp.metrics import GeometryProbe

        a = self.args
        return GeometryProbe.for_step(self.iteration, a.seed, self.global_batch, a.seq_length,
                                      a.micro_batch_size, self.dp_rank, self.dp_size,
                                      a.nitp_metrics_num_pairs)

    def evaluate(self):
        from .step import eval_losses

        if self.valid_ds is None:
            return {}
        return eval_losses(self.args, self.model, self.config, self.nitp,
                           self._iters(self.valid_ds, 0), self.eval_microbatches, self.iteration,
                           self.args.eval_iters, document_eod=self._document_eod())

    # -- loop --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _params_in_sync(self):
        """With --overlap-param-gather the optimizer step leaves the new parameters' all-gather
        to the next forward's pre-hooks: finish it before evaluation and checkpoints (as
        Megatron-LM does), then hand the gather back to the hooks."""
        if not self.args.overlap_param_gather:
            yield
            return
        for chunk in self.model:
            chunk.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            for chunk in self.model:
                chunk.enable_forward_pre_hook()

    def _save(self, iteration):
        from .checkpointing import save_checkpoint

        a = self.args
        try:
            with self._params_in_sync():
                save_checkpoint(a.save, iteration, self.chunks, self.optimizer, self.scheduler,
                                self.consumed, a, self.nitp,
                                {"type": a.tokenizer_type, "model": a.tokenizer_model,
                                 "vocab_file": a.vocab_file, "merge_file": a.merge_file},
                                keep_last_n=a.keep_last_n_checkpoints, log=self.log)
        except CheckpointError as e:  # disk full: one line, the previous checkpoint intact
            self.logger.close()
            _fail(str(e), a.debug)

    def run(self):
        from .checkpointer import Checkpointer
        from .evaluator import Evaluator
        from .profiling import StepProfiler
        from .stop_policy import StopPolicy

        a = self.args
        stop_policy = StopPolicy(a, self.start_time, self._any_rank, self.log)
        stop_policy.install_signal_handlers()
        self._setup()
        start_iteration = self.iteration
        checkpointer = Checkpointer(a, self._save, self.iteration)
        evaluator = Evaluator(a, self._log_eval)
        profiler = StepProfiler(a, rank())
        ramp = ""
        if a.rampup_batch_size is not None:
            start, increment, samples = a.rampup_batch_size
            ramp = f" (ramp-up from {start} by {increment} over {samples} samples)"
        self.log(f"training {a.model_family} model: {a.train_iters} iterations, "
                 f"global batch {a.global_batch_size}{ramp} x seq {a.seq_length}, "
                 f"{self.num_microbatches} microbatches/step, NITP "
                 f"{'on' if self.nitp.enabled else 'off'}")
        if FAULTS.notice():
            self.log(FAULTS.notice())
        run_start = time.time()
        self.skipped_since_log = 0  # Megatron-LM's 'number of skipped iterations'
        while self.iteration < a.train_iters:
            if self._update_microbatches():
                # As Megatron-LM's train(): the state before the batch grows is kept.
                checkpointer.save_before_batch_change(self.iteration)
                self.log(f"ramping up the global batch to {self.global_batch} at "
                         f"{self.consumed} consumed samples")
            profiler.step(self.iteration)
            t0 = time.time()
            result = self._train_step()
            self.iteration += 1
            self.consumed += self.global_batch
            self._log_step(result, time.time() - t0, run_start, start_iteration)
            profiler.after_step(self.iteration)
            stop = stop_policy.after_step(self.iteration, result.ok,
                                          self.loss_scale() if result.overflow else None)
            if not stop:
                evaluator.maybe_evaluate(self.iteration)
                checkpointer.maybe_save(self.iteration)
                stop = stop_policy.due(self.iteration)
            if stop:
                checkpointer.save_before_stop(self.iteration)
                if stop.code == 0:
                    self.log(f"exiting at iteration {self.iteration} ({stop.reason})")
                return self._finish(stop.code, profiler)
        evaluator.at_end(self.iteration)
        checkpointer.save_at_end(self.iteration)
        return self._finish(0, profiler)

    def _log_step(self, result, seconds, run_start, start_iteration):
        from .step_record import step_record

        self.skipped_since_log += not result.ok
        if not self.logger.due(self.iteration, result.ok, result.metrics):
            return
        from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

        groups = self.optimizer.param_groups
        # As Megatron-LM: the lr of the main schedule's groups (not the --decoupled-lr one).
        rec = step_record(self.args, self.nitp.enabled, self.iteration, result, seconds,
                          get_canonical_lr_for_logging(groups), self.consumed,
                          time.time() - run_start, self.model, self.global_batch)
        if self.args.decoupled_lr is not None:  # the embedding/output layers' group
            rec["decoupled_lr"] = next(g["lr"] for g in groups if not g["default_config"])
        if self.loss_scale() is not None:  # fp16 / --loss-scale, as Megatron-LM logs
            rec.update(loss_scale=self.loss_scale(), overflow=result.overflow,
                       skipped_iterations=self.skipped_since_log)
        self.skipped_since_log = 0  # Megatron-LM counts the skipped ones per logged line
        self.logger.train(rec, self.args.train_iters, start_iteration)

    def _release_data(self):
        """Stop the DataLoader workers here, in plain code. The Trainer sits in a reference
        cycle (its iterator builder closes over it), so left alone the iterators are collected
        at some later garbage collection - at exit, inside torch.distributed's teardown import
        of tabulate - where the workers' shutdown message waits on the import lock and each
        join times out: 5 s per worker, measured 10-12 s added to every --num-workers 2 run."""
        self.train_iter = self.valid_ds = self._iters = None
        gc.collect()

    def _finish(self, code, profiler=None):
        """Close the profiler and the logs; with --plot, draw the run's JSONL (rank 0; a
        plotting failure only warns: the training itself succeeded)."""
        if profiler is not None:
            profiler.stop()
        self._release_data()
        self.logger.close()
        if self.args.plot and self.logger.enabled:
            from .plotting import plot_runs

            try:
                plot_runs([self.args.log_jsonl], self.args.plot)
                self.log(f"wrote {self.args.plot}")
            except Exception as e:  # noqa: BLE001
                self.log(f"warning: --plot {self.args.plot}: {type(e).__name__}: {e}")
        return code

    def _log_eval(self):
        with self._params_in_sync():
            ev = self.evaluate()
        if ev:
            self.logger.validation({"iteration": self.iteration, "lm_loss": ev.get("lm loss"),
                                    "nitp_loss": ev.get("nitp loss") if self.nitp.enabled
                                    else None})


def main(model_family):
    try:
        code = pretrain(model_family)
    except KeyboardInterrupt as e:
        # Ctrl-C without --exit-signal-handler (or a second one with it): one line, the shell's
        # 128 + SIGINT, and no traceback; a save it interrupted has removed its .tmp
        # (checkpointing.save_checkpoint).
        if rank() == 0:
            hint = ("a second Ctrl-C stops at once" if isinstance(e, SecondInterrupt) else
                    "--exit-signal-handler makes Ctrl-C save a checkpoint and exit 0")
            print(f"error: interrupted (SIGINT): exiting without saving; {hint}",
                  file=sys.stderr, flush=True)
        code = 130
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code or 0)
