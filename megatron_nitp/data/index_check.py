"""Is a `.bin/.idx` pair one consistent megatron indexed dataset? And which data is it?

megatron-core's `_IndexReader` trusts the `.idx`: a truncated file fails deep inside numpy after
the model is built, and an `.idx` of another dataset silently gives wrong document boundaries.
`check_indexed_pair` reads the whole index once (as megatron does at open) and checks the layout
`header | int32 lengths[n] | int64 pointers[n] | int64 document_indices[m]` against the file
sizes: the `.idx` is exactly that long, the pointers are the running byte offsets of the
lengths, the last sequence ends exactly at the end of the `.bin`, and the document indices run
from 0 to n. `index_identity` names the data a cache was built from.
"""

import hashlib
import os
import struct

import numpy

from .errors import DataArgumentError

_HEADER = b"MMIDIDX\x00\x00"  # megatron.core.datasets.indexed_dataset._INDEX_HEADER
_HEADER_BYTES = 34  # magic 9, version 8, dtype code 1, sequence count 8, document count 8
_DTYPES = {1: numpy.uint8, 2: numpy.int8, 3: numpy.int16, 4: numpy.int32, 5: numpy.int64,
           6: numpy.float64, 7: numpy.float32, 8: numpy.uint16}  # megatron's DType codes


class IndexMismatch(DataArgumentError):
    pass


def check_indexed_pair(prefix: str, flag: str = "--data-path"):
    """(token dtype, sequence count); IndexMismatch naming the file and what is wrong."""
    idx, bin_ = prefix + ".idx", prefix + ".bin"

    def bad(path, what):
        return IndexMismatch(f"{flag}: {path}: {what} (truncated, or the .bin and .idx come "
                             "from different preprocessing runs; preprocess the data again)")

    idx_size, bin_size = os.path.getsize(idx), os.path.getsize(bin_)
    with open(idx, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or head[:9] != _HEADER:
        raise bad(idx, "not a megatron index file")
    version, code, n, m = struct.unpack("<QBQQ", head[9:])
    if version != 1 or code not in _DTYPES:
        raise bad(idx, f"unknown index version {version} or token dtype code {code}")
    dtype = _DTYPES[code]
    itemsize = numpy.dtype(dtype).itemsize
    expected = _HEADER_BYTES + 4 * n + 8 * n + 8 * m
    if idx_size != expected:
        raise bad(idx, f"{idx_size} bytes, but its header ({n} sequences, {m - 1} documents) "
                       f"needs {expected}")
    data = numpy.memmap(idx, mode="r", dtype=numpy.uint8)
    lengths = numpy.frombuffer(data, numpy.int32, n, _HEADER_BYTES)
    pointers = numpy.frombuffer(data, numpy.int64, n, _HEADER_BYTES + 4 * n)
    documents = numpy.frombuffer(data, numpy.int64, m, _HEADER_BYTES + 12 * n)
    if n and (lengths.min() < 0 or pointers[0] != 0 or not numpy.array_equal(
            pointers[1:], pointers[:-1] + lengths[:-1].astype(numpy.int64) * itemsize)):
        raise bad(idx, "sequence pointers do not follow the sequence lengths")
    tokens_bytes = int(lengths.sum(dtype=numpy.int64)) * itemsize
    if tokens_bytes != bin_size:
        raise bad(bin_, f"{bin_size} bytes, but {idx} describes {tokens_bytes} "
                        f"({tokens_bytes // itemsize} {numpy.dtype(dtype).name} tokens)")
    if m < 1 or documents[0] != 0 or documents[-1] != n or (numpy.diff(documents) < 0).any():
        raise bad(idx, "document indices do not cover the sequences")
    return dtype, n


def index_identity(prefix: str) -> str:
    """What a sample-index cache depends on: the document lengths, i.e. the `.idx` file. Its
    size, modification time and first and last 4 MiB: cheap enough for every rank of a large
    blend at start-up, and a preprocess that rewrites the prefix always changes the mtime."""
    path = prefix + ".idx"
    stat = os.stat(path)
    digest = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    chunk = 4 << 20
    with open(path, "rb") as f:
        digest.update(f.read(chunk))
        if stat.st_size > chunk:
            f.seek(max(chunk, stat.st_size - chunk))
            digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def is_consistent(prefix: str) -> bool:
    """For caches that rebuild themselves (the demo data): True when the pair is usable."""
    try:
        check_indexed_pair(prefix)
        return True
    except (OSError, DataArgumentError):
        return False
