"""Train a tokenizer on a JSONL corpus: SentencePiece (PREFIX.model) or byte-level BPE (PREFIX.json).

Deterministic for a given corpus. Logic: megatron_nitp/data/tokenizer_training.py. Use the result
with --tokenizer-type SentencePieceTokenizer / HuggingFaceTokenizer --tokenizer-model PATH.

    python tools/train_tokenizer.py --input corpus.jsonl --type sentencepiece --vocab-size 4096 \
        --output-prefix tok/demo
"""

import argparse
import os
import sys
import time

from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.data.tokenizer_training import TOKENIZER_KINDS, train_tokenizer
from megatron_nitp.data.tokenizers import build_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="JSONL file, one JSON object per line")
    parser.add_argument("--json-key", default="text", help="key holding the text (default: text)")
    parser.add_argument("--type", required=True, choices=TOKENIZER_KINDS, help="tokenizer kind")
    parser.add_argument("--vocab-size", required=True, type=int, help="vocabulary size")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.model or PREFIX.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    try:
        path = train_tokenizer(args.input, args.type, args.vocab_size, args.output_prefix, args.json_key)
    except DataArgumentError as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        return 2
    tokenizer_type = "SentencePieceTokenizer" if args.type == "sentencepiece" else "HuggingFaceTokenizer"
    tokenizer = build_tokenizer(tokenizer_type, path)
    # BPE can stop short of --vocab-size when a small corpus has no pair left to merge.
    print(
        f"wrote {path} in {time.time() - start:.1f} s: {args.type}, vocabulary {tokenizer.vocab_size}, "
        f"end-of-document id {tokenizer.eod}; use --tokenizer-type {tokenizer_type} --tokenizer-model {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
