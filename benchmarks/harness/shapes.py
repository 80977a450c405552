"""The benchmarked shapes and the parse_args of one variant (NTP, NITP, NITP + head recompute)."""

import os

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
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


def shape_table(micro=False, full=False, shapes=None):
    """{name: (config file, overrides)}: MICRO, or SHAPES reduced (CPU) or as configured (--full),
    restricted to `shapes` (comma-separated) when given."""
    if micro:
        return dict(MICRO)
    # --full: the paper shape itself, one GPU (no overrides but the layout).
    table = {name: (config_file, {} if full else reduced)
             for name, (config_file, reduced) in SHAPES.items()}
    if shapes:
        wanted = shapes.split(",")
        unknown = set(wanted) - set(table)
        if unknown:
            raise SystemExit(f"error: --shapes: unknown {sorted(unknown)}; known {list(table)}")
        table = {k: table[k] for k in wanted}
    return table


def variant_args(config_file, overrides, variant, device, pp=1):
    """parse_args of the paper config with the reduced shape and a one-device layout."""
    from megatron_nitp.models.builder import padded_vocab_size
    from megatron_nitp.training.arguments import parse_args
    from megatron_nitp.training.run_config import RunConfig

    # On a GPU the default: Transformer Engine when it imports, else the local spec.
    argv = ["--config", os.path.join(CONFIGS, config_file),
            "--nitp" if variant != "ntp" else "--no-nitp"]
    if device != "cuda":
        argv += ["--transformer-impl", "local"]
    if variant == "nitp_recompute":
        argv.append("--nitp-head-recompute")
    args = RunConfig.freeze(parse_args(argv)).replace(**overrides)
    # One device (or PP=2 for the pipeline run): no TP/EP/DP, so no distributed optimizer.
    # CPU: fp32 (bf16 matmuls are emulated and slow), no grouped GEMM.
    cpu = {} if device == "cuda" else dict(bf16=False, moe_grouped_gemm=False)
    return args.replace(
        max_position_embeddings=args.seq_length, tensor_model_parallel_size=1,
        pipeline_model_parallel_size=pp, expert_model_parallel_size=1,
        use_distributed_optimizer=False, global_batch_size=args.micro_batch_size, **cpu,
        padded_vocab_size=padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by, 1))
