"""The data layer: from raw text to the micro-batches the training loop consumes.

    jsonl.py               read JSONL line by line; classify bad lines instead of failing
    tokenizers.py          build_tokenizer: Null / SentencePiece / Llama2 / GPT-2 BPE / TikToken /
                           Hugging Face, megatron's interface
    data_args.py           --data-args-path / --per-split-data-args-path: the data lists in files
    tokenizer_training.py  train a SentencePiece or byte-level BPE tokenizer on JSONL
    preprocess.py          JSONL -> megatron indexed datasets (PREFIX_{key}_document.bin/.idx)
    datasets.py            validate_data_args, build_datasets (megatron-core GPT datasets, blends)
    iterators.py           data-parallel micro-batch iterators resuming from consumed_samples
    demo_corpus.py         an English corpus built offline from Python's own documentation
    demo.py                prepare_demo_data: corpus -> tokenizer -> indexed data, cached
    errors.py              DataArgumentError: one line naming the flag, no traceback

Nothing is imported here, so that the tools stay fast (megatron-core takes seconds to import).
"""
