"""build_data_iterator: data-parallel ranks share each global step without overlap, and a
restart from consumed_samples continues with exactly the batch that would have come next."""

import itertools

import pytest
import torch

from megatron_nitp.data.iterators import PretrainingSampler, build_data_iterator


class IndexDataset(torch.utils.data.Dataset):
    """Sample i is a [seq] row filled with i, so a batch shows which samples it holds."""

    def __init__(self, size, seq=4):
        self.size, self.seq = size, seq

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        row = torch.full((self.seq,), i, dtype=torch.long)
        return {"tokens": row, "labels": row + 1, "loss_mask": torch.ones(self.seq),
                "position_ids": torch.arange(self.seq), "dataset_id": 0}


def _sample_ids(batch):
    return batch["tokens"][:, 0].tolist()


def test_each_global_step_is_split_across_ranks_in_rank_order_without_overlap():
    dataset, micro, dp = IndexDataset(100), 3, 4
    iterators = [build_data_iterator(dataset, micro, rank, dp, consumed_samples=0) for rank in range(dp)]
    for step in range(5):
        ids = [_sample_ids(next(iterator)) for iterator in iterators]
        assert sum(ids, []) == list(range(step * micro * dp, (step + 1) * micro * dp))


def test_batches_are_dicts_of_b_by_s_tensors_with_a_fixed_set_of_keys():
    batch = next(build_data_iterator(IndexDataset(10, seq=6), 2, 0, 1, 0))
    assert sorted(batch) == ["labels", "loss_mask", "position_ids", "tokens"]  # no dataset_id
    assert all(tensor.shape == (2, 6) for tensor in batch.values())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restart_from_consumed_samples_continues_with_the_same_next_batch(num_workers):
    dataset, micro, dp, steps = IndexDataset(50), 2, 2, 7
    for rank in range(dp):
        uninterrupted = build_data_iterator(dataset, micro, rank, dp, 0, num_workers=num_workers)
        seen = [_sample_ids(next(uninterrupted)) for _ in range(steps)]
        consumed = steps * micro * dp  # what the trainer counts after `steps` micro-steps
        resumed = build_data_iterator(dataset, micro, rank, dp, consumed, num_workers=num_workers)
        assert [_sample_ids(next(resumed)) for _ in range(5)] == [_sample_ids(next(uninterrupted)) for _ in range(5)]
        assert seen[0] == [rank * micro + i for i in range(micro)]


def test_the_order_wraps_around_past_the_end_of_the_dataset():
    iterator = build_data_iterator(IndexDataset(5), 2, 0, 1, consumed_samples=3)
    assert [_sample_ids(batch) for batch in itertools.islice(iterator, 3)] == [[3, 4], [0, 1], [2, 3]]


def test_no_dataset_gives_no_iterator():
    assert build_data_iterator(None, 2, 0, 1, 0) is None


def test_an_impossible_rank_is_refused():
    with pytest.raises(ValueError, match="data_parallel_rank 2 is outside"):
        PretrainingSampler(10, 0, 1, 2, 2)
