"""Diagnostics behind docs/demo_results.md: the geometry through depth, and what the target is.

    python examples/demo_compare/target_alignment.py --out runs/compare

For both final checkpoints of a comparison, on the same held-out batches:
- effective rank and pair cosine (the library metrics of App. D) of every layer's output and of
  the final-norm state h, so one sees where in depth NITP changes the geometry, and whether the
  target layer's output z is itself of higher or lower rank than h;
- cos(z_t, E[x_t]) (target output vs its token's input embedding), cos(h_t, E[x_{t+1}]) (final
  state vs the next token's embedding) and cos(h_t, z_{t+1}) (final state vs the implicit target,
  without the head);
- the NITP loss of the best *constant* prediction, 1 - |mean_t z_t/|z_t||: how much of the
  objective a shared direction alone satisfies (the more anisotropic z, the lower).
Writes OUT/target_alignment.json and prints a Markdown table.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron_nitp.evaluation.runs import run_and_exit, write_json_atomic  # noqa: E402

RUNS = ("ntp", "nitp")


def measure(ckpt, target_layer, batches_wanted, batches=None):
    import torch.nn.functional as F

    from megatron_nitp.evaluation.representations import MegatronEncoder, validation_batches
    from megatron_nitp.nitp.metrics import effective_rank, pair_cosine
    from megatron_nitp.parallel.distributed import destroy_distributed_model_parallel

    enc = MegatronEncoder(ckpt)
    try:
        if batches is None:
            batches = validation_batches(enc.args, batches_wanted, 8, enc.tokenizer)
        layers = enc.model.decoder.layers
        outs = {}
        hooks = [layer.register_forward_hook(
            lambda m, i, o, n=n: outs.__setitem__(n, (o[0] if isinstance(o, tuple) else o)))
            for n, layer in enumerate(layers, start=1)]
        emb = enc.model.embedding.word_embeddings.weight
        names = [f"layer {n}" for n in range(1, len(layers) + 1)] + ["h (final norm)"]
        rank = {k: 0.0 for k in names}
        cos = {k: 0.0 for k in names}
        align = {"cos(z_t, E[x_t])": 0.0, "cos(h_t, E[x_t+1])": 0.0, "cos(h_t, z_t+1)": 0.0,
                 "NITP loss of the best constant prediction": 0.0}
        for b in batches:
            h = enc.hidden_states(b["tokens"])                        # [s, b, d]
            valid = b["loss_mask"].T.bool()
            states = [outs[n].detach().float() for n in range(1, len(layers) + 1)] + [h]
            for k, x in zip(names, states):
                rank[k] += effective_rank(x, valid)
                cos[k] += pair_cosine(x, valid)
            z = outs[target_layer].detach().float()
            e = emb[b["tokens"].T].detach().float()
            align["cos(z_t, E[x_t])"] += F.cosine_similarity(z, e, dim=-1).mean().item()
            align["cos(h_t, E[x_t+1])"] += F.cosine_similarity(h[:-1], e[1:], dim=-1).mean().item()
            align["cos(h_t, z_t+1)"] += F.cosine_similarity(h[:-1], z[1:], dim=-1).mean().item()
            unit = F.normalize(z[valid], dim=-1)
            align["NITP loss of the best constant prediction"] += 1.0 - unit.mean(0).norm().item()
        for hk in hooks:
            hk.remove()
        n = len(batches)
        return batches, {
            "iteration": enc.args.iteration,
            "effective_rank": {k: v / n for k, v in rank.items()},
            "pair_cosine": {k: v / n for k, v in cos.items()},
            "alignment": {k: v / n for k, v in align.items()},
        }
    finally:
        del enc
        destroy_distributed_model_parallel()


def main(argv=None):
    from megatron_nitp.training.checkpoint_io import read_run_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a demo_compare output directory")
    p.add_argument("--target-layer", type=int, default=None,
                   help="1-based layer of z (default: the NITP run's target layer)")
    p.add_argument("--batches", type=int, default=4, help="held-out micro-batches of 8")
    args = p.parse_args(argv)
    for run in RUNS:
        if not os.path.isdir(os.path.join(args.out, run, "ckpt")):
            p.error(f"--out {args.out}: no {run}/ckpt (run examples/demo_compare/run.py first)")
    k = args.target_layer or read_run_config(os.path.join(args.out, "nitp", "ckpt"))[
        "nitp"]["target_layer"]
    report, batches = {"target_layer": k}, None
    for run in RUNS:
        batches, report[run] = measure(os.path.join(args.out, run, "ckpt"), k, args.batches,
                                       batches)
    write_json_atomic(os.path.join(args.out, "target_alignment.json"), report)
    ntp, nitp = report["ntp"], report["nitp"]
    lines = [f"Target: output of layer {k}. Held-out: {args.batches} x 8 sequences.", "",
             "| state | eff. rank NTP | eff. rank NITP | pair cos NTP | pair cos NITP |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name in ntp["effective_rank"]:
        mark = " (target z)" if name == f"layer {k}" else ""
        lines.append(f"| {name}{mark} | {ntp['effective_rank'][name]:.2f} | "
                     f"{nitp['effective_rank'][name]:.2f} | {ntp['pair_cosine'][name]:.4f} | "
                     f"{nitp['pair_cosine'][name]:.4f} |")
    lines += ["", "| alignment | NTP | NITP |", "| --- | ---: | ---: |"]
    for name in ntp["alignment"]:
        lines.append(f"| {name} | {ntp['alignment'][name]:.3f} | {nitp['alignment'][name]:.3f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_and_exit(main)
