"""HF export of the Megatron-LM model families (tests/e2e/test_convert_families.py), one process.

For each family: a tiny checkpoint in the engine's format (make_checkpoints.make at TP1, every
weight moved off its init), the megatron-to-hf CLI, megatron logits vs AutoModelForCausalLM
logits, tools/generate.py greedy tokens vs transformers' generate; then hf-to-megatron of the
export and megatron-to-hf again (bit-identical safetensors). Prints `RESULTS {json}`.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import convert_checks  # noqa: E402  (sets sys.path to the repo and quiets transformers)
import make_checkpoints  # noqa: E402

# Every architecture flag explicit (the project's defaults are moving to Megatron-LM's).
EXPLICIT = ["--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
            "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
            "--train-iters", "1"]
QWEN3 = make_checkpoints.DENSE + EXPLICIT + ["--qk-layernorm",
                                             "--untie-embeddings-and-output-weights"]
QWEN3_MOE = QWEN3 + ["--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
                     "--moe-layer-freq", "[0,1,1,1]", "--no-moe-router-pre-softmax",
                     "--moe-router-load-balancing-type", "aux_loss"]
FAMILIES = {
    # name: (model flags, HF class)
    "qwen3": (QWEN3, "Qwen3ForCausalLM"),
    "qwen3_moe": (QWEN3_MOE, "Qwen3MoeForCausalLM"),
}


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
    results["roundtrip"] = convert_checks.roundtrip(
        root, [(f"{root}/hf/{n}", f"{root}/rt/{n}") for n in names],
        [(n, f"{root}/hf/{n}", f"{root}/rt/{n}", False) for n in names], [])
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--families", default=",".join(FAMILIES))
    a = p.parse_args()
    main(a.root, a.families.split(","))
