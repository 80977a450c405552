"""The attention / MoE-routing flags of the Megatron-LM families reach megatron-core's config,
and bad combinations are one ConfigError naming the flag (models/options.py)."""

import pytest

from megatron_nitp.models.options import option_errors
from tests.helpers import suite_parse_args as parse_args

BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--vocab-size", "128"]
MOE = BASE + ["--num-experts", "4"]


def _config(argv):
    from megatron_nitp.models.builder import transformer_config_from_args

    return transformer_config_from_args(parse_args(argv))


def test_attention_flags_reach_transformer_config():
    c = _config(BASE + ["--qk-layernorm", "--add-qkv-bias"])
    assert (c.qk_layernorm, c.add_qkv_bias, c.add_bias_linear) == (True, True, False)
    c = _config(BASE + ["--add-bias-linear"])
    assert (c.add_bias_linear, c.add_qkv_bias) == (True, True)  # Megatron-LM keeps them in sync
    c = _config(BASE + ["--add-bias-linear", "--disable-bias-linear"])
    assert c.add_bias_linear is False  # last one wins, as argparse does
    assert _config(BASE).add_bias_linear is False  # the project's default is unchanged


def test_routing_flags_reach_transformer_config():
    c = _config(MOE + ["--moe-router-score-function", "sigmoid", "--moe-router-enable-expert-bias",
                       "--moe-router-bias-update-rate", "0.01", "--moe-router-topk-scaling-factor",
                       "2.5", "--moe-router-num-groups", "2", "--moe-router-group-topk", "1",
                       "--moe-z-loss-coeff", "0.001", "--moe-router-dtype", "fp32",
                       "--moe-router-load-balancing-type", "global_aux_loss"])
    assert c.moe_router_score_function == "sigmoid" and c.moe_router_enable_expert_bias
    assert (c.moe_router_bias_update_rate, c.moe_router_topk_scaling_factor) == (0.01, 2.5)
    assert (c.moe_router_num_groups, c.moe_router_group_topk) == (2, 1)
    assert c.moe_z_loss_coeff == 0.001 and c.moe_router_dtype == "fp32"
    assert c.moe_router_load_balancing_type == "global_aux_loss"
    # Off by default (Megatron-LM's: top-k, then softmax); the suite's runs give the switch
    assert _config(MOE).moe_router_pre_softmax is True
    assert _config(MOE + ["--no-moe-router-pre-softmax"]).moe_router_pre_softmax is False
    c = _config(MOE + ["--moe-expert-capacity-factor", "1.5", "--moe-token-drop-policy",
                       "position", "--moe-pad-expert-input-to-capacity"])
    assert (c.moe_expert_capacity_factor, c.moe_token_drop_policy) == (1.5, "position")
    assert c.moe_pad_expert_input_to_capacity


@pytest.mark.parametrize("argv,impl,flag", [
    (BASE + ["--apply-layernorm-1p"], "local", "--apply-layernorm-1p"),
    (BASE + ["--moe-router-enable-expert-bias"], "local", "--moe-router-enable-expert-bias"),
    (BASE + ["--multi-latent-attention", "--group-query-attention"], "local",
     "--multi-latent-attention"),
    (BASE + ["--multi-latent-attention", "--tensor-model-parallel-size", "2"], "local",
     "--multi-latent-attention"),
    (MOE + ["--moe-router-enable-expert-bias"], "local", "--moe-router-enable-expert-bias"),
    (MOE + ["--moe-router-group-topk", "1"], "local", "--moe-router-group-topk"),
    (MOE + ["--moe-router-num-groups", "3", "--moe-router-group-topk", "1"], "local",
     "--moe-router-num-groups 3"),
    (MOE + ["--moe-router-num-groups", "2", "--moe-router-group-topk", "1",
            "--moe-router-topk", "3"], "local", "--moe-router-topk 3"),
    (MOE + ["--moe-pad-expert-input-to-capacity"], "local", "--moe-pad-expert-input-to-capacity"),
    (MOE + ["--moe-router-topk", "1", "--no-moe-router-pre-softmax"], "local",
     "--moe-router-topk 1"),
    (MOE + ["--moe-router-load-balancing-type", "sinkhorn", "--moe-expert-capacity-factor", "1"],
     "local", "--moe-expert-capacity-factor"),
    (MOE + ["--add-bias-linear", "--moe-shared-expert-intermediate-size", "8"], "local",
     "--add-bias-linear"),
])
def test_bad_combination_is_one_line_naming_the_flag(argv, impl, flag):
    errors = list(option_errors(parse_args(argv), impl))
    assert errors and errors[0].startswith(flag) and "\n" not in errors[0]


def test_apply_layernorm_1p_allowed_with_transformer_engine():
    assert not list(option_errors(parse_args(BASE + ["--apply-layernorm-1p"]),
                                  "transformer_engine"))


def test_validation_raises_it_and_ranges_apply():
    from megatron_nitp.training.validation import ConfigError, validate_args

    with pytest.raises(ConfigError, match="^--apply-layernorm-1p"):
        validate_args(parse_args(BASE + ["--apply-layernorm-1p", "--transformer-impl", "local"]),
                      world_size=1)
    with pytest.raises(ConfigError, match="^--rotary-percent 0.0"):
        validate_args(parse_args(BASE + ["--rotary-percent", "0"]), world_size=1)


