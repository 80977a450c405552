"""megatron <-> Hugging Face tensor mapping (megatron_nitp.convert.hf_mapping): pure torch."""

import pytest
import torch

from megatron_nitp.convert import ConversionError
from megatron_nitp.convert.hf_import import compact_layer_freq
from megatron_nitp.convert.hf_mapping import (ModelShape, hf_to_megatron, megatron_to_hf,
                                              merge_qkv, shape_from_hf_config, split_qkv)

D, HEADS, GROUPS, HEAD_DIM, FFN, VOCAB = 16, 4, 2, 4, 24, 40


def shape(**kw):
    base = dict(num_layers=2, hidden_size=D, num_attention_heads=HEADS, num_query_groups=GROUPS,
                head_dim=HEAD_DIM, ffn_hidden_size=FFN, vocab_size=VOCAB, tied=True,
                norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64)
    base.update(kw)
    return ModelShape(**base)


MOE = dict(num_experts=3, moe_layers=[False, True], moe_ffn_hidden_size=8, shared_expert_size=12,
           topk=2, tied=False)


def megatron_state(s: ModelShape, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    qkv_rows = (HEADS + 2 * GROUPS) * HEAD_DIM
    sd = {"embedding.word_embeddings.weight": r(VOCAB, D), "decoder.final_layernorm.weight": r(D)}
    if not s.tied:
        sd["output_layer.weight"] = r(VOCAB, D)
    for i in range(s.num_layers):
        m = f"decoder.layers.{i}."
        sd.update({m + "input_layernorm.weight": r(D), m + "pre_mlp_layernorm.weight": r(D),
                   m + "self_attention.linear_qkv.weight": r(qkv_rows, D),
                   m + "self_attention.linear_proj.weight": r(D, HEADS * HEAD_DIM)})
        if s.num_experts and s.moe_layers[i]:
            sd[m + "mlp.router.weight"] = r(s.num_experts, D)
            for e in range(s.num_experts):
                sd[f"{m}mlp.experts.local_experts.{e}.linear_fc1.weight"] = r(2 * s.moe_ffn_hidden_size, D)
                sd[f"{m}mlp.experts.local_experts.{e}.linear_fc2.weight"] = r(D, s.moe_ffn_hidden_size)
            if s.shared_expert_size:
                sd[m + "mlp.shared_experts.linear_fc1.weight"] = r(2 * s.shared_expert_size, D)
                sd[m + "mlp.shared_experts.linear_fc2.weight"] = r(D, s.shared_expert_size)
        else:
            sd[m + "mlp.linear_fc1.weight"] = r(2 * FFN, D)
            sd[m + "mlp.linear_fc2.weight"] = r(D, FFN)
    return sd


def test_qkv_split_follows_megatrons_per_group_layout():
    s = shape()
    per_group = HEADS // GROUPS
    # Row block b of group g holds the value 100*g + b: q heads are blocks 0..per_group-1.
    blocks = [torch.full((HEAD_DIM, D), 100.0 * g + b) for g in range(GROUPS)
              for b in range(per_group + 2)]
    q, k, v = split_qkv(torch.cat(blocks), s)
    for h in range(HEADS):
        assert q[h * HEAD_DIM, 0] == 100 * (h // per_group) + h % per_group
    for g in range(GROUPS):
        assert k[g * HEAD_DIM, 0] == 100 * g + per_group
        assert v[g * HEAD_DIM, 0] == 100 * g + per_group + 1
    assert torch.equal(merge_qkv(q, k, v, s), torch.cat(blocks))


@pytest.mark.parametrize("kw", [{}, {"tied": False}, MOE, dict(MOE, shared_expert_size=0)],
                         ids=["dense_tied", "dense_untied", "moe_shared", "moe_no_shared"])
def test_megatron_hf_megatron_is_bit_identical(kw):
    s = shape(**kw)
    sd = megatron_state(s)
    hf = megatron_to_hf(sd, s)
    assert ("lm_head.weight" in hf) == (not s.tied)
    assert torch.equal(hf["model.layers.0.mlp.gate_proj.weight"],
                       sd["decoder.layers.0.mlp.linear_fc1.weight"][:FFN])
    back = hf_to_megatron(hf, s)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_expert_gate_trick_is_exact(dtype):
    """Qwen2-MoE: sigmoid(gate(x)) * down(silu(g(x)) * u(x)) with gate = 0 and down = 2 * fc2
    equals megatron's gate-less fc2(silu(g(x)) * u(x)) bit for bit."""
    s = shape(**MOE)
    sd = {k: v.to(dtype) for k, v in megatron_state(s).items()}
    hf = megatron_to_hf(sd, s)
    h = "model.layers.1.mlp."
    x = torch.randn(64, D, dtype=dtype)
    act = torch.nn.functional.silu(x @ hf[h + "shared_expert.gate_proj.weight"].T) * (
        x @ hf[h + "shared_expert.up_proj.weight"].T)
    qwen = torch.sigmoid(x @ hf[h + "shared_expert_gate.weight"].T) * (
        act @ hf[h + "shared_expert.down_proj.weight"].T)
    megatron = act @ sd["decoder.layers.1.mlp.shared_experts.linear_fc2.weight"].T
    assert torch.equal(qwen, megatron)
    assert not torch.count_nonzero(hf[h + "shared_expert_gate.weight"])


def test_qwen2_moe_export_has_zero_qkv_biases_and_llama_none():
    moe = megatron_to_hf(megatron_state(shape(**MOE)), shape(**MOE))
    assert not torch.count_nonzero(moe["model.layers.0.self_attn.q_proj.bias"])
    dense = megatron_to_hf(megatron_state(shape()), shape())
    assert not [k for k in dense if k.endswith("bias")]


def test_fused_transformers5_experts_are_accepted():
    s = shape(**MOE)
    sd = megatron_state(s)
    hf = megatron_to_hf(sd, s)
    h = "model.layers.1.mlp.experts."
    gate_up = torch.stack([torch.cat([hf.pop(f"{h}{e}.gate_proj.weight"),
                                      hf.pop(f"{h}{e}.up_proj.weight")]) for e in range(3)])
    down = torch.stack([hf.pop(f"{h}{e}.down_proj.weight") for e in range(3)])
    hf[h + "gate_up_proj"], hf[h + "down_proj"] = gate_up, down
    back = hf_to_megatron(hf, s)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


@pytest.mark.parametrize("tensor, message", [
    ("model.layers.0.self_attn.q_proj.bias", "attention bias"),
    ("model.layers.1.mlp.shared_expert_gate.weight", "shared_expert_gate"),
    ("model.layers.0.mlp.extra.weight", "cannot represent"),
])
def test_import_rejects_what_megatron_nitp_cannot_express(tensor, message):
    s = shape(**MOE)
    hf = megatron_to_hf(megatron_state(s), s)
    hf[tensor] = torch.ones(4, D)
    with pytest.raises(ConversionError, match=message):
        hf_to_megatron(hf, s)


@pytest.mark.parametrize("config, message", [
    ({"architectures": ["GPT2LMHeadModel"]}, "unknown architecture"),
    ({"architectures": ["Qwen3ForCausalLM"], "attention_bias": True}, "attention_bias"),
    ({"architectures": ["LlamaForCausalLM"], "rope_scaling": {"rope_type": "llama3"}}, "RoPE"),
])
def test_unsupported_hf_configs_are_rejected(config, message):
    base = dict(num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS,
                intermediate_size=FFN, vocab_size=VOCAB, moe_intermediate_size=8,
                num_experts=3, num_experts_per_tok=2)
    with pytest.raises(ConversionError, match=message):
        shape_from_hf_config(dict(base, **config))


def test_qwen2_moe_config_dense_layers_and_sparse_step():
    cfg = dict(architectures=["Qwen2MoeForCausalLM"], num_hidden_layers=4, hidden_size=D,
               num_attention_heads=HEADS, intermediate_size=FFN, vocab_size=VOCAB,
               moe_intermediate_size=8, num_experts=3, num_experts_per_tok=2,
               shared_expert_intermediate_size=12, mlp_only_layers=[0], decoder_sparse_step=1)
    assert shape_from_hf_config(cfg).moe_layers == [False, True, True, True]
    cfg.update(mlp_only_layers=[], decoder_sparse_step=2)
    assert shape_from_hf_config(cfg).moe_layers == [False, True, False, True]


def test_moe_layer_freq_written_as_megatron_would_parse_it():
    assert compact_layer_freq([True] * 4) == "1"  # matches the engine's default
    assert compact_layer_freq([True, False, True, False]) == "2"
    assert compact_layer_freq([False, True, True, True]) == "[0,1,1,1]"


@pytest.mark.parametrize("flags, named", [
    (["--num-experts", "4", "--qk-layernorm", "--moe-shared-expert-intermediate-size", "8"],
     "--qk-layernorm with --moe-shared-expert-intermediate-size"),
    (["--multi-latent-attention"], "--multi-latent-attention"),
    (["--add-qkv-bias"], "--add-qkv-bias"),
    (["--add-bias-linear"], "--add-bias-linear"),
    (["--apply-layernorm-1p"], "--apply-layernorm-1p"),
    (["--rotary-percent", "0.5"], "--rotary-percent 0.5"),
    (["--num-experts", "4", "--moe-router-score-function", "sigmoid",
      "--moe-router-enable-expert-bias"], "--moe-router-enable-expert-bias"),
    (["--num-experts", "4", "--moe-router-topk-scaling-factor", "2.5"],
     "--moe-router-topk-scaling-factor"),
    (["--num-experts", "4", "--moe-router-num-groups", "2", "--moe-router-group-topk", "1"],
     "--moe-router-group-topk"),
])
def test_export_refuses_family_options_llama_qwen2_moe_cannot_express(flags, named):
    from megatron_nitp.convert.hf_mapping import shape_from_args
    from tests.helpers import suite_parse_args as parse_args

    args = parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "128"] + flags)
    args.padded_vocab_size = 128
    with pytest.raises(ConversionError, match="no Hugging Face equivalent") as e:
        shape_from_args(args)
    assert named in str(e.value) and "\n" not in str(e.value)
    # what stays exportable: the fp32 router, the paper's default routing
    base = parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "128", "--num-experts", "4", "--moe-router-dtype", "fp32",
                       "--moe-z-loss-coeff", "0.001"])
    base.padded_vocab_size = 128
    assert shape_from_args(base).num_experts == 4


