"""Training FLOPs per token (paper App. G) and the flops_report tool's output."""

import contextlib
import io
import json
import os
import sys

import pytest

from megatron_nitp.nitp.flops import paper_g3_flops, training_flops_per_token
from tests.helpers import suite_parse_args as parse_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

import flops_report  # noqa: E402

NINE_B = os.path.join(REPO, "examples", "configs", "moe_9b_a1b.yaml")
PAPER_OVERHEAD_PCT = 2.3  # App. G.3, eq. (31)


def nine_b(*flags):
    return parse_args(["--config", NINE_B, *flags])


def test_paper_g3_worked_example_is_reproduced():
    r = paper_g3_flops(d=1280, de=640, k=9, L=24, V=152064)
    assert r["nitp_flops_per_token"] == pytest.approx(1.18e8, rel=0.005)
    assert r["baseline_flops_per_token"] == pytest.approx(5.06e9, rel=0.002)
    assert r["overhead_pct"] == pytest.approx(PAPER_OVERHEAD_PCT, abs=0.05)


def test_9b_config_overhead_within_0p2_points_of_the_paper():
    r = training_flops_per_token(nine_b())
    assert abs(r["overhead_pct"] - PAPER_OVERHEAD_PCT) <= 0.2
    assert r["nitp_head_flops_per_token"] == 72 * 1280 ** 2
    assert r["nitp_loss_flops_per_token"] == 18 * 1280


def test_all_moe_9b_equals_equation_28_exactly():
    # With every layer MoE, the layer-exact count is App. G's formula term by term
    # (8 heads / 4 KV heads of d/8 make the projections exactly 3 d^2).
    r = training_flops_per_token(nine_b("--moe-layer-freq", "1"))
    assert r["baseline_flops_per_token"] == paper_g3_flops(1280, 640, 9, 24, 152064)[
        "baseline_flops_per_token"]


def test_head_variants_change_only_the_head_term():
    base = training_flops_per_token(nine_b())
    recompute = training_flops_per_token(nine_b("--nitp-head-recompute"))
    assert recompute["nitp_head_flops_per_token"] == 96 * 1280 ** 2  # forward runs twice
    for flags in (["--nitp-no-projector"], ["--nitp-loss-type", "generic_cosine"]):
        r = training_flops_per_token(nine_b(*flags))
        assert r["nitp_head_flops_per_token"] == 0 and r["nitp_head_params"] == 0
        assert r["baseline_flops_per_token"] == base["baseline_flops_per_token"]
    wide = training_flops_per_token(nine_b("--nitp-head-ffn-multiplier", "2"))
    assert wide["nitp_head_flops_per_token"] == 36 * 1280 ** 2


def test_pipeline_carry_counts_boundaries_when_the_target_is_not_on_the_last_chunk():
    assert training_flops_per_token(nine_b())["pipeline_carry_boundaries"] == 0
    r = training_flops_per_token(nine_b("--pipeline-model-parallel-size", "4"))
    assert r["pipeline_carry_boundaries"] == 3
    assert r["pipeline_carry_bytes_per_token_per_boundary"] == 1280 * 2  # bf16
    assert r["pipeline_carry_bytes_per_microbatch_per_boundary"] == 8192 * 1280 * 2
    # Target on the last stage (layer 20 of 24, PP2 -> stage 1): nothing to carry.
    r = training_flops_per_token(nine_b("--pipeline-model-parallel-size", "2",
                                        "--nitp-target-layer", "20"))
    assert r["pipeline_carry_boundaries"] == 0
    # Interleaved: 2 stages x 3 virtual chunks of 4 layers; layer 5 is in chunk 1 of 6.
    r = training_flops_per_token(nine_b("--pipeline-model-parallel-size", "2",
                                        "--num-layers-per-virtual-pipeline-stage", "4"))
    assert r["pipeline_carry_boundaries"] == 5


