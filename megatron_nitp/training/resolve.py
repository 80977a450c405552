"""argv -> the run's RunConfig, before any process group: defaults, validation, the data lists,
the tokenizer's vocabulary, and what a resumed checkpoint fixes (its padded vocabulary, its
schedule). Every value the run reads is settled here, then frozen (run_config.py); the engine
only reads it.

Where a value is derived (all before the freeze, on the parsed namespace, as Megatron-LM's
validate_args does): arguments._fill_defaults (ffn/kv/query groups, max positions, NITP target
layer, --split, lr decay length, the MoE layer pattern) and --use-checkpoint-args
(checkpoint_flags); validation (the data-parallel size, the global batch, sequence parallel off at
TP1, a dry run's needs), precision.derive_precision_args (--recompute-activations,
--apply-query-key-layer-scaling, the bf16 gradient accumulation),
sample_schedule.derive_train_iters (--train-iters from --train-samples, the ramp's plan with
--rampup-batch-size; called by validation once the schedule checks pass: the *_errors checks
only check); here: data_args (the data lists), --demo-data's corpus and tokenizer, the
tokenizer's vocabulary and its padding, --pretrained-checkpoint, a --load that is also an empty
--save, and on resume the checkpoint's padded vocabulary, schedule (schedule_resume:
--use-checkpoint-opt-param-scheduler) and sample plan.
"""

import os

from .arguments import ParsedArgs
from .checkpoint_io import iteration_dir, latest_iteration, read_run_config
from .decoupled_lr import check_decoupled_lr_on_resume
from .log import get_logger, rank
from .output_paths import probe_output_paths
from .profiling import check_profile_args
from .resume_changes import (check_optimizer_layout, report_model_setting_changes,
                             report_nitp_changes)
from .run_config import RunConfig
from .sample_schedule import continue_sample_plan
from .schedule_resume import check_schedule_on_resume
from .validation import ConfigError, validate_args

ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
               "num_query_groups", "kv_channels", "num_experts", "moe_ffn_hidden_size",
               "moe_shared_expert_intermediate_size", "moe_layer_freq", "moe_router_topk",
               "untie_embeddings_and_output_weights", "normalization", "swiglu",
               "position_embedding_type", "padded_vocab_size",
               # biases are on by default (Megatron-LM's): a checkpoint without them says so
               "add_bias_linear", "add_qkv_bias", "qk_layernorm",
               # MLA's projections (their weights' shapes)
               "multi_latent_attention", "q_lora_rank", "kv_lora_rank", "qk_head_dim",
               "qk_pos_emb_head_dim", "v_head_dim")


def resolve_run(args: ParsedArgs, log=None):
    """(RunConfig, tokenizer); the tokenizer is None for a dry run, which plans the job without
    its data or tokenizer files (dry_run.py). Raises UserError (one line) on bad input."""
    log = log or get_logger().info
    if args.model_family == "moe" and not args.num_experts:
        raise ConfigError("--num-experts: required by pretrain_moe_nitp.py")
    nitp_config = validate_args(args)
    if not args.dry_run:  # a dry run lists what the run will need instead (dry_run.py)
        probe_output_paths(args)
    if args.plot and not args.log_jsonl:
        raise ConfigError("--plot: needs --log-jsonl (the plot is drawn from its records)")
    if args.dry_run:  # before any megatron-core import: a dry run costs the torch import
        return RunConfig.freeze(args, nitp_config), None
    from ..data.data_args import resolve_data_args
    from ..data.datasets import validate_data_args
    from ..models.builder import padded_vocab_size

    check_profile_args(args)
    resolve_data_args(args)  # --data-args-path / --per-split-data-args-path: the lists
    tokenizer = _setup_tokenizer_and_data_args(args, log)
    validate_data_args(args.data_path, tokenizer, args.split, args.mock_data,
                       per_split_paths(args))
    args.padded_vocab_size = padded_vocab_size(
        args.vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)
    _check_resume_target(args, vocab_size_known=True, nitp_config=nitp_config, log=log)
    return RunConfig.freeze(args, nitp_config), tokenizer


def _check_resume_target(args, vocab_size_known, nitp_config=None, log=None):
    """--load sanity before heavy work: empty dirs, architecture mismatches, what else the
    resume changes (schedule, NITP, optimizer layout)."""
    from .checkpoint_flags import resolve_pretrained_checkpoint

    log = log or get_logger().info
    resolve_pretrained_checkpoint(args, log)
    if not args.load:
        return
    it = latest_iteration(args.load) if os.path.isdir(args.load) else None
    if it is None and args.save and os.path.abspath(args.load) == os.path.abspath(args.save):
        log(f"notice: --load {args.load} holds no checkpoint yet (same as --save): "
            "starting fresh")
        args.load = None
        return
    if not os.path.isdir(args.load):
        raise ConfigError(f"--load {args.load}: no such directory")
    if it is None:
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
    report_model_setting_changes(saved, args, log)
    if nitp_config is not None:
        report_nitp_changes(run_config.get("nitp", {}), nitp_config.to_dict(), log)
        if loads_optimizer_state(run_config, nitp_config) and not (args.finetune
                                                                   or args.no_load_optim):
            check_optimizer_layout(saved, args, args.load)
            check_decoupled_lr_on_resume(saved, args, args.load)
        if continues_schedule(run_config, args.finetune, args.no_load_optim):
            check_schedule_on_resume(args, iteration_dir(args.load, it), log, saved,
                                     run_config.get("consumed_samples", 0))
    continue_sample_plan(args, run_config, log)


def per_split_paths(args):
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
    get_logger().info(f"notice: --load {args.load}: using the checkpoint's padded vocabulary "
                      f"of {theirs} rows ({mine} at this TP size)")
    args.padded_vocab_size = theirs


def _setup_tokenizer_and_data_args(args, log):
    from ..data.tokenizers import build_tokenizer, tokenizer_options

    if args.demo_data:
        from ..data.demo import prepare_demo_data

        # Rank 0 builds (cached, file-locked); the others find the cache.
        prefix, tok = prepare_demo_data(log=log if rank() == 0 else (lambda *a: None))
        args.data_path = [prefix]
        args.tokenizer_type, args.tokenizer_model = "SentencePieceTokenizer", tok
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size,
                                **tokenizer_options(args))
    # NullTokenizer: --vocab-size V *defines* the tokenizer (ids 0..V-1 plus EOD = V, so V + 1).
    if (args.vocab_size is not None and args.tokenizer_type != "NullTokenizer"
            and args.vocab_size < tokenizer.vocab_size):
        raise ConfigError(f"--vocab-size {args.vocab_size}: smaller than the tokenizer's "
                          f"{tokenizer.vocab_size} ids")
    # A larger --vocab-size sets the table size (as HF Qwen2's 152064 for a 151646-id tokenizer).
    args.vocab_size = max(args.vocab_size or 0, tokenizer.vocab_size)
    return tokenizer
