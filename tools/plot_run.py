"""Plot one or more training runs from their JSONL logs (--log-jsonl) into a PNG.

2x2 panels against iteration: LM loss (train lines, valid markers), NITP loss, effective rank,
pair cosine; several runs are overlaid (e.g. NITP vs the NTP baseline). Logic:
megatron_nitp/training/plotting.py.

    python tools/plot_run.py runs/nitp/log.jsonl runs/ntp/log.jsonl --labels nitp,ntp \
        --out runs/compare.png
"""

import argparse
import os
import sys

from megatron_nitp.training.plotting import plot_runs, summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN.jsonl", help="JSONL logs to overlay")
    parser.add_argument("--labels", default=None,
                        help="comma-separated legend names, one per run (default: file names)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--out", required=True, help="PNG file to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    prog = os.path.basename(sys.argv[0])
    missing = [p for p in args.runs if not os.path.isfile(p)]
    if missing:
        print(f"{prog}: error: no such file: {missing[0]}", file=sys.stderr)
        return 2
    labels = args.labels.split(",") if args.labels else None
    try:
        plot_runs(args.runs, args.out, labels, args.title)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    for line in summary(args.runs):
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