def run_report(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert flops_report.main(list(argv)) == 0
    return out.getvalue()


def test_json_report_schema_for_all_examples():
    records = json.loads(run_report("--all-examples", "--paper-g3", "--json"))
    names = [r["name"] for r in records]
    assert len(records) == 10 and "moe_9b_a1b" in names and "qwen3_like_nitp" in names and names[-1].startswith("paper_app_g3")
    for r in records:
        assert isinstance(r["name"], str)
        for key in ("baseline_flops_per_token", "nitp_flops_per_token"):
            assert isinstance(r[key], int) and r[key] > 0
        assert r["overhead_pct"] == pytest.approx(
            100 * r["nitp_flops_per_token"] / r["baseline_flops_per_token"])
        assert 1.0 < r["overhead_pct"] < 3.0
    g3 = records[-1]
    assert abs(g3["overhead_pct"] - PAPER_OVERHEAD_PCT) <= 0.2


def test_markdown_report_for_a_config_with_flags():
    text = run_report("--config", NINE_B, "--pipeline-model-parallel-size", "2")
    lines = text.strip().splitlines()
    assert lines[0].startswith("| config |") and len(lines) == 3
    assert lines[2].startswith("| moe_9b_a1b |") and "2.28%" in lines[2]
    assert "1 boundaries x 2560 B/token" in lines[2]


@pytest.mark.parametrize("extra,k,counts,boundaries", [
    ([], 1, [2, 2], 1),
    ([], 3, [2, 2], 0),
    (["--decoder-first-pipeline-num-layers", "1"], 1, [1, 3], 1),
    (["--decoder-first-pipeline-num-layers", "1"], 2, [1, 3], 0),
    (["--decoder-last-pipeline-num-layers", "1"], 3, [3, 1], 1),
    (["--num-virtual-stages-per-pipeline-rank", "2"], 3, [1, 1, 1, 1], 3),
    (["--num-virtual-stages-per-pipeline-rank", "2"], 4, [1, 1, 1, 1], 0),
    (["--pipeline-model-parallel-layout", "Et|t|tt|L"], 3, [1, 1, 2, 0], 3),
])
def test_pipeline_carry_follows_uneven_splits(extra, k, counts, boundaries):
    # The equivalence suite checks megatron-core builds these same splits (test_equivalence.py).
    from megatron_nitp.models.pipeline_layout import chunk_layer_counts
    from megatron_nitp.nitp.flops import training_flops_per_token

    args = parse_args(["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "64", "--nitp", "--pipeline-model-parallel-size", "2",
                       "--nitp-target-layer", str(k), *extra])
    assert chunk_layer_counts(args) == counts
    assert training_flops_per_token(args)["pipeline_carry_boundaries"] == boundaries


# MTP (--mtp-num-layers): each MTP layer = eh_proj (2d -> d) + one layer built like the last
# decoder layer + the shared output layer's logits, in the baseline. Expected numbers below are
# written out from the tiny shapes, not from param_count.
TINY = ["--num-layers", "4", "--hidden-size", "32", "--ffn-hidden-size", "64",
        "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
        "--seq-length", "16", "--vocab-size", "128", "--make-vocab-size-divisible-by", "1",
        "--nitp"]
TINY_DSV3 = ["--num-layers", "4", "--hidden-size", "32", "--ffn-hidden-size", "64",
             "--num-attention-heads", "4", "--seq-length", "16", "--vocab-size", "128",
             "--make-vocab-size-divisible-by", "1", "--untie-embeddings-and-output-weights",
             "--nitp", "--multi-latent-attention", "--q-lora-rank", "16", "--kv-lora-rank", "16",
             "--qk-head-dim", "8", "--qk-pos-emb-head-dim", "4", "--v-head-dim", "8",
             "--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
             "--moe-shared-expert-intermediate-size", "32", "--moe-layer-freq", "[0,1,1,1]"]


def test_mtp_layers_in_the_flops_of_a_tiny_dense_model():
    d, V, s = 32, 128, 16
    attention = d * d + 2 * (2 * 8) * d + d * d  # q, k+v of 2 groups x head dim 8, o
    mlp = 2 * 64 * d + d * 64  # SwiGLU fc1, fc2
    backbone = 6 * 4 * (attention + mlp) + 6 * V * d
    mtp_layer = 6 * (2 * d * d + attention + mlp) + 6 * V * d
    assert mtp_layer == 92160
    plain = training_flops_per_token(parse_args(TINY))
    assert plain["baseline_flops_per_token"] == backbone and plain["mtp_flops_per_token"] == 0
    r = training_flops_per_token(parse_args(TINY + ["--mtp-num-layers", "2"]))
    assert r["mtp_flops_per_token"] == 2 * mtp_layer
    assert r["baseline_flops_per_token"] == backbone + 2 * mtp_layer
    assert r["attention_score_flops_per_token"] == 6 * (4 + 2) * s * 4 * (8 + 8)
    assert r["router_flops_per_token"] == 0
    # NITP's part does not change; its overhead is relative to the run with MTP.
    assert r["nitp_flops_per_token"] == plain["nitp_flops_per_token"] == 72 * d * d + 18 * d
    assert r["overhead_pct"] == pytest.approx(
        100 * (72 * d * d + 18 * d) / (backbone + 2 * mtp_layer))


def test_mtp_layer_of_a_tiny_deepseek_v3_like_moe_is_an_mla_moe_layer():
    d, V, s = 32, 128, 16
    mla = (d * 16 + 4 * (8 + 4) * 16  # q down, q up (nope + rope per head)
           + (16 + 4) * d + 4 * (8 + 8) * 16  # kv down (latent + shared rope key), kv up
           + d * 4 * 8)  # o
    expert = 2 * 32 * d + d * 32
    moe_active = expert + 2 * expert  # shared expert + top-2 of 4 routed
    dense = 2 * 64 * d + d * 64
    backbone = 6 * (4 * mla + dense + 3 * moe_active) + 6 * V * d
    mtp_layer = 6 * (2 * d * d + mla + moe_active) + 6 * V * d  # built like layer 4 (MoE)
    r = training_flops_per_token(parse_args(TINY_DSV3 + ["--mtp-num-layers", "1"]))
    assert r["mtp_flops_per_token"] == mtp_layer == 115968
    assert r["baseline_flops_per_token"] == backbone + mtp_layer
    assert r["router_flops_per_token"] == 6 * (3 + 1) * 4 * d
    assert r["attention_score_flops_per_token"] == 6 * (4 + 1) * s * 4 * ((8 + 4) + 8)


def test_mtp_in_the_flops_report_and_the_dry_run():
    from megatron_nitp.training.dry_run import flops_line

    from tests.helpers import SUITE_MODEL_FLAGS  # the tool parses with the project's defaults

    line = run_report(*SUITE_MODEL_FLAGS, *TINY, "--mtp-num-layers", "2").strip().splitlines()[2]
    assert line.startswith("| command line | ") and "| 4.3e+05 | 1.84e+05 |" in line
    line = run_report(*SUITE_MODEL_FLAGS, *TINY).strip().splitlines()[2]
    assert "| 2.46e+05 | - |" in line  # no MTP
    args = parse_args(TINY + ["--mtp-num-layers", "2"])
    assert "NTP 4.301e+05 incl. MTP 1.843e+05" in flops_line(args)
    assert "incl. MTP" not in flops_line(parse_args(TINY))
