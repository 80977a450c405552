"""Checkpoint conversion between megatron-nitp (megatron-core dist checkpoints) and Hugging Face.

hf_mapping: tensor names and layouts, both directions (pure torch, no process groups).
hf_export:  a megatron-nitp checkpoint -> a transformers directory (+ optional NITP head files).
hf_import:  a transformers directory -> a megatron-nitp model-only ("release") checkpoint.
hf_tokenizer: the run's tokenizer as files `AutoTokenizer` loads.
"""


class ConversionError(Exception):
    """Bad input for a conversion; the message is one line for the user."""
