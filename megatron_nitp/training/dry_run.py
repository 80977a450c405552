"""`--dry-run`: plan a job for the target cluster on any machine.

Validation has run (the same checks as a real start, with the layer implementation planned as
the GPU run's when Transformer Engine is not importable here). The dry run needs no GPU, no
Transformer Engine and no data or tokenizer files: what a real run will need that is not here
is listed as "needs ... at run time", not refused. It prints the parameter counts (the same
megatron-core model a run builds, padded vocabulary included), the training FLOPs per token (App.
G, nitp/flops.py), the parallel plan, and a per-rank memory estimate in the manner of
Megatron-LM's theoretical memory report plus the NITP head's.
"""

import os

from ..models.memory_estimate import layout_parameters, memory_estimate, report_lines
from ..models.param_count import count_parameters, padded_vocab_size
from ..models.moe_parallel import expert_tensor_parallel_size, moe_parallel_run_needs
from ..models.pipeline_layout import chunk_layer_counts
from ..nitp.flops import training_flops_per_token
from .output_paths import DIRECTORIES, FILES, probe
from .validation import ConfigError

# Vocabulary assumed when neither --vocab-size nor a readable tokenizer says it (Qwen2/3's).
ASSUMED_VOCAB = 151936


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _prefixes(paths):
    """Prefixes of a Megatron-LM blend ('0.7 a 0.3 b' or 'a b')."""
    paths = list(paths or ())
    if len(paths) > 1 and len(paths) % 2 == 0 and all(_is_number(p) for p in paths[::2]):
        return paths[1::2]
    return paths


def data_needs(args):
    if args.mock_data or args.demo_data:
        return []
    prefixes = _prefixes(args.data_path)
    for split in ("train", "valid", "test"):
        prefixes += _prefixes(getattr(args, f"{split}_data_path", None))
    if not prefixes:
        return ["--data-path PREFIX (or --mock-data): megatron-nitp needs a data source "
                "(Megatron-LM falls back to mock data)"]
    return [f"{p}.bin/.idx (--data-path)" for p in prefixes
            if not (os.path.isfile(p + ".bin") and os.path.isfile(p + ".idx"))]


def _tokenizer_files(args):
    """(flag, path) of the files the tokenizer is built from."""
    if args.tokenizer_type == "NullTokenizer":
        return []
    if args.tokenizer_type == "GPT2BPETokenizer":
        return [("--vocab-file", args.vocab_file), ("--merge-file", args.merge_file)]
    return [("--tokenizer-model", args.tokenizer_model)]


def resolve_vocab(args, needs):
    """The tokenizer's vocabulary size as a run computes it; an assumption, said, without the
    tokenizer files."""
    from ..data.tokenizers import build_tokenizer, tokenizer_options

    files = _tokenizer_files(args)
    missing = [(flag, path) for flag, path in files if not (path and os.path.exists(path))]
    if not missing and not args.demo_data:
        vocab = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size,
                                **tokenizer_options(args)).vocab_size
        return max(args.vocab_size or 0, vocab), None
    for flag, path in missing:
        if path:
            where = ("a local file or directory: hub ids are not downloaded" if "/" in path
                     and not path.startswith(("/", ".")) else "absent here")
            needs.append(f"{flag} {path} ({where})")
    if args.vocab_size:
        return args.vocab_size, None
    return ASSUMED_VOCAB, (f"vocabulary size unknown without the tokenizer: counts assume "
                           f"{ASSUMED_VOCAB} (give --vocab-size for exact ones)")


def output_needs(args):
    needs = []
    for dest, is_dir in [(d, True) for d in DIRECTORIES] + [(f, False) for f in FILES]:
        path = getattr(args, dest, None)
        if path:
            try:
                probe(dest, path, is_dir)
            except ConfigError as e:
                needs.append(f"writable {e}")
    if args.load and not os.path.isdir(args.load):
        needs.append(f"--load {args.load} (absent here: a run resumes from it, or starts fresh "
                     "when it is also --save)")
    return needs


def with_dry_run_vocab(args, needs=None):
    """(the RunConfig with the vocabulary a dry run assumes, that assumption)."""
    from .run_config import RunConfig

    vocab, assumption = resolve_vocab(args, [] if needs is None else needs)
    run = args if isinstance(args, RunConfig) else RunConfig.freeze(args)
    return run.replace(vocab_size=vocab, padded_vocab_size=padded_vocab_size(
        vocab, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)), assumption


def dry_run_counts(args, needs=None):
    """The parameter counts --dry-run prints; returns (counts, assumption about the vocabulary)."""
    run, assumption = with_dry_run_vocab(args, needs)
    return count_parameters(run), assumption


def flops_line(args):
    f = training_flops_per_token(args)
    mtp = f["mtp_flops_per_token"]
    return (f"training FLOPs/token (App. G, matmuls): NTP {f['baseline_flops_per_token']:.4g}"
            + (f" incl. MTP {mtp:.4g}" if mtp else "")
            + f", NITP adds {f['nitp_flops_per_token']:.4g} ({f['overhead_pct']:.2f}%)"
            + f"; attention scores {f['attention_score_flops_per_token']:.4g} not included")


def dry_run(args, nitp_config, log=print):
    needs = list(args.run_time_needs or ()) + moe_parallel_run_needs(args)
    args, assumption = with_dry_run_vocab(args, needs)
    counts = count_parameters(args)
    needs += data_needs(args) + output_needs(args)
    dp = args.data_parallel_size
    num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    log(f"parameters: total {counts['total'] / 1e9:.3f}B ({counts['total']:,}), active "
        f"{counts['active'] / 1e9:.3f}B, NITP head {counts.get('nitp_head', 0) / 1e6:.1f}M (training only)"
        + (f", MTP {counts['mtp'] / 1e6:.1f}M (training only)" if counts.get("mtp") else "")
        + f"; padded vocabulary {args.padded_vocab_size}")
    if assumption:
        log(f"note: {assumption}")
    log(flops_line(args))
    log(f"parallel plan: TP {args.tensor_model_parallel_size} x PP "
        f"{args.pipeline_model_parallel_size} x CP {args.context_parallel_size} x DP {dp}"
        f" (EP {args.expert_model_parallel_size}"
        + (f", expert-TP {expert_tensor_parallel_size(args)}" if args.num_experts else "")
        + ", VPP chunk "
        f"{args.num_layers_per_virtual_pipeline_stage}; layers per chunk "
        f"{chunk_layer_counts(args)}), microbatches/step {num_microbatches}")
    for line in report_lines(memory_estimate(args, num_microbatches),
                             layout_parameters(args, counts)):
        log(line)
    log(f"NITP: {nitp_config.to_dict()}")
    for need in needs:
        log(f"needs at run time: {need}")
    return 0
