"""count_parameters must equal the parameter count of a real megatron-core GPTModel.

The tiny models are built in a subprocess (building needs torch.distributed and model-parallel
state, which must not leak into the rest of the test session). Each case exercises one part of
the formula: GQA + tied embedding, MoE with a dense first layer + shared expert + untied output,
LayerNorm + linear biases + learned positions, and vocabulary padding under TP.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from megatron_nitp.models.param_count import count_parameters, moe_layer_pattern, padded_vocab_size

# Each case's flags, parsed as a run's (tests/helpers.suite_parse_args: the suite's explicit
# RMSNorm / SwiGLU / rope / no-bias family unless the case's own flags say otherwise).
_SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "96",
          "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
          "--vocab-size", "1000"]
CASES = {
    "dense_gqa_tied": _SHAPE + ["--kv-channels", "24"],
    "moe_dense_first_shared_untied": [
        "--num-layers", "3", *_SHAPE[2:], "--kv-channels", "16", "--num-experts", "6",
        "--moe-router-topk", "2", "--moe-ffn-hidden-size", "40",
        "--moe-shared-expert-intermediate-size", "24", "--moe-layer-freq", "([0]*1+[1]*2)",
        "--untie-embeddings-and-output-weights"],
    "layernorm_bias_learned_pos_gelu": [
        "--num-layers", "2", "--hidden-size", "32", "--ffn-hidden-size", "80",
        "--num-attention-heads", "2", "--vocab-size", "500", "--normalization", "LayerNorm",
        "--add-bias-linear", "--no-swiglu", "--position-embedding-type", "learned_absolute",
        "--max-position-embeddings", "64", "--num-experts", "4", "--moe-router-topk", "2",
        "--moe-ffn-hidden-size", "16", "--moe-layer-freq", "2"],
    # Qwen3-like: GQA, per-head q/k RMSNorm (hd each), untied output.
    "qwen3_qk_layernorm_untied": _SHAPE + ["--kv-channels", "24", "--qk-layernorm",
                                           "--untie-embeddings-and-output-weights"],
    # Qwen2-like QKV-only biases; LayerNorm q/k norms carry a bias too.
    "qkv_bias_layernorm_qk_norm": [
        "--num-layers", "2", "--hidden-size", "32", "--ffn-hidden-size", "64",
        "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
        "--vocab-size", "500", "--normalization", "LayerNorm", "--add-qkv-bias",
        "--qk-layernorm", "--num-experts", "4", "--moe-router-topk", "2",
        "--moe-ffn-hidden-size", "16", "--moe-layer-freq", "2"],
}


def parsed(name, *flags):
    from tests.helpers import suite_parse_args

    return suite_parse_args(CASES[name] + list(flags))


_BUILD = textwrap.dedent("""
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    import torch, torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_config import TransformerConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron_nitp.models.param_count import moe_layer_pattern, padded_vocab_size
    from tests.helpers import suite_parse_args as parse_args
    dist.init_process_group("gloo", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    out = {}
    # The parsed flags mapped onto megatron-core by hand (independent of our builder).
    for name, argv in json.loads(sys.argv[1]).items():
        a = parse_args(argv)
        kw = dict(num_layers=a.num_layers, hidden_size=a.hidden_size,
                  ffn_hidden_size=a.ffn_hidden_size, num_attention_heads=a.num_attention_heads,
                  num_query_groups=a.num_query_groups if a.group_query_attention else None,
                  kv_channels=a.kv_channels, normalization=a.normalization,
                  gated_linear_unit=a.swiglu, add_bias_linear=a.add_bias_linear,
                  add_qkv_bias=a.add_qkv_bias, qk_layernorm=a.qk_layernorm,
                  use_cpu_initialization=True)
        if a.num_experts:
            kw.update(num_moe_experts=a.num_experts, moe_router_topk=a.moe_router_topk,
                      moe_ffn_hidden_size=a.moe_ffn_hidden_size,
                      moe_shared_expert_intermediate_size=a.moe_shared_expert_intermediate_size,
                      moe_layer_freq=moe_layer_pattern(a.moe_layer_freq, a.num_layers))
        cfg = TransformerConfig(**kw)
        spec = get_gpt_decoder_block_spec(cfg, use_transformer_engine=False,
                                          normalization=cfg.normalization)
        model = GPTModel(cfg, spec, vocab_size=padded_vocab_size(
                             a.vocab_size, a.make_vocab_size_divisible_by),
                         max_sequence_length=a.max_position_embeddings,
                         position_embedding_type=a.position_embedding_type,
                         share_embeddings_and_output_weights=not
                         a.untie_embeddings_and_output_weights)
        out[name] = sum(p.numel() for p in model.parameters())
    # The same flags through our CLI and builder (proves the flags reach megatron-core).
    from megatron_nitp.models.builder import build_model_chunks, transformer_config_from_args
    from megatron_nitp.nitp.config import NITPConfig
    from megatron_nitp.parallel.distributed import (destroy_distributed_model_parallel,
                                                    initialize_distributed)
    ps.destroy_model_parallel()
    initialize_distributed(1, 1)  # with the CPU compatibility layer the builder relies on
    for name, argv in json.loads(sys.argv[2]).items():
        args = parse_args(argv)
        args.padded_vocab_size = padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by)
        (chunk,) = build_model_chunks(args, transformer_config_from_args(args), NITPConfig.from_args(args))
        out[name] = sum(p.numel() for n, p in chunk.named_parameters() if "nitp" not in n)
    print("RESULT" + json.dumps(out))
