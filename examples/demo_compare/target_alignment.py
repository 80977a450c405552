"""Diagnostic behind docs/demo_results.md: how the layer-1 target relates to embeddings and h.

    python examples/demo_compare/target_alignment.py --out runs/compare [--target-layer 1]

For both final checkpoints of a comparison, on the same held-out batches: cos(z_t, E[x_t]) (the
target layer's output vs its token's input embedding), cos(h_t, E[x_{t+1}]) (final state vs the
next token's embedding) and cos(h_t, z_{t+1}) (final state vs the implicit target, no head).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(argv=None):
    import torch.nn.functional as F

    from megatron_nitp.evaluation.representations import MegatronEncoder, validation_batches
    from megatron_nitp.parallel.distributed import destroy_distributed_model_parallel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a demo_compare output directory")
    p.add_argument("--target-layer", type=int, default=1, help="1-based layer of z")
    p.add_argument("--batches", type=int, default=4)
    args = p.parse_args(argv)
    batches = None
    for run in ("ntp", "nitp"):
        enc = MegatronEncoder(os.path.join(args.out, run, "ckpt"))
        if batches is None:
            batches = validation_batches(enc.args, args.batches, 8, enc.tokenizer)
        captured = {}
        hook = enc.model.decoder.layers[args.target_layer - 1].register_forward_hook(
            lambda m, i, o: captured.__setitem__("z", (o[0] if isinstance(o, tuple) else o)))
        emb = enc.model.embedding.word_embeddings.weight
        sums = [0.0, 0.0, 0.0]
        for b in batches:
            h = enc.hidden_states(b["tokens"])                       # [s, b, d]
            z = captured["z"].detach().float()
            e = emb[b["tokens"].T].detach().float()
            sums[0] += F.cosine_similarity(z, e, dim=-1).mean().item()
            sums[1] += F.cosine_similarity(h[:-1], e[1:], dim=-1).mean().item()
            sums[2] += F.cosine_similarity(h[:-1], z[1:], dim=-1).mean().item()
        hook.remove()
        n = len(batches)
        print(f"{run}: cos(z_t, E[x_t]) {sums[0] / n:.3f}  cos(h_t, E[x_t+1]) {sums[1] / n:.3f}"
              f"  cos(h_t, z_t+1) {sums[2] / n:.3f}", flush=True)
        destroy_distributed_model_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
