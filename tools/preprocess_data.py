"""Tokenise a JSONL corpus into megatron indexed datasets: PREFIX_{key}_document.bin/.idx.

Same flags and output names as Megatron-LM's tools/preprocess_data.py; bad lines are skipped and
reported, outputs appear only when complete. Logic: megatron_nitp/data/preprocess.py.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod --workers 2
"""

import argparse
import os
import sys

from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.data.tokenizers import TOKENIZER_TYPES, tokenizer_options


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True, help="JSONL file, one JSON object per line")
    group.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenise (default: text)")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES + ("GPTSentencePieceTokenizer",))
    group.add_argument("--tokenizer-model", default=None, help="tokenizer file (or HF tokenizer directory)")
    group.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer, TikTokenizer")
    # The rest of Megatron-LM's tokenizer flags, as the training run reads them.
    group.add_argument("--vocab-file", default=None, help="GPT2BPETokenizer: vocab.json")
    group.add_argument("--merge-file", default=None, help="GPT2BPETokenizer: merges.txt")
    group.add_argument("--tiktoken-pattern", default=None, help="TikTokenizer: v1 or v2")
    group.add_argument("--tiktoken-num-special-tokens", type=int, default=1000, help="TikTokenizer")
    group.add_argument("--tokenizer-special-tokens", nargs="+", default=None, help="TikTokenizer")
    group.add_argument("--legacy-tokenizer", action="store_true", help="Megatron-LM's legacy classes")
    group.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_document.bin/.idx")
    group.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenising processes")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    prog = os.path.basename(sys.argv[0])
    # Imported after argument parsing so that --help and usage errors are instant.
    from megatron_nitp.data.preprocess import preprocess_jsonl

    try:
        report = preprocess_jsonl(
            args.input,
            args.output_prefix,
            args.tokenizer_type,
            tokenizer_model=args.tokenizer_model,
            vocab_size=args.vocab_size,
            json_keys=args.json_keys,
            append_eod=args.append_eod,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            tokenizer_options=tokenizer_options(args),
        )
    except DataArgumentError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was written", file=sys.stderr)
        return 130
    print(report.format_summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
