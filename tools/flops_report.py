"""Per-token training FLOPs of NTP vs NITP for any config (paper App. G), as Markdown or JSON.

  python tools/flops_report.py --config examples/configs/moe_9b_a1b.yaml [any training flag]
  python tools/flops_report.py --all-examples [--json]
  python tools/flops_report.py --paper-g3      # App. G.3's worked example, literally

The formulas live in megatron_nitp/nitp/flops.py (shared with the overhead benchmark and the
README table); this file only parses, loops and prints. Flags other than the four below are the
training CLI's own (megatron_nitp.training.arguments), so a report describes exactly what a run
with the same flags would train.
"""

import argparse
import glob
import json
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

from megatron_nitp.nitp.flops import paper_g3_flops, training_flops_per_token
from megatron_nitp.training.arguments import parse_args

EXAMPLES = os.path.join(REPO, "examples", "configs")

# App. G.3: the 9B MoE model's numbers as the paper plugs them into eq. (28).
PAPER_G3 = dict(d=1280, de=640, k=9, L=24, V=152064)


def record(name, args):
    """One report row: the library's numbers plus what identifies the run."""
    r = {"name": name}
    r.update(training_flops_per_token(args))
    r.update(seq_length=args.seq_length, hidden_size=args.hidden_size,
             num_layers=args.num_layers, nitp_target_layer=args.nitp_target_layer,
             pipeline_model_parallel_size=args.pipeline_model_parallel_size)
    return r


def example_records():
    out = []
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        out.append(record(name, parse_args(["--config", path])))
    return out


def paper_g3_record():
    r = {"name": "paper_app_g3 (9B MoE, eq. 28 as printed)"}
    r.update(paper_g3_flops(**PAPER_G3))
    r.update(PAPER_G3)
    return r


def _e(x):
    return "-" if x is None else f"{x:.3g}"


def markdown(records):
    head = ("| config | total params | active params | NTP FLOPs/token | of which MTP | NITP adds "
            "| overhead | attn scores (not in NTP) | PP target carry |")
    rows = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in records:
        b = r.get("pipeline_carry_boundaries")
        carry = ("-" if not b else
                 f"{b} boundaries x {r['pipeline_carry_bytes_per_token_per_boundary']} B/token")
        rows.append(
            f"| {r['name']} | {_e(r.get('total_params'))} | {_e(r.get('active_params'))} "
            f"| {_e(r['baseline_flops_per_token'])} | {_e(r.get('mtp_flops_per_token') or None)} "
            f"| {_e(r['nitp_flops_per_token'])} "
            f"| {r['overhead_pct']:.2f}% | {_e(r.get('attention_score_flops_per_token'))} "
            f"| {carry} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--all-examples", action="store_true",
                   help="Report every examples/configs/*.yaml.")
    p.add_argument("--paper-g3", action="store_true",
                   help="Also report App. G.3's worked example computed with eq. (28).")
    p.add_argument("--json", action="store_true", help="Print a JSON list of records.")
    p.add_argument("--name", default=None, help="Row name for a --config/flags report.")
    p.add_argument("-h", "--help", action="store_true")
    ours, rest = p.parse_known_args(argv)
    if ours.help:
        p.print_help()
        print("\nAll other flags are the training CLI's (e.g. --config FILE, --num-layers N).")
        return 0
    records = []
    try:
        records += _collect(ours, rest)
    except ValueError as e:  # an inconsistent config, e.g. a moe-layer-freq of the wrong length
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(records, indent=2) if ours.json else markdown(records))
    return 0


def _collect(ours, rest):
    records = []
    if ours.all_examples:
        records += example_records()
    if rest or not (ours.all_examples or ours.paper_g3):
        args = parse_args(rest)
        name = ours.name or (os.path.splitext(os.path.basename(args.config[-1]))[0]
                             if args.config else "command line")
        records.append(record(name, args))
    if ours.paper_g3:
        records.append(paper_g3_record())
    return records


if __name__ == "__main__":
    sys.exit(main())
