"""Build the embedded English demo corpus (JSONL) with no network access.

Docstrings of the Python standard library, the Python language reference shipped with pydoc,
and docstrings of this project's dependencies; deterministic for a given installation.
Logic: megatron_nitp/data/demo_corpus.py.

    python tools/build_demo_corpus.py --output corpus.jsonl [--max-docs N]
"""

import argparse
import os
import sys
import time

from megatron_nitp.data.demo_corpus import DEFAULT_MAX_BYTES, DEFAULT_SOURCES, build_demo_corpus
from megatron_nitp.data.errors import DataArgumentError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--max-docs", type=int, default=None, help="stop after N documents")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="stop before N characters of text")
    parser.add_argument(
        "--sources", nargs="+", default=list(DEFAULT_SOURCES),
        help=f"in order; 'stdlib', 'python-reference' or an installed package (default: {' '.join(DEFAULT_SOURCES)})",
    )
    args = parser.parse_args(argv)
    if args.max_docs is not None and args.max_docs <= 0:
        parser.error("--max-docs: expected a positive number of documents")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    try:
        stats = build_demo_corpus(args.output, args.max_docs, args.max_bytes, args.sources)
    except DataArgumentError as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        return 2
    per_source = ", ".join(f"{name} {count}" for name, count in stats.sources.items())
    print(
        f"wrote {args.output}: {stats.documents} documents, {stats.characters / 1e6:.1f} M characters "
        f"({per_source}) in {time.time() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