@pytest.mark.parametrize("flags, arch, norm_topk", [
    ([], "LlamaForCausalLM", False),
    (["--qk-layernorm"], "Qwen3ForCausalLM", False),
    (["--num-experts", "4", "--moe-router-pre-softmax"], "Qwen2MoeForCausalLM", False),
    (["--num-experts", "4", "--no-moe-router-pre-softmax"], "Qwen2MoeForCausalLM", True),
    (["--num-experts", "4", "--qk-layernorm", "--no-moe-router-pre-softmax"],
     "Qwen3MoeForCausalLM", True),
])
def test_export_architecture_per_family(flags, arch, norm_topk):
    from megatron_nitp.convert.hf_mapping import shape_from_args
    from megatron_nitp.training.arguments import parse_args

    args = parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "128", "--normalization", "RMSNorm", "--swiglu",
                       "--position-embedding-type", "rope", "--disable-bias-linear"] + flags)
    args.padded_vocab_size = 128
    s = shape_from_args(args)
    assert (s.architecture, s.norm_topk_prob) == (arch, norm_topk)


MLA = ["--multi-latent-attention", "--kv-lora-rank", "16", "--qk-head-dim", "8",
       "--qk-pos-emb-head-dim", "4", "--v-head-dim", "8", "--qk-layernorm", "--norm-epsilon", "1e-6"]
