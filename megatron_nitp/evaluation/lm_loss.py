"""Held-out language-modelling cross-entropy of a checkpoint on indexed datasets (App. E's
"validation cross-entropy on the Pile", for any dataset written by tools/preprocess_data.py).

Every token of each dataset is scored once: the documents (with the EOD tokens preprocessing
appended) are concatenated in order and cut into consecutive windows of seq_length + 1 tokens;
each window predicts its last seq_length tokens, as a training sample does (megatron-core's
GPTDataset, without its shuffling and without resetting attention at EOD). A trailing window
shorter than 2 tokens is dropped. The paper does not say how its Pile numbers were windowed;
this is the training-time convention.
"""

from typing import Dict, Iterator, List

import numpy as np
import torch


def windows(prefix: str, seq_length: int) -> Iterator[np.ndarray]:
    """Consecutive [<= seq_length + 1] token windows over the dataset's documents, in order."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    buf: List[np.ndarray] = []
    held = 0
    for i in range(len(ds)):
        doc = np.asarray(ds[i], dtype=np.int64)
        buf.append(doc)
        held += doc.size
        if held < seq_length + 1:
            continue
        # One concatenation per document (not per window: a long book would be quadratic).
        flat, start = np.concatenate(buf), 0
        while flat.size - start >= seq_length + 1:
            yield flat[start : start + seq_length + 1]
            # The window's last token is the next window's first input (no token scored twice).
            start += seq_length
        rest = flat[start:]
        buf, held = [rest], rest.size
    if held >= 2:
        yield np.concatenate(buf)


@torch.no_grad()
def dataset_cross_entropy(model, prefix: str, seq_length: int, micro_batch_size: int = 8,
                          max_windows: int = 0) -> Dict[str, float]:
    """{"cross_entropy": mean nats per predicted token, "perplexity", "tokens", "windows"}."""
    device = next(model.parameters()).device
    total, count, n_windows = 0.0, 0, 0
    batch: List[np.ndarray] = []

    def flush():
        nonlocal total, count
        length = max(w.size for w in batch)
        tokens = torch.zeros(len(batch), length, dtype=torch.long)
        mask = torch.zeros(len(batch), length - 1)
        for j, w in enumerate(batch):
            tokens[j, : w.size] = torch.from_numpy(w)
            mask[j, : w.size - 1] = 1.0
        tokens = tokens.to(device)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        pos = torch.arange(inputs.size(1), device=device).unsqueeze(0).expand_as(inputs)
        out = model(inputs, pos, None, labels=labels)
        lm = (out[0] if isinstance(out, tuple) else out).float().cpu()     # [b, s] nats
        total += float((lm * mask).sum())
        count += int(mask.sum())
        batch.clear()

    for w in windows(prefix, seq_length):
        batch.append(w)
        n_windows += 1
        if len(batch) == micro_batch_size:
            flush()
        if max_windows and n_windows >= max_windows:
            break
    if batch:
        flush()
    ce = total / max(count, 1)
    return {"cross_entropy": ce, "perplexity": float(np.exp(ce)), "tokens": count,
            "windows": n_windows}
