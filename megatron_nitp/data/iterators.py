"""Data-parallel micro-batch iterators that resume exactly from `consumed_samples`.

The sample order is global and fixed (megatron-core's GPTDataset already shuffles): global
micro-step k covers samples [c + k*b*d, c + (k+1)*b*d) for micro-batch size b, data-parallel
size d and c consumed samples, and data-parallel rank r takes the slice [r*b, (r+1)*b) of it, as
Megatron-LM's MegatronPretrainingSampler does. A restarted run therefore continues with exactly
the batch it would have seen next, whatever the number of DataLoader workers. Past the end of
the dataset the order wraps around to sample 0 (the dataset is normally sized by the planned
number of samples, so this only happens when training runs longer than planned).
"""

from typing import Dict, Iterator, List, Optional

import torch

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "attention_mask")


class PretrainingSampler:
    """Endless batch sampler: the indices of this rank's micro-batch of each global micro-step."""

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
    ) -> None:
        if total_samples <= 0:
            raise ValueError(f"the dataset is empty (total_samples={total_samples})")
        if micro_batch_size <= 0 or consumed_samples < 0:
            raise ValueError(
                f"need micro_batch_size > 0 and consumed_samples >= 0, got {micro_batch_size} "
                f"and {consumed_samples}"
            )
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(
                f"data_parallel_rank {data_parallel_rank} is outside [0, {data_parallel_size})"
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size

    def __iter__(self) -> Iterator[List[int]]:
        step = self.micro_batch_size * self.data_parallel_size
        first = self.consumed_samples + self.data_parallel_rank * self.micro_batch_size
        while True:
            yield [(first + i) % self.total_samples for i in range(self.micro_batch_size)]
            first += step


def _collate(samples: List[Dict]) -> Dict[str, torch.Tensor]:
    # A BlendedDataset sample also carries its `dataset_id`: keep the batch schema fixed.
    keys = [key for key in BATCH_KEYS if key in samples[0]]
    return torch.utils.data.default_collate([{key: s[key] for key in keys} for s in samples])


def build_data_iterator(
    dataset,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    consumed_samples: int,
    num_workers: int = 0,
) -> Optional[Iterator[Dict[str, torch.Tensor]]]:
    """An endless iterator of this rank's micro-batches, starting after `consumed_samples`.

    Each batch is a dict of [micro_batch_size, seq_length] tensors: `tokens`, `labels`,
    `loss_mask`, `position_ids`, and `attention_mask` when the dataset makes one. Returns None
    for a None dataset (a split with no share), so callers can pass splits through unchanged.
    """
    if dataset is None:
        return None
    sampler = PretrainingSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank, dp_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=num_workers > 0,
        # The workers' base seed from a generator of its own: building an iterator (a resumed
        # run's, each evaluation's) must not advance the default generator, which is the one
        # dropout draws from on CPU and which a resume restores from the checkpoint.
        generator=torch.Generator(),
    )
    return iter(loader)