""")

FAMILY_ARGV = {
    "cli_qk_layernorm_qkv_bias_rotary_percent": [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--group-query-attention", "--num-query-groups", "2", "--vocab-size", "1000",
        "--qk-layernorm", "--add-qkv-bias", "--rotary-percent", "0.5",
        "--untie-embeddings-and-output-weights", "--transformer-impl", "local"],
    "cli_mla_full_rank_q_add_bias": [
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--vocab-size", "128", "--multi-latent-attention", "--kv-lora-rank", "16",
        "--qk-head-dim", "8", "--qk-pos-emb-head-dim", "4", "--v-head-dim", "8",
        "--add-bias-linear", "--transformer-impl", "local"],
    "cli_mla_q_lora_qk_layernorm_moe": [
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--vocab-size", "128", "--multi-latent-attention", "--q-lora-rank", "12",
        "--kv-lora-rank", "16", "--qk-head-dim", "8", "--qk-pos-emb-head-dim", "4",
        "--v-head-dim", "6", "--qk-layernorm", "--num-experts", "4",
        "--moe-shared-expert-intermediate-size", "16", "--moe-layer-freq", "([0]+[1])",
        "--transformer-impl", "local"],
    "cli_add_bias_linear_moe_sigmoid": [
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--vocab-size", "500", "--add-bias-linear", "--num-experts", "4",
        "--moe-router-score-function", "sigmoid", "--moe-router-enable-expert-bias",
        "--moe-layer-freq", "([0]+[1])",
        "--transformer-impl", "local"],
}


@pytest.fixture(scope="module")
def built_counts():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500),
               PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(CASES),
                           json.dumps(FAMILY_ARGV)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("name", sorted(CASES))
def test_count_equals_built_megatron_model(name, built_counts):
    assert count_parameters(parsed(name))["total"] == built_counts[name]


@pytest.mark.parametrize("name", sorted(FAMILY_ARGV))
def test_count_equals_model_built_from_family_flags(name, built_counts):
    from tests.helpers import suite_parse_args as parse_args

    assert count_parameters(parse_args(FAMILY_ARGV[name]))["total"] == built_counts[name]


def test_family_flags_change_the_count():
    """qk-layernorm adds 2 x head_dim per layer; --add-bias-linear implies QKV biases."""
    from tests.helpers import suite_parse_args as parse_args

    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--vocab-size", "128"]
    n0 = count_parameters(parse_args(base))["total"]
    assert count_parameters(parse_args(base + ["--qk-layernorm"]))["total"] == n0 + 2 * 2 * 16
    assert count_parameters(parse_args(base + ["--add-qkv-bias"]))["total"] == n0 + 2 * 3 * 64
    assert count_parameters(parse_args(base + ["--disable-bias-linear"]))["total"] == n0
    with_bias = count_parameters(parse_args(base + ["--add-bias-linear"]))["total"]
    # qkv 3d + proj d + fc1 2f + fc2 d, per layer (f = 4d, SwiGLU)
    assert with_bias == n0 + 2 * (3 * 64 + 64 + 2 * 256 + 64)


def test_active_counts_topk_routed_experts_only():
    a = parsed("moe_dense_first_shared_untied")
    c = count_parameters(a)
    one_expert = 3 * a.hidden_size * a.moe_ffn_hidden_size
    unused = 2 * (a.num_experts - a.moe_router_topk) * one_expert  # 2 MoE layers
    assert c["total"] - c["active"] == unused


def test_nitp_head_is_twelve_d_squared_and_not_in_total():
    with_head = count_parameters(parsed("dense_gqa_tied", "--nitp"))
    assert with_head["nitp_head"] == 12 * 64 * 64
    assert with_head["total"] == count_parameters(parsed("dense_gqa_tied"))["total"]
    assert count_parameters(parsed("dense_gqa_tied", "--nitp",
                                   "--nitp-no-projector"))["nitp_head"] == 0


def test_vocab_padding_follows_megatron_divisor_times_tp():
    assert padded_vocab_size(151646, 128, 1) == 151680
    assert padded_vocab_size(151936, 128, 2) == 152064
    assert padded_vocab_size(152064, 128, 4) == 152064
    assert padded_vocab_size(152064, 128, 8) == 152576


def test_moe_layer_pattern_accepts_megatron_forms():
    assert moe_layer_pattern("([0]*1+[1]*3)", 4) == [0, 1, 1, 1]
    assert moe_layer_pattern(2, 4) == [1, 0, 1, 0]
    assert moe_layer_pattern([0, 1], 2) == [0, 1]
    with pytest.raises(ValueError):
        moe_layer_pattern("__import__('os')", 4)
