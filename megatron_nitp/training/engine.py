"""The training engine behind pretrain_gpt_nitp.py and pretrain_moe_nitp.py.

arguments -> validation (no process groups yet) -> distributed init -> tokenizer + data ->
model chunks (DDP) + optimizer + scheduler -> resume -> loop (train_step, metrics, eval, logs,
checkpoints, exits) .
"""

import contextlib
import math
import os
import signal
import sys
import time
import traceback

import torch

from ..nitp.config import NITPConfig
from .arguments import parse_args
from .checkpoint_io import CheckpointError, iteration_dir, latest_iteration, read_run_config
from .output_paths import probe_output_paths
from .resume_changes import check_optimizer_layout, report_nitp_changes
from .save_lock import SaveDirLock
from .schedule_resume import check_schedule_on_resume
from .validation import ConfigError, validate_args

ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
               "num_query_groups", "kv_channels", "num_experts", "moe_ffn_hidden_size",
               "moe_shared_expert_intermediate_size", "moe_layer_freq", "moe_router_topk",
               "untie_embeddings_and_output_weights", "normalization", "swiglu",
               "position_embedding_type", "padded_vocab_size")


def _device():
    """Where collectives' tensors live: NCCL needs CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")


def _fail(msg, debug=False):
    # Every rank reaches the same verdict; one line is enough (the other ranks exit quietly).
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0:
        if debug:
            traceback.print_exc()
        print(f"error: {msg}", file=sys.stderr, flush=True)
    else:
        # torchrun kills the other ranks as soon as one exits: let rank 0 print its line first.
        time.sleep(3)
    sys.exit(2)


def _check_resume_target(args, vocab_size_known, nitp_config=None, log=print):
    """--load sanity before heavy work: empty dirs, architecture mismatches, what else the
    resume changes (schedule, NITP, optimizer layout)."""
    from .checkpoint_flags import resolve_pretrained_checkpoint

    resolve_pretrained_checkpoint(args, log)
    if not args.load:
        return
    if not os.path.isdir(args.load):
        if args.save and os.path.abspath(args.load) == os.path.abspath(args.save):
            print(f"notice: --load {args.load} holds no checkpoint yet (same as --save): "
                  "starting fresh", flush=True)
            args.load = None
            return
        raise ConfigError(f"--load {args.load}: no such directory")
    it = latest_iteration(args.load)
    if it is None:
        if args.save and os.path.abspath(args.load) == os.path.abspath(args.save):
            print(f"notice: --load {args.load} holds no checkpoint yet (same as --save): "
                  "starting fresh", flush=True)
            args.load = None
            return
        raise ConfigError(f"--load {args.load}: no checkpoint in this directory "
                          "(no latest_checkpointed_iteration.txt); a mistyped path must not "
                          "train from scratch")
    run_config = read_run_config(args.load, it)
    saved = run_config["args"]
    if vocab_size_known:
        _adopt_saved_vocab_padding(args, saved)
    for field in ARCH_FIELDS:
        if field == "padded_vocab_size" and not vocab_size_known:
            continue
        mine, theirs = getattr(args, field, None), saved.get(field)
        if field in saved and mine != theirs:
            raise ConfigError(f"--load {args.load}: checkpoint has a different architecture: "
                              f"{field} = {theirs} in the checkpoint, {mine} here")
    from .checkpointing import continues_schedule, loads_optimizer_state, verify_checkpoint_files

    verify_checkpoint_files(iteration_dir(args.load, it))
    if nitp_config is not None:
        report_nitp_changes(run_config.get("nitp", {}), nitp_config.to_dict(), log)
        if loads_optimizer_state(run_config, nitp_config) and not (args.finetune
                                                                   or args.no_load_optim):
            check_optimizer_layout(saved, args, args.load)
        if continues_schedule(run_config, args.finetune, args.no_load_optim):
            check_schedule_on_resume(args, iteration_dir(args.load, it), log, saved)


def _per_split_paths(args):
    return [args.train_data_path, args.valid_data_path, args.test_data_path]


def _adopt_saved_vocab_padding(args, saved):
    """The vocabulary is padded to a multiple of make_vocab_size_divisible_by x TP, so a
    checkpoint saved at another TP size has another row count (512 at TP2, 384 at TP1 for 301
    ids). Padding rows are never a target; the checkpoint's count is adopted when the tokenizer
    fits in it and the new TP size divides it, as dist checkpointing then reshards the rows."""
    theirs, mine = saved.get("padded_vocab_size"), args.padded_vocab_size
    if theirs is None or theirs == mine:
        return
    tp = args.tensor_model_parallel_size
    if theirs < args.vocab_size:
        raise ConfigError(f"--load {args.load}: the checkpoint's vocabulary has {theirs} rows, "
                          f"the tokenizer {args.vocab_size} ids (--tokenizer-model/--vocab-size "
                          "must be the checkpoint's tokenizer)")
    if theirs % tp:
        raise ConfigError(f"--load {args.load}: the checkpoint's padded vocabulary ({theirs} "
                          f"rows) does not split over --tensor-model-parallel-size {tp}; use a "
                          f"TP size dividing {theirs}")
    print(f"notice: --load {args.load}: using the checkpoint's padded vocabulary of {theirs} "
          f"rows ({mine} at this TP size)", flush=True)
    args.padded_vocab_size = theirs


def _setup_tokenizer_and_data_args(args, log):
    from ..data.tokenizers import build_tokenizer

    if args.demo_data:
        from ..data.demo import prepare_demo_data

        rank = int(os.environ.get("RANK", 0))
        # Rank 0 builds (cached, file-locked); the others find the cache.
        prefix, tok = prepare_demo_data(log=log if rank == 0 else (lambda *a: None))
        args.data_path = [prefix]
        args.tokenizer_type, args.tokenizer_model = "SentencePieceTokenizer", tok
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
    # NullTokenizer: --vocab-size V *defines* the tokenizer (ids 0..V-1 plus EOD = V, so V + 1).
    if (args.vocab_size is not None and args.tokenizer_type != "NullTokenizer"
            and args.vocab_size < tokenizer.vocab_size):
        raise ConfigError(f"--vocab-size {args.vocab_size}: smaller than the tokenizer's "
                          f"{tokenizer.vocab_size} ids")
    # A larger --vocab-size sets the table size (as HF Qwen2's 152064 for a 151646-id tokenizer).
    args.vocab_size = max(args.vocab_size or 0, tokenizer.vocab_size)
    return tokenizer


def pretrain(model_family="gpt", argv=None):
    # --exit-duration-in-mins counts from here, as Megatron-LM's _TRAIN_START_TIME does: a job's
    # time limit also pays for imports, model build and checkpoint load.
    start_time = time.time()
    args = parse_args(argv, model_family)
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    try:
        if model_family == "moe" and not args.num_experts:
            raise ConfigError("--num-experts: required by pretrain_moe_nitp.py")
        nitp_config = validate_args(args)
        probe_output_paths(args)
        if args.plot and not args.log_jsonl:
            raise ConfigError("--plot: needs --log-jsonl (the plot is drawn from its records)")
        if args.dry_run:  # before any megatron-core import: a dry run costs the torch import
            return _dry_run(args, nitp_config)
        from ..data.datasets import validate_data_args

        tokenizer = _setup_tokenizer_and_data_args(args, log)
        validate_data_args(args.data_path, tokenizer, args.split, args.mock_data,
                           _per_split_paths(args))
        from ..models.builder import padded_vocab_size

        args.padded_vocab_size = padded_vocab_size(
            args.vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)
        _check_resume_target(args, vocab_size_known=True, nitp_config=nitp_config, log=log)
    except (ConfigError, CheckpointError, ValueError) as e:
        _fail(str(e), args.debug)
    except SystemExit as e:  # data-layer errors are SystemExit subclasses with a message
        if e.code not in (0, None) and not isinstance(e.code, int):
            _fail(str(e.code).removeprefix("error: "), args.debug)
        raise
    return Trainer(args, nitp_config, tokenizer, log, start_time).run()


def _dry_run(args, nitp_config):
    from ..models.param_count import count_parameters, padded_vocab_size
    from ..models.moe_parallel import expert_tensor_parallel_size

    if args.vocab_size is None:
        args.vocab_size = 151936
    args.padded_vocab_size = padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by,
                                               args.tensor_model_parallel_size)
    counts = count_parameters(args)
    dp = args.data_parallel_size
    print(f"parameters: total {counts['total'] / 1e9:.3f}B, active {counts['active'] / 1e9:.3f}B"
          f", NITP head {counts.get('nitp_head', 0) / 1e6:.1f}M (training only)")
    print(f"parallel plan: TP {args.tensor_model_parallel_size} x PP "
          f"{args.pipeline_model_parallel_size} x CP {args.context_parallel_size} x DP {dp}"
          f" (EP {args.expert_model_parallel_size}"
          + (f", expert-TP {expert_tensor_parallel_size(args)}" if args.num_experts else "")
          + ", VPP chunk "
          f"{args.num_layers_per_virtual_pipeline_stage}), microbatches/step "
          f"{args.global_batch_size // (args.micro_batch_size * dp)}")
    print(f"NITP: {nitp_config.to_dict()}")
    return 0


class SecondInterrupt(KeyboardInterrupt):
    """Ctrl-C again while --exit-signal-handler is already saving: stop now."""


class Trainer:
    def __init__(self, args, nitp_config: NITPConfig, tokenizer, log, start_time=None):
        self.args, self.nitp, self.tokenizer, self.log = args, nitp_config, tokenizer, log
        self.sigterm = False
        self.start_time = start_time or time.time()

    # -- setup -------------------------------------------------------------------------------
    def _setup(self):
        from megatron.core import parallel_state as ps

        from ..models.builder import (build_model_chunks, transformer_config_from_args,
                                      virtual_pipeline_size)
        from ..models.moe_parallel import expert_tensor_parallel_size
        from ..parallel.distributed import initialize_distributed
        from ..parallel.speed import speed_settings
        from .loggers import RunLogger
        from .step import build_optimizer, wrap_ddp

        a = self.args
        initialize_distributed(a.tensor_model_parallel_size, a.pipeline_model_parallel_size,
                               virtual_pipeline_size(a), a.context_parallel_size,
                               a.expert_model_parallel_size, seed=a.seed,
                               timeout_minutes=a.distributed_timeout_minutes,
                               expert_tensor_parallel_size=expert_tensor_parallel_size(a))
        self._lock_save_dir()
        self.config = transformer_config_from_args(a)
        self.chunks = build_model_chunks(a, self.config, self.nitp)
        self.model = wrap_ddp(self.chunks, self.config, a.use_distributed_optimizer,
                              a.overlap_grad_reduce, a.overlap_param_gather)
        notice = speed_settings(a)[1]
        if notice:
            self.log(notice)
        self.optimizer, self.scheduler = build_optimizer(a, self.model, self.config)
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.num_microbatches = a.global_batch_size // (a.micro_batch_size * self.dp_size)
        self.iteration, self.consumed = 0, 0
        if a.load:
            from .checkpointing import load_checkpoint

            try:
                self.iteration, self.consumed = load_checkpoint(
                    a.load, self.chunks, self.optimizer, self.scheduler, self.nitp, self.log,
                    finetune=a.finetune, no_load_optim=a.no_load_optim,
                    strict=a.dist_ckpt_strictness)
            except CheckpointError as e:
                _fail(str(e), a.debug)
            self.log(f"resumed from {a.load} at iteration {self.iteration}")
        # After the load: the logs rewind to the iteration this run continues from.
        self.logger = RunLogger(a, enabled=torch.distributed.get_rank() == 0,
                                start_iteration=self.iteration)
        self._build_data()

    def _lock_save_dir(self):
        """Rank 0 takes the --save lock; every rank learns the verdict (launched by srun, no
        launcher would stop ranks left waiting for a rank 0 that refused)."""
        refused = None
        if self.args.save and torch.distributed.get_rank() == 0:
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
        sizes = (a.train_iters * gbs, max(n_evals * a.eval_iters * gbs, 1), a.eval_iters * gbs)
        # Every rank calls it: megatron-core builds the index cache on rank 0 first, then loads
        # it on the others (its own barrier).
        train, valid, _ = build_datasets(a.data_path, a.split, a.mock_data, a.seq_length,
                                         self.tokenizer, a.seed, sizes, a.data_cache_path,
                                         per_split_paths=_per_split_paths(a),
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
    def _pipeline_broadcast(self, values: dict, keys):
        """Losses live on the last pipeline stage; bring them to every rank (rank 0 logs)."""
        from megatron.core import parallel_state as ps

        t = torch.tensor([values.get(k, 0.0) for k in keys] + [1.0 if values else 0.0],
                         dtype=torch.float64, device=_device())
        torch.distributed.all_reduce(t, group=ps.get_pipeline_model_parallel_group())
        return {k: t[i].item() for i, k in enumerate(keys)} if t[-1] > 0 else {}

    def _any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def _grads_finite(self):
        # Per-bucket checks stay on the device; one host sync for the whole step.
        flags = [torch.isfinite(buf.grad_data).all() for chunk in self.model
                 for buf in list(chunk.buffers) + list(chunk.expert_parallel_buffers)]
        bad = (~torch.stack(flags).all()).float().reshape(1) if flags else torch.zeros(1, device=_device())
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return bad.item() == 0

    def _injected_nan(self):
        spec = os.environ.get("MEGATRON_NITP_TEST_NAN_ITERS", "")
        return str(self.iteration + 1) in spec.split(",")

    # -- one step ----------------------------------------------------------------------------
    def _train_step(self):
        from .sample_schedule import scheduler_increment
        from .step import forward_backward, reduce_losses, reduce_step_geometry

        a = self.args
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        probe = self._geometry_probe() if self._want_metrics() else None
        raw = forward_backward(a, self.model, self.config, self.nitp, self.train_iter,
                               self.num_microbatches, self.iteration, geometry=probe,
                               document_eod=self._document_eod())
        losses = reduce_losses(raw)
        metrics = reduce_step_geometry(raw, probe, self.config)
        if self._injected_nan():  # test hook: a poisoned step
            losses = {k: float("nan") for k in losses}
            for p in self.chunks[0].parameters():
                p.main_grad.fill_(float("nan"))
                break
        losses = self._pipeline_broadcast(losses, ["lm loss", "nitp loss"])
        finite = self._grads_finite() and all(math.isfinite(v) for v in losses.values())
        grad_norm = float("nan")
        if finite:
            ok, grad_norm, _ = self.optimizer.step()
            finite = bool(ok) and grad_norm is not None and math.isfinite(grad_norm)
            if finite:
                self.scheduler.step(increment=scheduler_increment(a))  # samples or 1
        if probe is not None:
            metrics = self._pipeline_broadcast(metrics, ["effective_rank", "pair_cosine"])
        return losses, grad_norm, finite, metrics

    def _eval_due(self):
        # --eval-iters 0 is Megatron-LM's way to skip evaluation altogether.
        a = self.args
        return bool(a.eval_interval and a.eval_iters) and self.iteration % a.eval_interval == 0

    def _document_eod(self):
        return self.tokenizer.eod if self.args.reset_attention_mask else None

    def _want_metrics(self):
        k = self.args.nitp_metrics_interval
        return bool(k) and (self.iteration + 1) % k == 0

    def _geometry_probe(self):
        """App. D's plan for this step's mini-batch (the same pairs on every rank)."""
        from ..nitp.metrics import GeometryProbe

        a = self.args
        return GeometryProbe.for_step(self.iteration, a.seed, a.global_batch_size, a.seq_length,
                                      a.micro_batch_size, self.dp_rank, self.dp_size,
                                      a.nitp_metrics_num_pairs)

    def evaluate(self):
        from .step import forward_backward, reduce_losses

        if self.valid_ds is None:
            return {}
        a = self.args
        valid_iter = self._iters(self.valid_ds, 0)
        for c in self.model:
            c.eval()
        totals = []
        with torch.no_grad():
            for _ in range(a.eval_iters):
                raw = forward_backward(a, self.model, self.config, self.nitp, valid_iter,
                                       self.num_microbatches, self.iteration, forward_only=True,
                                       document_eod=self._document_eod())
                totals += raw
        for c in self.model:
            c.train()
        return self._pipeline_broadcast(reduce_losses(totals), ["lm loss", "nitp loss"])

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

    def _save(self):
        from .checkpointing import save_checkpoint

        a = self.args
        try:
            with self._params_in_sync():
                save_checkpoint(a.save, self.iteration, self.chunks, self.optimizer,
                                self.scheduler, self.consumed, a, self.nitp,
                                {"type": a.tokenizer_type, "model": a.tokenizer_model},
                                keep_last_n=a.keep_last_n_checkpoints, log=self.log)
        except CheckpointError as e:  # disk full: one line, the previous checkpoint intact
            self.logger.close()
            _fail(str(e), a.debug)

    def run(self):
        a = self.args
        if a.exit_signal_handler:
            for sig in {signal.Signals(a.exit_signal), signal.SIGINT}:
                signal.signal(sig, self._on_exit_signal)
        self._setup()
        start_iteration = self.iteration
        tokens_per_step = a.global_batch_size * a.seq_length
        self.log(f"training {a.model_family} model: {a.train_iters} iterations, "
                 f"global batch {a.global_batch_size} x seq {a.seq_length}, "
                 f"{self.num_microbatches} microbatches/step, NITP "
                 f"{'on' if self.nitp.enabled else 'off'}")
        run_start, bad_in_a_row, last_saved = time.time(), 0, self.iteration
        while self.iteration < a.train_iters:
            t0 = time.time()
            losses, grad_norm, ok, metrics = self._train_step()
            self.iteration += 1
            self.consumed += a.global_batch_size
            bad_in_a_row = 0 if ok else bad_in_a_row + 1
            dt = time.time() - t0
            # A metrics step is always logged: its measurement would otherwise be thrown away.
            if self.iteration % a.log_interval == 0 or not ok or metrics:
                rec = {"iteration": self.iteration, "lm_loss": losses.get("lm loss"),
                       "nitp_loss": losses.get("nitp loss") if self.nitp.enabled else None,
                       "lr": self.optimizer.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "tokens_per_sec": tokens_per_step / dt,
                       "elapsed_s": round(time.time() - run_start, 3),
                       "consumed_samples": self.consumed, "skipped": not ok, **metrics}
                self.logger.record(rec)
                self.logger.train_line(rec, a.train_iters, start_iteration)
            if not ok:
                self.log(f"warning: non-finite loss or gradient at iteration {self.iteration}: "
                         f"step skipped ({bad_in_a_row} in a row)")
                if bad_in_a_row >= a.max_bad_steps:
                    self.log(f"error: {bad_in_a_row} consecutive non-finite steps "
                             f"(--max-bad-steps {a.max_bad_steps}); stopping")
                    if a.save and last_saved != self.iteration:
                        # The parameters were never updated by the bad steps: this is the
                        # last good state.
                        self._save()
                    return self._finish(3)
            if self._eval_due():
                self._log_eval()
            if a.save and a.save_interval and self.iteration % a.save_interval == 0:
                self._save()
                last_saved = self.iteration
            stop = None
            if a.exit_signal_handler and self._any_rank(bool(self.sigterm)):
                stop = self.sigterm or "a signal on another rank"
            elif a.exit_duration_in_mins and self._any_rank(
                    (time.time() - self.start_time) / 60 > a.exit_duration_in_mins):
                stop = "--exit-duration-in-mins"
            elif a.exit_interval and self.iteration % a.exit_interval == 0:
                stop = "--exit-interval"
            if stop:
                if a.save and last_saved != self.iteration:
                    self._save()
                self.log(f"exiting at iteration {self.iteration} ({stop})")
                return self._finish(0)
        if a.eval_interval and a.eval_iters and self.iteration % a.eval_interval != 0:
            self._log_eval()
        # --train-iters 0 --save: the initialised (or --finetune-loaded) model as iteration 0,
        # a seed checkpoint that any layout can --load --finetune.
        if a.save and (last_saved != self.iteration or self.iteration == a.train_iters == 0):
            self._save()
        return self._finish(0)

    def _on_exit_signal(self, signum, _frame):
        """Finish the step, save, exit 0; a second Ctrl-C means stop now (exit 130)."""
        if self.sigterm and signum == signal.SIGINT:
            raise SecondInterrupt
        self.sigterm = signal.Signals(signum).name  # no print here: not reentrant

    def _finish(self, code):
        """Close the logs; with --plot, draw the run's JSONL (rank 0; a plotting failure only
        warns: the training itself succeeded)."""
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
        if not ev:
            return
        rec = {"iteration": self.iteration, "split": "valid", "lm_loss": ev.get("lm loss"),
               "nitp_loss": ev.get("nitp loss") if self.nitp.enabled else None}
        self.logger.record(rec)
        nitp = f" | nitp loss {rec['nitp_loss']:.4f}" if rec["nitp_loss"] is not None else ""
        self.logger.print(f"validation at iter {self.iteration} | lm loss {rec['lm_loss']:.4f}"
                          f"{nitp}")


def main(model_family):
    try:
        code = pretrain(model_family)
    except KeyboardInterrupt as e:
        # Ctrl-C without --exit-signal-handler (or a second one with it): one line, the shell's
        # 128 + SIGINT, and no traceback; a save it interrupted has removed its .tmp
        # (checkpointing.save_checkpoint).
        if int(os.environ.get("RANK", 0)) == 0:
            hint = ("a second Ctrl-C stops at once" if isinstance(e, SecondInterrupt) else
                    "--exit-signal-handler makes Ctrl-C save a checkpoint and exit 0")
            print(f"error: interrupted (SIGINT): exiting without saving; {hint}",
                  file=sys.stderr, flush=True)
        code = 130
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code or 0)
