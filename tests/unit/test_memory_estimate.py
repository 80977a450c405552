"""The dry run's memory estimate equals Megatron-LM 0.16.1's theoretical memory report
(megatron/training/theoretical_memory_usage.py) on known configs, plus the NITP head's share.

The expected numbers are written out by hand for each config from the formulas (Korthikanti et
al. 2022 Table 2 for activations; 18 bytes per parameter, or 6 + 12 / DP with the distributed
optimizer), not by calling the module under test.
"""

import pytest

from megatron_nitp.models.memory_estimate import (
    layout_parameters,
    megatron_activation,
    megatron_weight_and_optimizer,
    memory_estimate,
    nitp_overhead,
)
from megatron_nitp.models.param_count import count_parameters
from megatron_nitp.training.run_config import RunConfig
from tests.helpers import suite_parse_args


def run(argv, padded_vocab_size, data_parallel_size):
    """The RunConfig of these flags (the suite's explicit model family unless they say
    otherwise), with the two values resolution would derive from a tokenizer and a world size."""
    return RunConfig.freeze(suite_parse_args(argv)).replace(
        padded_vocab_size=padded_vocab_size, data_parallel_size=data_parallel_size)


# GPT-3 175B as Megatron-LM's script trains it, on 1024 GPUs (DP 8).
GPT3 = ["--num-layers", "96", "--hidden-size", "12288", "--num-attention-heads", "96",
        "--kv-channels", "128", "--ffn-hidden-size", str(4 * 12288), "--seq-length", "2048",
        "--max-position-embeddings", "2048", "--micro-batch-size", "1",
        "--normalization", "LayerNorm", "--no-swiglu", "--position-embedding-type",
        "learned_absolute", "--add-bias-linear", "--tensor-model-parallel-size", "8",
        "--pipeline-model-parallel-size", "16"]


def gpt3(*flags):
    return run(GPT3 + list(flags), padded_vocab_size=51200, data_parallel_size=8)


def test_gpt3_weights_and_optimizer_as_megatron_lm():
    d, L = 12288, 96
    layer = 2 * d * (4 * d + 2) + 2 * d * d * 2  # MLP + 2 LayerNorms, then Q, K, V, O
    block = L * layer + 2 * d  # + the final LayerNorm
    shard = (block / 16 + d * 51200) / 8  # first stage: 6 layers + the (tied) embedding
    params, nbytes = megatron_weight_and_optimizer(gpt3())
    assert params == pytest.approx(shard, rel=1e-12)
    assert nbytes == pytest.approx(18 * shard, rel=1e-12)
    _, with_dist_opt = megatron_weight_and_optimizer(gpt3("--use-distributed-optimizer"))
    assert with_dist_opt == pytest.approx((6 + 12 / 8) * shard, rel=1e-12)
    assert shard / 1e9 == pytest.approx(1.44, abs=0.01)  # 1.44B on each first-stage rank


def test_gpt3_activation_without_sequence_parallel_as_megatron_lm():
    s, b, d, L, tp, pp = 2048, 1, 12288, 96, 8, 16
    per_layer = s * b * d * (10 + 24 / tp)
    total = per_layer * L + 8 * s * b * pp + s * b * d * pp
    total *= min(1, 1536 / pp)  # 1536 microbatches: the pipeline is full
    expected = total * 1.05  # PP > 1: no output-layer term on the first stage
    assert megatron_activation(gpt3(), num_microbatches=1536) == pytest.approx(expected,
                                                                              rel=1e-12)
    # Fewer microbatches than stages: only that many are in flight.
    assert megatron_activation(gpt3(), num_microbatches=4) == pytest.approx(
        expected * 4 / 16, rel=1e-12)


# Llama-3 8B-like with SP + selective recompute (Megatron-LM's other formula), TP 2, PP 1.
LLAMA = ["--num-layers", "32", "--hidden-size", "4096", "--num-attention-heads", "32",
         "--group-query-attention", "--num-query-groups", "8", "--kv-channels", "128",
         "--ffn-hidden-size", "14336", "--seq-length", "8192", "--micro-batch-size", "1",
         "--normalization", "RMSNorm", "--swiglu", "--untie-embeddings-and-output-weights",
         "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "1",
         "--sequence-parallel", "--recompute-granularity", "selective",
         "--use-distributed-optimizer"]


