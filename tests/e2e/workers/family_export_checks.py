"""HF export of the Megatron-LM model families (tests/e2e/test_convert_families.py), one process.

For each family: a tiny checkpoint in the engine's format (make_checkpoints.make at TP1, every
weight moved off its init), the megatron-to-hf CLI, megatron logits vs AutoModelForCausalLM
logits, tools/generate.py greedy tokens vs transformers' generate; then hf-to-megatron of the
export and megatron-to-hf again (bit-identical safetensors), and the imported DeepSeek-V3-like
checkpoint's own logits vs the export's. Prints `RESULTS {json}`.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import convert_checks  # noqa: E402  (sets sys.path to the repo and quiets transformers)
import make_checkpoints  # noqa: E402

# Every architecture flag explicit (the project's defaults are Megatron-LM's).
EXPLICIT = ["--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
            "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
            "--train-iters", "1"]
QWEN3 = make_checkpoints.DENSE + EXPLICIT + ["--qk-layernorm",
                                             "--untie-embeddings-and-output-weights"]
QWEN3_MOE = QWEN3 + ["--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
                     "--moe-layer-freq", "[0,1,1,1]", "--no-moe-router-pre-softmax",
                     "--moe-router-load-balancing-type", "aux_loss"]
MLA = ["--num-layers", "4", "--hidden-size", "64", "--ffn-hidden-size", "96",
       "--num-attention-heads", "4", "--rotary-base", "500", "--norm-epsilon", "1e-6",
       *EXPLICIT, "--untie-embeddings-and-output-weights", "--multi-latent-attention",
       "--kv-lora-rank", "32", "--qk-head-dim", "16", "--qk-pos-emb-head-dim", "8",
       "--v-head-dim", "16", "--qk-layernorm"]
# DeepSeek-V3-like: q-lora, YaRN RoPE, dense first layer, sigmoid routing with expert bias,
# group-limited top-k, top-k scaling, two shared experts' width, fp32 router.
DSV3 = MLA + ["--q-lora-rank", "24", "--rotary-scaling-factor", "4", "--mscale", "1.0",
              "--mscale-all-dim", "1.0", "--num-experts", "8", "--moe-router-topk", "4",
              "--moe-ffn-hidden-size", "16", "--moe-shared-expert-intermediate-size", "32",
              "--moe-layer-freq", "[0,1,1,1]", "--moe-router-score-function", "sigmoid",
              "--moe-router-enable-expert-bias", "--moe-router-num-groups", "4",
              "--moe-router-group-topk", "2", "--moe-router-topk-scaling-factor", "2.5",
              "--moe-router-dtype", "fp32", "--moe-router-load-balancing-type", "seq_aux_loss"]
FAMILIES = {
    # name: (model flags, HF class)
    "qwen3": (QWEN3, "Qwen3ForCausalLM"),
    "qwen3_moe": (QWEN3_MOE, "Qwen3MoeForCausalLM"),
    "mla_dense": (MLA, "DeepseekV3ForCausalLM"),  # DeepSeek-V2-Lite's attention: no q-lora
    "dsv3": (DSV3, "DeepseekV3ForCausalLM"),
}
IMPORTABLE = ("qwen3", "qwen3_moe", "mla_dense", "dsv3")


def perturb(chunks, tied):
    """make_checkpoints.perturb, and the routers' expert bias (a buffer, zero at init) too, so
    that a lost e_score_correction_bias changes the routing."""
    import torch

    _perturb(chunks, tied)
    g = torch.Generator().manual_seed(5)
    for chunk in chunks:
        for name, b in chunk.named_buffers():
            if name.endswith("expert_bias"):
                b.add_(0.2 * torch.randn(b.shape, generator=g))


_perturb, make_checkpoints.perturb = make_checkpoints.perturb, perturb


def main(root, names):
    for name in names:
        make_checkpoints.LAYOUTS[name] = (FAMILIES[name][0], [], "null")
        make_checkpoints.make(name, f"{root}/ckpt")
    results = {}
    for name in names:
        ckpt, hf = f"{root}/ckpt/{name}", f"{root}/hf/{name}"
        summary = convert_checks.export(ckpt, hf)
        results[name] = convert_checks.compare(ckpt, hf)
        results[name]["summary"] = summary
        results[name]["config"] = json.load(open(f"{hf}/config.json"))
    back = [n for n in names if n in IMPORTABLE]
    results["roundtrip"] = convert_checks.roundtrip(
        root, [(f"{root}/hf/{n}", f"{root}/rt/{n}") for n in back],
        [(n, f"{root}/hf/{n}", f"{root}/rt/{n}", False) for n in back], [])
    if "dsv3" in back:  # the imported checkpoint itself (expert bias included) vs the export
        results["dsv3_imported"] = convert_checks.compare(f"{root}/rt/dsv3", f"{root}/hf/dsv3")
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--families", default=",".join(FAMILIES))
    a = p.parse_args()
    main(a.root, a.families.split(","))
