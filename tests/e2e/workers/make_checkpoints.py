"""Write tiny NITP checkpoints in the engine's format at several parallel layouts (torchrun -n 2).

Each layout: build the model chunks at that layout, move every weight away from its init (norms
away from 1, the NITP head away from megatron's init) with noise seeded by the parameter's local
name (so TP/EP replicas agree), save `{"model0"[, "model1"], "iteration"}` with megatron dist
checkpointing into CKPT/iter_0000007/ plus run_config.json and the tracker: what
`megatron_nitp.training.checkpointing.save_checkpoint` writes, minus the optimizer.

    torchrun --nproc_per_node 2 make_checkpoints.py --out DIR --layouts dense_tp2,moe_ep2
"""

import argparse
import json
import os
import sys
import time
import zlib

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

ITERATION = 7
DENSE = ["--num-layers", "4", "--hidden-size", "64", "--ffn-hidden-size", "96",
         "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
         "--rotary-base", "500", "--norm-epsilon", "1e-5"]
MOE = DENSE + ["--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
               "--moe-shared-expert-intermediate-size", "48", "--moe-layer-freq", "[0,1,1,1]",
               "--untie-embeddings-and-output-weights"]
LAYOUTS = {
    # name: (model flags, parallel flags, tokenizer)
    "dense_tp2": (DENSE, ["--tensor-model-parallel-size", "2"], "sentencepiece"),
    "dense_pp2_vpp": (DENSE + ["--untie-embeddings-and-output-weights"],
                      ["--pipeline-model-parallel-size", "2",
                       "--num-layers-per-virtual-pipeline-stage", "1"], "null"),
    "moe_ep2": (MOE, ["--expert-model-parallel-size", "2"], "null"),
    "moe_tp2": (MOE, ["--tensor-model-parallel-size", "2"], "null"),
}
# Save these layouts' MoE pre-MLP norms under the name Transformer Engine's MoE layer uses
# (`pre_mlp_layernorm.weight`; see checkpoint_io.align_norm_keys): a GPU run's checkpoint.
TE_MOE_NORM_KEYS = {"moe_tp2"}
NULL_VOCAB = 100  # --vocab-size; the NullTokenizer adds the end-of-document id 100


def train_sentencepiece(path):
    from megatron_nitp.data.tokenizer_training import train_sentencepiece as train

    texts = [f"The quick brown fox {i} jumps over the lazy dog; numbers 123{i} and words."
             for i in range(300)] + ["Hello world, hello megatron. Ünïcödé text ✓."] * 20
    return train(iter(texts), 320, path)


def perturb(chunks, tied):
    with torch.no_grad():
        for chunk in chunks:
            for name, p in chunk.named_parameters():
                key = "embedding.word_embeddings.weight" if tied and name == "output_layer.weight" else name
                g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def make(name, out):
    from megatron.core import dist_checkpointing

    from megatron_nitp.data.tokenizers import build_tokenizer
    from megatron_nitp.models.builder import (build_model_chunks, padded_vocab_size,
                                              transformer_config_from_args, virtual_pipeline_size)
    from megatron_nitp.nitp.config import NITPConfig
    from megatron_nitp.parallel.distributed import (destroy_distributed_model_parallel,
                                                    initialize_distributed)
    from tests.helpers import suite_parse_args as parse_args
    from megatron_nitp.training.checkpoint_io import (RUN_CONFIG, TRACKER, iteration_dir,
                                                      json_safe_args)

    t_start = time.time()
    model_flags, parallel, tok_kind = LAYOUTS[name]
    rank = int(os.environ.get("RANK", 0))
    tok_flags = ["--vocab-size", str(NULL_VOCAB)]
    if tok_kind == "sentencepiece":
        sp_path = os.path.join(out, "tokenizers", "sp.model")
        if rank == 0 and not os.path.exists(sp_path):
            os.makedirs(os.path.dirname(sp_path), exist_ok=True)
            train_sentencepiece(sp_path)
        while not os.path.exists(sp_path):  # process groups are not up yet: poll
            time.sleep(0.1)
        tok_flags = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_path]
    args = parse_args(model_flags + parallel + tok_flags + [
        "--nitp", "--nitp-target-layer", "1", "--nitp-loss-weight", "0.8",
        "--transformer-impl", "local", "--make-vocab-size-divisible-by", "16",
        "--moe-token-dispatcher-type", "allgather", "--seq-length", "64"])
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
    args.vocab_size = tokenizer.vocab_size  # what the engine stores
    args.padded_vocab_size = padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by,
                                               args.tensor_model_parallel_size)
    initialize_distributed(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                           virtual_pipeline_size(args), 1, args.expert_model_parallel_size,
                           seed=args.seed)
    nitp = NITPConfig.from_args(args)
    chunks = build_model_chunks(args, transformer_config_from_args(args), nitp)
    perturb(chunks, tied=not args.untie_embeddings_and_output_weights)
    ckpt = os.path.join(out, name)
    path = iteration_dir(ckpt, ITERATION)
    if rank == 0:
        os.makedirs(path, exist_ok=True)
    torch.distributed.barrier()
    state = {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}
    state["iteration"] = ITERATION
    if name in TE_MOE_NORM_KEYS:
        fused = ".mlp.linear_fc1.layer_norm_weight"
        for i in range(len(chunks)):
            for sh in state[f"model{i}"].values():
                key = getattr(sh, "key", "")
                if key.endswith(fused) and args.moe_layer_freq[int(key.split(".")[2])]:
                    sh.key = key[: -len(fused)] + ".pre_mlp_layernorm.weight"
    dist_checkpointing.save(state, path)
    torch.distributed.barrier()
    if rank == 0:
        with open(os.path.join(path, RUN_CONFIG), "w") as f:
            json.dump({"args": json_safe_args(args), "nitp": nitp.to_dict(), "iteration": ITERATION,
                       "consumed_samples": 0,
                       "tokenizer": {"type": args.tokenizer_type, "model": args.tokenizer_model}},
                      f, indent=1)
        with open(os.path.join(ckpt, TRACKER), "w") as f:
            f.write(str(ITERATION))
        print(f"made {name} in {time.time() - t_start:.1f}s", flush=True)
    destroy_distributed_model_parallel()


if __name__ == "__main__":  # dist-checkpointing's writer re-imports the main module
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    a = p.parse_args()
    for layout in a.layouts.split(","):
        make(layout, a.out)