def llama(*flags):
    return run(LLAMA + list(flags), padded_vocab_size=128384, data_parallel_size=4)


def test_llama_weights_and_activation_with_sequence_parallel_as_megatron_lm():
    d, f, L, V, tp = 4096, 14336, 32, 128384, 2
    attention = 2 * d * d * (1 + 8 / 32) * (32 * 128 / d)
    layer = 2 * d * (f * 1.5 + 1) + attention
    block = L * layer + d
    shard = (block + d * V) / tp + d * V / tp  # PP 1 and untied: the output layer too
    params, nbytes = megatron_weight_and_optimizer(llama())
    assert params == pytest.approx(shard, rel=1e-12)
    assert nbytes == pytest.approx((6 + 12 / 4) * shard, rel=1e-12)
    s, b = 8192, 1
    act = s * b * d * (18 + 4 * f / d) * L + 8 * s * b + s * b * d
    act += s * b * d * 4 * (1 + V / d)  # PP 1: the output layer's input and the loss
    assert megatron_activation(llama()) == pytest.approx(act / tp, rel=1e-12)


def test_interleaved_schedule_penalty_as_megatron_lm():
    cfg = gpt3("--num-layers-per-virtual-pipeline-stage", "2")  # 6 layers/stage -> VPP 3
    plain = megatron_activation(gpt3(), num_microbatches=None) / 1.05
    # Megatron-LM: x (1 + (pp - 1) / (pp * vpp)) instead of the in-flight discount.
    assert megatron_activation(cfg) == pytest.approx(plain * (1 + 15 / 48) * 1.05, rel=1e-12)


def test_moe_layers_count_every_expert_as_megatron_lm_does():
    cfg = run(["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
               "--kv-channels", "16", "--ffn-hidden-size", "256", "--num-experts", "8",
               "--moe-ffn-hidden-size", "32", "--moe-shared-expert-intermediate-size", "48",
               "--moe-layer-freq", "([0]+[1]*3)", "--seq-length", "16", "--micro-batch-size",
               "1", "--vocab-size", "1000", "--swiglu", "--normalization", "RMSNorm",
               "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
               "--expert-model-parallel-size", "4"], padded_vocab_size=1024,
              data_parallel_size=4)
    d = 64
    attention = 2 * d * d * 2
    dense = 2 * d * (256 * 1.5 + 1) + attention
    moe = 2 * d * (32 * 8 * 1.5 + 48 * 1.5 + 1) + attention
    expected = dense + 3 * moe + d + d * 1024
    assert megatron_weight_and_optimizer(cfg)[0] == pytest.approx(expected, rel=1e-12)
    # This layout's own per-rank count divides the routed experts by EP.
    counts = count_parameters(cfg)
    routed = 3 * 8 * 3 * d * 32
    assert counts["routed_experts"] == routed
    rank = layout_parameters(cfg, counts)
    assert rank == pytest.approx(counts["total"] - routed + routed / 4, rel=1e-12)


def test_nitp_head_overhead():
    cfg = llama("--nitp", "--nitp-head-ffn-multiplier", "4")
    d, tp, s = 4096, 2, 8192
    head = nitp_overhead(cfg)
    assert head["params_per_rank"] == 3 * 4 * d * d / tp
    assert head["weight_and_optimizer_bytes"] == pytest.approx((6 + 12 / 4) * 3 * 4 * d * d / tp)
    # stored for backward: input, gate/up, SwiGLU output (bf16), TP-sharded; + the target z
    assert head["activation_bytes"] == 2 * s * d * (1 + 12) / tp + 2 * s * d
    recompute = nitp_overhead(llama("--nitp", "--nitp-head-recompute"))
    assert recompute["activation_bytes"] == 2 * s * d / tp + 2 * s * d
    for off in (llama(), llama("--nitp", "--nitp-no-projector"),
                llama("--nitp", "--nitp-loss-type", "generic_cosine")):
        assert nitp_overhead(off)["params_per_rank"] == 0
    total = memory_estimate(cfg)
    assert total["nitp_params_per_rank"] == head["params_per_rank"]
    assert total["total_bytes"] == total["weight_and_optimizer_bytes"] + total["activation_bytes"]
