"""HF export of the Megatron-LM model families: Qwen3-like dense (GQA, --qk-layernorm, untied, no
biases) -> Qwen3ForCausalLM; Qwen3-MoE-like (q/k norm, no shared expert, dense first layer,
top-k without pre-softmax = norm_topk_prob) -> Qwen3MoeForCausalLM; multi-latent attention,
dense without q-lora (DeepSeek-V2-Lite's attention) and DeepSeek-V3-like (q-lora, YaRN, sigmoid
routing with expert bias, group top-k, scaling, shared experts, dense first layer) ->
DeepseekV3ForCausalLM. One process (workers/family_export_checks.py): tiny checkpoints with
every weight (and the expert bias) moved off its init, the CLI export, logits and greedy tokens
vs transformers; hf-to-megatron and back bit-identical, the imported checkpoint's logits equal to
the export's."""

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers",
                      "family_export_checks.py")
FAMILIES = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
            "mla_dense": "DeepseekV3ForCausalLM", "dsv3": "DeepseekV3ForCausalLM"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("families"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, WORKER, "--root", root], capture_output=True,
                          text=True, timeout=600, env=env, start_new_session=True)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, tail
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.parametrize("name", FAMILIES)
def test_family_export_logits_and_greedy_tokens_equal_megatron(results, name):
    r = results[name]
    assert r["hf_class"] == FAMILIES[name]
    assert r["max_abs_logit_diff"] <= 1e-4, r["max_abs_logit_diff"]
    assert r["logit_scale"] > 0.1
    assert r["megatron_ids"] == r["hf_ids"] and len(r["hf_ids"]) == 20
    assert r["nitp_tensors"] == []


def test_qwen3_configs_say_what_megatron_computed(results):
    dense, moe = results["qwen3"]["config"], results["qwen3_moe"]["config"]
    assert dense["attention_bias"] is False and dense["tie_word_embeddings"] is False
    assert dense["num_key_value_heads"] == 2 and dense["head_dim"] == 16
    # megatron without pre-softmax: softmax over the top-k logits = renormalised top-k
    assert moe["norm_topk_prob"] is True and moe["mlp_only_layers"] == [0]
    assert moe["num_experts_per_tok"] == 2 and moe["moe_intermediate_size"] == 32


def test_deepseek_v3_config_says_what_megatron_computed(results):
    c = results["dsv3"]["config"]
    assert (c["q_lora_rank"], c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
            c["v_head_dim"]) == (24, 32, 16, 8, 16)
    assert c["rope_interleave"] and c["rope_parameters"]["rope_type"] == "yarn"
    assert c["rope_parameters"]["factor"] == 4.0 and c["rope_parameters"]["mscale_all_dim"] == 1.0
    assert (c["n_routed_experts"], c["num_experts_per_tok"], c["n_group"], c["topk_group"]) == \
        (8, 4, 4, 2)
    assert c["routed_scaling_factor"] == 2.5 and c["norm_topk_prob"] is True
    assert c["n_shared_experts"] == 2 and c["first_k_dense_replace"] == 1
    assert c["num_nextn_predict_layers"] == 0  # no MTP layers exported
    dense = results["mla_dense"]["config"]
    assert dense["q_lora_rank"] is None and dense["first_k_dense_replace"] == 4
    assert dense["rope_parameters"]["rope_type"] == "default"  # YaRN factor 1 = plain RoPE


@pytest.mark.parametrize("name", FAMILIES)
def test_family_hf_to_megatron_to_hf_is_bit_identical(results, name):
    assert results["roundtrip"][name]["mismatched"] == []


def test_imported_deepseek_v3_checkpoint_computes_the_export(results):
    r = results["dsv3_imported"]
    assert r["max_abs_logit_diff"] <= 1e-4 and r["megatron_ids"] == r["hf_ids"], r