DS_MOE = MLA + ["--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "8",
                "--moe-shared-expert-intermediate-size", "8", "--moe-layer-freq", "[0,1]",
                "--moe-router-score-function", "sigmoid"]


@pytest.mark.parametrize("flags, named", [
    ([f for f in MLA if f != "--qk-layernorm"], "without --qk-layernorm"),
    (MLA[:-1] + ["1e-5"], "--norm-epsilon 1e-05"),
    ([f if f != "sigmoid" else "softmax" for f in DS_MOE], "--moe-router-score-function softmax"),
    (DS_MOE[:-3] + ["[1,0]", "--moe-router-score-function", "sigmoid"], "--moe-layer-freq"),
    ([f if f != "--moe-shared-expert-intermediate-size" else "--moe-ffn-hidden-size" for f in DS_MOE],
     "--moe-shared-expert-intermediate-size"),
    (DS_MOE + ["--moe-router-num-groups", "2", "--moe-router-group-topk", "2"],
     "--moe-router-group-topk 2"),
])
def test_deepseek_v3_export_refuses_what_it_cannot_express(flags, named):
    from megatron_nitp.convert.hf_mapping import shape_from_args
    from megatron_nitp.training.arguments import parse_args

    args = parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "128", "--normalization", "RMSNorm", "--swiglu",
                       "--position-embedding-type", "rope", "--disable-bias-linear"] + flags)
    args.padded_vocab_size = 128
    with pytest.raises(ConversionError, match="no Hugging Face equivalent") as e:
        shape_from_args(args)
    assert named in str(e.value) and "\n" not in str(e.value)
    args = parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "128", "--normalization", "RMSNorm", "--swiglu",
                       "--position-embedding-type", "rope", "--disable-bias-linear"] + DS_MOE)
    args.padded_vocab_size = 128
    assert shape_from_args(args).architecture == "DeepseekV3ForCausalLM"