def test_yaml_spelling_of_the_bias_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("disable-bias-linear: true\nqk-layernorm: true\n")
    args = parse_args(BASE + ["--config", str(cfg)])
    assert args.add_bias_linear is False and args.qk_layernorm is True


def test_flops_count_mla_head_sizes():
    from megatron_nitp.nitp.flops import training_flops_per_token

    mla = parse_args(BASE + ["--seq-length", "16", "--multi-latent-attention", "--kv-lora-rank",
                             "16", "--qk-head-dim", "8", "--qk-pos-emb-head-dim", "4",
                             "--v-head-dim", "6"])
    f = training_flops_per_token(mla)
    assert f["attention_score_flops_per_token"] == 6 * 2 * 16 * 4 * ((8 + 4) + 6)
    # projections come from the MLA parameter count (down/up projections, no QKV matrix)
    from megatron_nitp.models.param_count import count_parameters

    assert f["attention_proj_flops_per_token"] == 6 * count_parameters(mla)["attention"]
    dense = training_flops_per_token(parse_args(BASE + ["--seq-length", "16"]))
    assert dense["attention_score_flops_per_token"] == 12 * 2 * 16 * 4 * 8  # unchanged


def test_expert_tensor_parallel_size_reaches_transformer_config():
    c = _config(MOE + ["--tensor-model-parallel-size", "2", "--expert-model-parallel-size", "2",
                       "--expert-tensor-parallel-size", "1", "--moe-ffn-hidden-size", "8"])
    assert (c.tensor_model_parallel_size, c.expert_tensor_parallel_size) == (2, 1)
    assert _config(MOE + ["--tensor-model-parallel-size", "2"]).expert_tensor_parallel_size == 2


@pytest.mark.parametrize("argv,world,flag", [
    (MOE + ["--tensor-model-parallel-size", "2", "--expert-tensor-parallel-size", "1"], 2,
     "--expert-tensor-parallel-size 1: differs from --tensor-model-parallel-size 2"),
    (MOE + ["--expert-model-parallel-size", "2", "--expert-tensor-parallel-size", "2"], 2,
     "--expert-tensor-parallel-size 2: expert-TP x --expert-model-parallel-size 2"),
    (MOE + ["--expert-model-parallel-size", "2", "--expert-tensor-parallel-size", "3",
            "--moe-ffn-hidden-size", "8"], 6, "--expert-tensor-parallel-size 3: must divide"),
    (MOE + ["--moe-token-dispatcher-type", "flex"], 1, "--moe-token-dispatcher-type flex: needs "
     "CUDA with the deepep backend"),
    (MOE + ["--moe-token-dispatcher-type", "flex", "--moe-flex-dispatcher-backend", "hybridep"],
     1, "--moe-token-dispatcher-type flex: needs CUDA with the hybridep backend"),
])
def test_moe_parallel_flags_refused_in_one_line(argv, world, flag):
    from megatron_nitp.training.validation import ConfigError, validate_args

    with pytest.raises(ConfigError) as e:
        validate_args(parse_args(argv + ["--transformer-impl", "local"]), world_size=world)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value), str(e.value)


def test_expert_flags_on_a_dense_model_are_no_ops_said_once(capsys):
    # Megatron-LM's dense example scripts (Qwen3 8B) give --expert-tensor-parallel-size 1.
    from megatron_nitp.training.validation import validate_args

    validate_args(parse_args(BASE + ["--expert-tensor-parallel-size", "1", "--moe-permute-fusion",
                                     "--transformer-impl", "local"]), world_size=1)
    out = capsys.readouterr().out
    for flag in ("--expert-tensor-parallel-size", "--moe-permute-fusion"):
        assert out.count(f"notice: {flag}: no effect without --num-experts") == 1, out


def test_flex_dispatcher_is_a_run_time_need_of_a_dry_run():
    from megatron_nitp.models.moe_parallel import moe_parallel_errors, moe_parallel_run_needs

    args = parse_args(MOE + ["--moe-token-dispatcher-type", "flex", "--dry-run"])
    assert not list(moe_parallel_errors(args, "local"))
    assert moe_parallel_run_needs(args) == [
        "--moe-token-dispatcher-type flex: CUDA with the deepep backend "
        "(--moe-flex-dispatcher-backend)"]


def test_moe_kernels_switched_off_with_one_notice_on_cpu():
    from megatron_nitp.parallel.speed import speed_settings

    settings, notice = speed_settings(parse_args(MOE + ["--moe-grouped-gemm",
                                                        "--moe-permute-fusion"]))
    assert settings["moe_grouped_gemm"] is False and settings["moe_permute_fusion"] is False
    assert "--moe-grouped-gemm" in notice and "--moe-permute-fusion" in notice
    assert "\n" not in notice
    c = _config(MOE + ["--moe-grouped-gemm", "--moe-permute-fusion"])
    assert c.moe_grouped_gemm is False and c.moe_permute_fusion is False
