"""Validation cross-entropy of a checkpoint on indexed datasets (App. E: NITP keeps NTP's loss).

  python tools/eval_lm_loss.py --load CKPT_DIR --data-path /data/pile_val_text_document \
      [--iteration N] [--seq-length S] [--micro-batch-size 8] [--max-windows N] [--out r.json]

Each dataset must be tokenized with the checkpoint's tokenizer (tools/preprocess_data.py
--append-eod). Every token is scored once in consecutive windows of the training sequence length
(megatron_nitp/evaluation/lm_loss.py); prints nats per token and perplexity per dataset.
"""

import argparse
import json
import os
import sys


PROG = "eval_lm_loss.py"


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True)
    p.add_argument("--iteration", type=int, default=None)
    p.add_argument("--data-path", nargs="+", required=True, help="indexed dataset prefix(es)")
    p.add_argument("--seq-length", type=int, default=None, help="default: the training one")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--max-windows", type=int, default=0, help="0: the whole dataset")
    p.add_argument("--out", default=None)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    for prefix in a.data_path:
        if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
            print(f"{PROG}: error: --data-path {prefix}: no {prefix}.bin/.idx (an indexed dataset "
                  "prefix from tools/preprocess_data.py)", file=sys.stderr)
            return 2
    if not os.path.isdir(a.load):
        print(f"{PROG}: error: --load {a.load}: no such directory", file=sys.stderr)
        return 2
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_nitp.evaluation.lm_loss import dataset_cross_entropy
    from megatron_nitp.training.checkpoint_io import load_model_single_process

    model, args, _ = load_model_single_process(a.load, a.iteration, drop_nitp_head=True)
    seq = a.seq_length or args.seq_length
    report = {"model": a.load, "iteration": args.iteration, "seq_length": seq, "datasets": {}}
    for prefix in a.data_path:
        r = dataset_cross_entropy(model, prefix, seq, a.micro_batch_size, a.max_windows)
        report["datasets"][prefix] = r
        print(f"{prefix}: cross-entropy {r['cross_entropy']:.4f} nats/token, perplexity "
              f"{r['perplexity']:.2f} ({r['tokens']} tokens, {r['windows']} windows of {seq})")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
