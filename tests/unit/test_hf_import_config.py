"""hf-to-megatron's run configuration (convert/hf_import.plan_import): the HF architecture as the
parser's defaults under the user's flags, frozen; a flag that contradicts config.json refused."""

import json

import pytest

from megatron_nitp.convert import ConversionError
from megatron_nitp.training.run_config import FrozenConfigError, RunConfig


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny LlamaForCausalLM directory written by hand (config.json + safetensors)."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("hf") / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(
        architectures=["LlamaForCausalLM"], vocab_size=301, hidden_size=64,
        intermediate_size=96, num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_theta=500000.0)))
    h, f, kv = 64, 96, 2 * 16
    shapes = {"model.embed_tokens.weight": (301, h), "lm_head.weight": (301, h),
              "model.norm.weight": (h,)}
    for i in range(5):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    g = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()},
              str(d / "model.safetensors"))
    return d


def _plan(d, *extra, tp=1):
    from megatron_nitp.convert.hf_import import plan_import

    return plan_import(str(d), str(d.parent / "out"), tp, 1, 1, list(extra))


def test_architecture_is_typed_and_frozen_and_derived_defaults_follow_it(llama_dir):
    run = _plan(llama_dir, "--seq-length", "32", tp=2).run
    assert isinstance(run, RunConfig)
    assert (run.num_layers, run.hidden_size, run.ffn_hidden_size, run.num_query_groups,
            run.kv_channels, run.rotary_base, run.norm_epsilon) == (5, 64, 96, 2, 16, 500000, 1e-6)
    assert run.untie_embeddings_and_output_weights and not run.add_bias_linear
    assert run.tensor_model_parallel_size == 2 and run.padded_vocab_size == 302
    assert run.nitp_target_layer == 1  # round(0.2 * 5): derived from the HF depth
    with pytest.raises(FrozenConfigError):
        run.num_layers = 3


def test_user_flags_win_where_the_import_only_chooses(llama_dir):
    run = _plan(llama_dir, "--hidden-dropout", "0.1", "--nitp", "--nitp-target-layer", "2").run
    assert run.hidden_dropout == 0.1 and run.attention_dropout == 0.0
    assert run.nitp_config.enabled and run.nitp_config.target_layer == 2
    # the same value as config.json is not a conflict
    assert _plan(llama_dir, "--num-layers", "5", "--norm-epsilon", "1e-6").run.num_layers == 5


@pytest.mark.parametrize("flags, named", [
    (["--num-layers", "4"], "--num-layers 4"),
    (["--norm-epsilon", "1e-5"], "--norm-epsilon 1e-05"),
    (["--rotary-base", "10000"], "--rotary-base 10000"),
    (["--tokenizer-type", "GPT2BPETokenizer"], "--tokenizer-type GPT2BPETokenizer"),
])
def test_a_flag_against_config_json_is_refused_in_one_line(llama_dir, flags, named):
    with pytest.raises(ConversionError) as e:
        _plan(llama_dir, *flags)
    assert str(e.value).startswith(named) and "\n" not in str(e.value)


def test_nitp_head_json_gives_defaults_that_flags_override(llama_dir, tmp_path):
    import shutil

    d = tmp_path / "with_head"
    shutil.copytree(llama_dir, d)
    (d / "nitp_head.json").write_text(json.dumps(
        {"target_layer": 3, "shift": 1, "loss_type": "mse", "loss_weight": 0.5,
         "head_ffn_multiplier": 2, "stop_grad": False}))
    nitp = _plan(d, "--nitp-loss-weight", "0.25").nitp
    assert (nitp.enabled, nitp.target_layer, nitp.loss_type, nitp.loss_weight, nitp.stop_grad) \
        == (True, 3, "mse", 0.25, False)
    assert not _plan(d, "--no-nitp").nitp.enabled  # --no-nitp: the head file is not read


def test_parse_args_defaults_hook_rejects_an_unknown_dest():
    from megatron_nitp.training.arguments import parse_args

    args = parse_args([], defaults={"hidden_size": 96, "swiglu": True})
    assert args.ffn_hidden_size == 256 and "hidden_size" not in args.explicit_dests
    with pytest.raises(ValueError, match="no_such_dest"):
        parse_args([], defaults={"no_such_dest": 1})
