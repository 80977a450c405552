"""Where megatron-nitp's defaults meet Megatron-LM 0.16.1's.

Every flag the two share has Megatron-LM's default (tests/unit/test_megatron_defaults.py holds
Megatron-LM's values, each with its source line). What Megatron-LM requires is required here too
(one line naming the flag, before any work). The few deliberate differences are DEVIATIONS: each
with its reason, listed in the README, and said in one notice line when a run relies on it (the
flag was not given on the command line or in a --config file).
"""

# dest -> the flag Megatron-LM 0.16.1 requires (validate_args: required_args, micro_batch_size,
# seq_length via encoder_seq_length; --lr: no default, its scheduler needs one).
REQUIRED = (
    ("num_layers", "--num-layers"),
    ("hidden_size", "--hidden-size"),
    ("num_attention_heads", "--num-attention-heads"),
    ("seq_length", "--seq-length"),
    ("micro_batch_size", "--micro-batch-size"),
    ("lr", "--lr"),
)

# dest -> (flag, Megatron-LM 0.16.1's default, ours, why). A run that does not give the flag gets
# ours and one notice line naming it.
DEVIATIONS = {
    "transformer_impl": (
        "--transformer-impl", "transformer_engine",
        "transformer_engine where it is importable on a GPU, else local",
        "runs without Transformer Engine (CPU) instead of failing"),
    "max_position_embeddings": (
        "--max-position-embeddings", "none (required)", "--seq-length",
        "positions beyond the training length are never used"),
    "tokenizer_type": (
        "--tokenizer-type", "none (required)", "NullTokenizer (ids 0..--vocab-size - 1)",
        "mock-data runs need no tokenizer files"),
}


def required_errors(args):
    for dest, flag in REQUIRED:
        if getattr(args, dest, None) is None:
            yield f"{flag}: required (Megatron-LM 0.16.1 has no default for it either)"
    if args.train_iters is None and args.train_samples is None:
        yield ("--train-iters: required, or --train-samples (Megatron-LM 0.16.1 has no default "
               "training length)")
    # Tokenizer files without --tokenizer-type: our NullTokenizer default would ignore them.
    explicit = getattr(args, "explicit_dests", None)
    if explicit is not None and "tokenizer_type" not in explicit:
        for dest in ("vocab_file", "merge_file", "tokenizer_model"):
            if getattr(args, dest, None):
                yield (f"--{dest.replace('_', '-')}: needs --tokenizer-type (Megatron-LM 0.16.1 "
                       "has no default tokenizer; e.g. GPT2BPETokenizer for GPT-2's vocab.json "
                       "and merges.txt)")
                break


def deviation_notices(args, resolved: dict):
    """One line per deviation the run relies on; `resolved` maps dest -> the value in use."""
    explicit = getattr(args, "explicit_dests", None)
    if explicit is None:  # args not from parse_args (a saved run config): nothing to say
        return
    for dest, (flag, theirs, _ours, why) in DEVIATIONS.items():
        if dest in explicit or dest not in resolved:
            continue
        yield (f"notice: {flag} not given: {resolved[dest]} (Megatron-LM: {theirs}; here: {why})")


def default_ffn_hidden_size(hidden_size: int, swiglu: bool) -> int:
    """Megatron-LM's validate_args: 4h, or with SwiGLU 2/3 of it rounded down to a multiple of
    64 (two input projections keep the parameter count near the GeLU MLP's)."""
    if swiglu:
        return int((4 * hidden_size * 2 / 3) / 64) * 64
    return 4 * hidden_size


# Megatron-LM's validate_args: --data-path without --split gets this, with a warning.
LEGACY_SPLIT = "969, 30, 1"
