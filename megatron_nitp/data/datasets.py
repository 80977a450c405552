"""Train/valid/test GPT datasets from `--data-path`/`--split`/`--mock-data`, via megatron-core.

`build_datasets` wraps `BlendedMegatronDatasetBuilder(GPTDataset | MockGPTDataset, ...)` with a
`GPTDatasetConfig`, as Megatron-LM's pretrain_gpt.py does. `validate_data_args` checks the same
flags up front (files present and readable, split well formed, token ids inside the tokenizer's
vocabulary) so that a mistake ends the run with one line instead of a hang or an index error
deep inside a training step.

Attention mask: the datasets do not build one (`create_attention_mask=False`). megatron-core's
local `DotProductAttention` with `AttnMaskType.causal` builds the causal mask itself when given
`attention_mask=None` (fused_softmax.FusedScaleMaskSoftmax.forward_torch_softmax), and so does
Transformer Engine; a per-sample [1, s, s] mask would only cost memory and collation time. Pass
`create_attention_mask=True` for attention implementations that need one.
"""

import copy
import os
import re
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.indexed_dataset import DType

from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.data.index_check import check_indexed_pair, index_identity

_INDEX_HEADER = b"MMIDIDX\x00\x00"  # megatron.core.datasets.indexed_dataset._INDEX_HEADER
_FULL_SCAN_TOKENS = 1 << 24  # below this the whole .bin is scanned for the largest id
_SAMPLE_WINDOWS, _SAMPLE_WINDOW_TOKENS = 64, 1 << 18  # above it, evenly spaced windows