def test_qk_norms_map_both_ways():
    s = shape(qk_layernorm=True)
    sd = megatron_state(s)
    for i in range(s.num_layers):
        for x in "qk":
            sd[f"decoder.layers.{i}.self_attention.{x}_layernorm.weight"] = torch.randn(HEAD_DIM)
    hf = megatron_to_hf(sd, s)
    assert torch.equal(hf["model.layers.1.self_attn.k_norm.weight"],
                       sd["decoder.layers.1.self_attention.k_layernorm.weight"])
    back = hf_to_megatron(hf, s)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    cfg = dict(architectures=["Qwen3MoeForCausalLM"], num_hidden_layers=2, hidden_size=D,
               num_attention_heads=HEADS, intermediate_size=FFN, vocab_size=VOCAB,
               moe_intermediate_size=8, num_local_experts=3, num_experts_per_tok=2,
               norm_topk_prob=True, mlp_only_layers=[0])
    got = shape_from_hf_config(cfg)
    assert got.qk_layernorm and got.norm_topk_prob and got.moe_layers == [False, True]


DSV3_CFG = dict(architectures=["DeepseekV3ForCausalLM"], num_hidden_layers=2, hidden_size=D,
                num_attention_heads=HEADS, num_key_value_heads=HEADS, intermediate_size=FFN,
                vocab_size=VOCAB, q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=4,
                qk_rope_head_dim=2, v_head_dim=4, n_routed_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=8, n_shared_experts=1, first_k_dense_replace=1,
                n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
                rms_norm_eps=1e-6, rope_interleave=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


@pytest.mark.parametrize("change, message", [
    ({"norm_topk_prob": False}, "norm_topk_prob"),
    ({"rms_norm_eps": 1e-5}, "rms_norm_eps"),
    ({"rope_interleave": False}, "rope_interleave"),
    ({"num_key_value_heads": 2}, "num_key_value_heads"),
    ({"n_group": 2, "topk_group": 2}, "top 2"),
    ({"n_shared_experts": 0}, "no shared experts"),
])
def test_deepseek_v3_import_refuses_what_megatron_cannot_express(change, message):
    with pytest.raises(ConversionError, match=message) as e:
        shape_from_hf_config(dict(DSV3_CFG, **change))
    assert "\n" not in str(e.value)
    s = shape_from_hf_config(DSV3_CFG)
    assert s.moe_layers == [False, True] and s.shared_expert_size == 8
    assert s.routing["scaling_factor"] == 2.5 and s.mla["q_lora_rank"] is None


def mla_state(s: ModelShape, expert_bias: bool, seed=0):
    """Random megatron tensors of an MLA model (mapping-level: shapes need only be consistent)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"embedding.word_embeddings.weight": r(VOCAB, D), "decoder.final_layernorm.weight": r(D)}
    q = (["linear_q_down_proj", "q_layernorm", "linear_q_up_proj"] if s.mla["q_lora_rank"]
         else ["linear_q_proj"])
    for i in range(s.num_layers):
        m = f"decoder.layers.{i}."
        sd.update({m + "input_layernorm.weight": r(D), m + "pre_mlp_layernorm.weight": r(D)})
        for name in q + ["linear_kv_down_proj", "kv_layernorm", "linear_kv_up_proj", "linear_proj"]:
            sd[f"{m}self_attention.{name}.weight"] = r(8, D)
        if s.moe_layers[i]:
            sd[m + "mlp.router.weight"] = r(s.num_experts, D)
            if expert_bias:
                sd[m + "mlp.router.expert_bias"] = r(s.num_experts)
            for e in range(s.num_experts):
                sd[f"{m}mlp.experts.local_experts.{e}.linear_fc1.weight"] = r(16, D)
                sd[f"{m}mlp.experts.local_experts.{e}.linear_fc2.weight"] = r(D, 8)
            sd[m + "mlp.shared_experts.linear_fc1.weight"] = r(16, D)
            sd[m + "mlp.shared_experts.linear_fc2.weight"] = r(D, 8)
        else:
            sd[m + "mlp.linear_fc1.weight"] = r(2 * FFN, D)
            sd[m + "mlp.linear_fc2.weight"] = r(D, FFN)
    return sd


@pytest.mark.parametrize("q_lora_rank", [None, 6])
def test_deepseek_v3_mapping_both_ways_bit_identical(q_lora_rank):
    """One rule list serves both directions: export then import gives the checkpoint back, also
    from transformers 5's fused experts; a run without expert bias exports zeros."""
    mla = dict(q_lora_rank=q_lora_rank, kv_lora_rank=8, qk_head_dim=4, qk_pos_emb_head_dim=2,
               v_head_dim=4)
    s = shape(num_query_groups=HEADS, qk_layernorm=True, mla=mla, num_experts=3,
              moe_layers=[False, True], moe_ffn_hidden_size=8, shared_expert_size=8, topk=2)
    sd = mla_state(s, expert_bias=True)
    hf = megatron_to_hf(sd, s)
    assert ("model.layers.0.self_attn.q_a_proj.weight" in hf) == bool(q_lora_rank)
    back = hf_to_megatron(hf, s)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    h = "model.layers.1.mlp.experts."
    hf[h + "gate_up_proj"] = torch.stack([torch.cat([hf.pop(f"{h}{e}.gate_proj.weight"),
                                                     hf.pop(f"{h}{e}.up_proj.weight")])
                                          for e in range(3)])
    hf[h + "down_proj"] = torch.stack([hf.pop(f"{h}{e}.down_proj.weight") for e in range(3)])
    back = hf_to_megatron(hf, s)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    no_bias = megatron_to_hf(mla_state(s, expert_bias=False), s)
    assert not torch.count_nonzero(no_bias["model.layers.1.mlp.gate.e_score_correction_bias"])
    sd["decoder.layers.0.self_attention.linear_qkv.weight"] = torch.ones(4, D)
    with pytest.raises(ConversionError, match="no HF counterpart: decoder.layers.0.self_attention"):
        megatron_to_hf(sd, s)