def parse_blend(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """`--data-path` as Megatron-LM reads it: `a b` (weights from sizes) or `0.7 a 0.3 b`.

    Returns (prefixes, weights or None), megatron-core's `blend`. Unlike
    megatron.core.datasets.utils.get_blend_from_list, a malformed list is a clear error.
    """
    items = [item.strip() for item in data_path]
    if not items or not all(items):
        raise DataArgumentError("--data-path: expected dataset prefixes, e.g. `a b` or `0.7 a 0.3 b`")
    weights = [_as_float(item) for item in items[0::2]] if len(items) % 2 == 0 else None
    if weights is None or all(weight is None for weight in weights):
        return items, None
    if any(weight is None for weight in weights):
        raise DataArgumentError(
            f"--data-path: {' '.join(items)!r} mixes weights and prefixes; give either prefixes "
            "(`a b`) or weight-prefix pairs (`0.7 a 0.3 b`)"
        )
    if any(weight <= 0 for weight in weights):
        raise DataArgumentError(f"--data-path: blend weights must be positive, got {weights}")
    return items[1::2], weights


def parse_split(split: str) -> List[float]:
    """`--split 98,2,0` → normalised train/valid/test shares."""
    parts = [part.strip() for part in str(split).replace("/", ",").split(",")]
    shares = [_as_float(part) for part in parts]
    if not 1 <= len(parts) <= 3 or any(s is None or s < 0 for s in shares) or sum(shares) <= 0:
        raise DataArgumentError(
            f"--split: expected up to three non-negative train,valid,test weights with a positive "
            f"sum, e.g. 98,2,0; got {split!r}"
        )
    shares += [0.0] * (3 - len(shares))
    return [share / sum(shares) for share in shares]


def validate_data_args(
    data_path: Optional[Sequence[str]],
    tokenizer,
    split: Optional[str] = None,
    mock: bool = False,
    per_split_paths: Optional[Sequence[Optional[Sequence[str]]]] = None,
) -> None:
    """Check the data flags before anything is built; raise DataArgumentError naming the flag.

    Checks: exactly one of `--data-path`, `--{train,valid,test}-data-path` (`per_split_paths`)
    and `--mock-data`; a well-formed blend and split; every
    prefix has a readable megatron `.bin/.idx` pair holding tokens; the largest token id found in
    each `.bin` (all of it when small, evenly spaced windows otherwise) is inside the tokenizer's
    vocabulary.
    """
    per_split = any(per_split_paths or ())
    if mock:
        if data_path or per_split:
            flag = "--data-path" if data_path else "--train/valid/test-data-path"
            raise DataArgumentError(f"{flag}: not used with --mock-data; give one of the two")
        return
    if data_path and per_split:
        raise DataArgumentError("--data-path: not used with --train/valid/test-data-path (one "
                                "data source, as in Megatron-LM); give one of the two")
    if not (data_path or per_split):
        raise DataArgumentError("--data-path: required (dataset prefixes), or use --mock-data")
    if per_split:
        if split is not None:
            raise DataArgumentError(f"--split {split}: not used with --train/valid/test-data-"
                                    "path (each split has its own data)")
        prefixes = [p for paths in per_split_paths if paths for p in parse_blend(paths)[0]]
    else:
        prefixes, _ = parse_blend(data_path)
        if split is not None:
            parse_split(split)
    for prefix in prefixes:
        _read_index_header(prefix)
        dtype, _ = check_indexed_pair(prefix)  # sizes, counts, dtype: before any model exists
        largest = _largest_token_id(prefix, dtype)
        if largest >= tokenizer.vocab_size:
            raise DataArgumentError(
                f"--data-path: {prefix}.bin holds token id {largest} but the tokenizer has "
                f"{tokenizer.vocab_size} ids (0..{tokenizer.vocab_size - 1}): the tokenizer "
                "vocabulary does not match the data; use the tokenizer it was preprocessed with"
            )


def build_datasets(
    data_path: Optional[Sequence[str]],
    split: str,
    mock: bool,
    seq_length: int,
    tokenizer,
    seed: int,
    train_val_test_num_samples: Tuple[int, int, int],
    data_cache_path: Optional[str] = None,
    create_attention_mask: bool = False,
    per_split_paths: Optional[Sequence[Optional[Sequence[str]]]] = None,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
    eod_mask_loss: bool = False,
):
    """Build the (train, valid, test) datasets; a split with no share (or, with
    `per_split_paths`, no data path) is None.

    Call it on every rank: megatron-core builds (and caches, under `data_cache_path` or next to
    the data) the sample indices on rank 0 first, then loads them on the others. Each sample is a
    dict of `tokens`, `labels`, `loss_mask`, `position_ids` (and `attention_mask` if asked for)
    of length `seq_length`.
    """
    sizes = [int(n) for n in train_val_test_num_samples]
    blend_per_split = None
    if not mock and any(per_split_paths or ()):
        blend, split = None, None  # megatron-core: blend_per_split excludes blend and split
        blend_per_split = [parse_blend(p) if p else None for p in per_split_paths]
        prefixes = [p for b in blend_per_split if b for p in b[0]]
    else:
        blend = None if mock else parse_blend(data_path)
        prefixes = [] if blend is None else blend[0]
    if blend is not None:
        _check_every_split_has_documents(blend[0], parse_split(split), sizes)
    config = IdentifiedGPTDatasetConfig(
        data_identity={p: index_identity(p) for p in prefixes} or None,
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=data_cache_path,
        tokenizer=tokenizer,
        # By default (Megatron-LM's) documents are packed into sequences that attend across
        # their boundaries and the EOD token is a normal training target.
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        # A reset mask exists only as a tensor; the causal one the attention builds itself.
        create_attention_mask=create_attention_mask or reset_attention_mask,
    )
    builder = _BlendedDatasetBuilder(
        MockGPTDataset if mock else IdentifiedGPTDataset, sizes, lambda: True, config
    )
    train, valid, test = builder.build()
    return train, valid, test


@dataclass
class IdentifiedGPTDatasetConfig(GPTDatasetConfig):
    data_identity: Optional[Dict[str, str]] = None
    """{prefix: index_identity(prefix)}: what the cached sample indices were built from. Each
    dataset's copy holds its own prefix only (`_BlendedDatasetBuilder`), so re-preprocessing one
    prefix of a blend does not invalidate the others' caches."""


class IdentifiedGPTDataset(GPTDataset):
    """megatron-core's GPTDataset with the data's identity in its cache key.

    The sample/shuffle index cache is keyed by the MD5 of the dataset's unique description,
    which names the data by its path only: data preprocessed again under the same prefix would
    reuse the old indices (trains on part of the new data, or indexes past its end). Adding the
    `.idx` content hash to the key attributes makes a new index for new data.
    """

    @staticmethod
    def _key_config_attributes() -> List[str]:
        return GPTDataset._key_config_attributes() + ["data_identity"]


class _BlendedDatasetBuilder(BlendedMegatronDatasetBuilder):
    """megatron-core's builder, usable by a single process that has a data cache path."""

    @staticmethod
    def build_generic_dataset(cls, is_built_on_rank, synchronize_ranks, *args):
        # megatron-core 0.16.1 BlendedDataset._build_indices calls torch.distributed.get_rank()
        # on a cache miss without checking that a process group exists, so a blend built by a
        # single process with a data_cache_path crashes. Outside a process group the blend's
        # indices are built in memory (they are cheap); the GPTDataset indices are still cached.
        if cls is BlendedDataset and not torch.distributed.is_initialized():
            config = copy.copy(args[-1])
            config.path_to_cache = None
            args = (*args[:-1], config)
        if cls is IdentifiedGPTDataset:  # args: (dataset, dataset_path, ..., config)
            config = copy.copy(args[-1])
            config.data_identity = {args[1]: (config.data_identity or {}).get(args[1])}
            args = (*args[:-1], config)
        return BlendedMegatronDatasetBuilder.build_generic_dataset(
            cls, is_built_on_rank, synchronize_ranks, *args
        )


def _check_every_split_has_documents(prefixes, shares, sizes) -> None:
    """megatron-core loops forever building a split that gets samples but no document."""
    bounds = numpy.cumsum([0.0] + shares)
    for prefix in prefixes:
        _, documents = _read_index_header(prefix)
        for name, size, begin, end in zip(("train", "valid", "test"), sizes, bounds, bounds[1:]):
            count = int(round(end * documents)) - int(round(begin * documents))
            if size > 0 and end > begin and count == 0:
                raise DataArgumentError(
                    f"--split: the {name} split of {prefix} gets none of its {documents} "
                    f"documents; give that split a larger share or use more data"
                )


def _read_index_header(prefix: str) -> Tuple[type, int]:
    """Check that `prefix.bin/.idx` exist, are readable and look like megatron data.

    Returns (token dtype, number of sequences).
    """
    for suffix in (".bin", ".idx"):
        if prefix.endswith(suffix):
            raise DataArgumentError(
                f"--data-path: give dataset prefixes without extension: {prefix[: -len(suffix)]!r}"
            )
    missing = [prefix + s for s in (".bin", ".idx") if not os.path.isfile(prefix + s)]
    if missing:
        raise DataArgumentError(
            f"--data-path: no dataset at prefix {prefix!r} (missing {', '.join(missing)}); "
            "expected the prefix of a preprocessed .bin/.idx pair, e.g. data/corpus_text_document"
        )
    for path in (prefix + ".bin", prefix + ".idx"):
        if not os.access(path, os.R_OK):
            raise DataArgumentError(f"--data-path: {path} is not readable")
    with open(prefix + ".idx", "rb") as stream:
        head = stream.read(34)
    if len(head) < 34 or head[:9] != _INDEX_HEADER:
        raise DataArgumentError(f"--data-path: {prefix}.idx is not a megatron index file")
    (code,) = struct.unpack("<B", head[17:18])
    (sequences,) = struct.unpack("<Q", head[18:26])
    try:
        dtype = DType.dtype_from_code(code)
    except ValueError:
        raise DataArgumentError(f"--data-path: {prefix}.idx has an unknown token dtype code {code}") from None
    if sequences == 0:
        raise DataArgumentError(f"--data-path: {prefix} holds no documents")
    return dtype, sequences


def _largest_token_id(prefix: str, dtype) -> int:
    size = os.path.getsize(prefix + ".bin")
    itemsize = numpy.dtype(dtype).itemsize
    if size == 0 or size % itemsize:
        raise DataArgumentError(
            f"--data-path: {prefix}.bin has {size} bytes, not a whole number of "
            f"{numpy.dtype(dtype).name} tokens (truncated or mismatched with its .idx?)"
        )
    tokens = numpy.memmap(prefix + ".bin", dtype=dtype, mode="r")
    if tokens.size <= _FULL_SCAN_TOKENS:
        return int(tokens.max())
    starts = numpy.linspace(0, tokens.size - _SAMPLE_WINDOW_TOKENS, _SAMPLE_WINDOWS).astype(int)
    return max(int(tokens[s : s + _SAMPLE_WINDOW_TOKENS].max()) for s in starts)


def _as_float(text: str) -> Optional[float]:
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return None
    return float(text)
