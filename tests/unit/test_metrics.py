"""Effective rank and pair cosine (paper App. D) on data whose answer is known."""

import itertools
import math

import numpy as np
import pytest
import torch

from megatron_nitp.nitp.metrics import (effective_rank, geometry_of_batches, pair_cosine,
                                        sample_pairs)


def numpy_effective_rank(x: np.ndarray) -> float:
    cov = np.cov(x, rowvar=False, bias=True)
    eig = np.clip(np.linalg.eigvalsh(cov), 0, None)
    p = eig / eig.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_isotropic_data_spanning_k_dimensions_has_effective_rank_k():
    g = torch.Generator().manual_seed(0)
    k, d = 5, 16
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    # Exactly isotropic in k dims: +-e_i for every basis vector, rotated into d dims.
    coords = torch.cat([torch.eye(k), -torch.eye(k)]).to(torch.float64)
    x = coords @ basis.T + 3.0  # an offset: the covariance is mean-centred
    assert effective_rank(x) == pytest.approx(k, rel=1e-9)


def test_rank_one_data_has_effective_rank_one():
    direction = torch.randn(8)
    x = torch.linspace(-2, 2, 50).unsqueeze(1) * direction
    assert effective_rank(x) == pytest.approx(1.0, abs=1e-6)


def test_identical_tokens_have_effective_rank_zero():
    assert effective_rank(torch.ones(10, 4)) == 0.0


def test_effective_rank_matches_numpy_on_random_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 12, generator=g) @ torch.randn(12, 12, generator=g)
    assert effective_rank(x) == pytest.approx(numpy_effective_rank(x.double().numpy()), rel=1e-9)


def test_effective_rank_uses_only_masked_tokens_of_a_3d_hidden_state():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(6, 3, 5, generator=g)  # [s, b, d]
    mask = torch.rand(6, 3, generator=g) > 0.4
    expected = numpy_effective_rank(hidden[mask].double().numpy())
    assert effective_rank(hidden, mask) == pytest.approx(expected, rel=1e-9)


def across_sequence_mean_cosine(hidden: torch.Tensor, mask: torch.Tensor) -> float:
    """The exact mean of cos(u_i, u_j) over valid tokens i, j of *different* sequences
    (what the sampled estimator estimates), brute force."""
    cos, s, b = [], hidden.size(0), hidden.size(1)
    for (t1, b1), (t2, b2) in itertools.product(itertools.product(range(s), range(b)), repeat=2):
        if b1 != b2 and mask[t1, b1] and mask[t2, b2]:
            cos.append(torch.nn.functional.cosine_similarity(
                hidden[t1, b1].double(), hidden[t2, b2].double(), dim=0).item())
    return sum(cos) / len(cos)


def test_pair_cosine_uses_exactly_the_drawn_pairs_across_sequences():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 4, 6, generator=g) + 0.5
    mask = torch.ones(5, 4, dtype=torch.bool)
    plan = sample_pairs(4, 5, num_pairs=300, seed=7)
    seq, pos = plan.sequence.view(2, -1)[:, :300], plan.position.view(2, -1)[:, :300]
    assert (seq[0] != seq[1]).all()  # across sentences, never within one
    u = torch.nn.functional.normalize(hidden.double(), dim=-1)
    expected = (u[pos[0], seq[0]] * u[pos[1], seq[1]]).sum(-1).mean().item()
    assert pair_cosine(hidden, mask, num_pairs=300, seed=7) == pytest.approx(expected, rel=1e-12)


def test_pair_cosine_estimates_the_across_sequence_mean_not_the_all_pairs_mean():
    # Sequence b is a cloud around its own direction: within-sequence pairs are much more alike
    # than pairs across sequences, so the two means differ a lot.
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(1, 6, 8, generator=g) * 3
    hidden = centres + torch.randn(7, 6, 8, generator=g)
    mask = torch.rand(7, 6, generator=g) > 0.2
    across = across_sequence_mean_cosine(hidden, mask)
    u = torch.nn.functional.normalize(hidden[mask].double(), dim=-1)
    n = u.size(0)
    all_pairs = ((u.sum(0) @ u.sum(0)).item() - n) / (n * (n - 1))
    assert all_pairs - across > 0.05
    sampled = pair_cosine(hidden, mask, num_pairs=20000, seed=1)
    assert sampled == pytest.approx(across, abs=0.01)
    assert sampled == pair_cosine(hidden, mask, num_pairs=20000, seed=1)  # seeded
    assert sampled != pair_cosine(hidden, mask, num_pairs=20000, seed=2)


def test_pair_cosine_known_values_mask_and_degenerate_batches():
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])  # [N, d]: N one-token sequences
    assert pair_cosine(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    assert pair_cosine(opposite) == pytest.approx(-1.0)
    hidden = torch.tensor([[[1.0, 0.0], [4.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]])  # [s=2, b=2, d=2]
    mask = torch.tensor([[True, True], [False, False]])
    assert pair_cosine(hidden, mask) == pytest.approx(1.0)  # masked tokens never enter a pair
    assert math.isnan(pair_cosine(torch.ones(1, 3)))        # one token: no pair
    assert math.isnan(pair_cosine(torch.randn(5, 1, 3)))    # one sequence: no pair across


def test_geometry_of_microbatches_equals_one_batch_of_all_their_sequences():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(6, 8, 5, generator=g) @ torch.randn(5, 5, generator=g)
    mask = torch.rand(6, 8, generator=g) > 0.3
    whole = geometry_of_batches([(hidden, mask)], num_pairs=500, seed=3)
    parts = geometry_of_batches([(hidden[:, i:i + 2], mask[:, i:i + 2]) for i in range(0, 8, 2)],
                                num_pairs=500, seed=3)
    assert whole["pair_cosine"] == parts["pair_cosine"]  # bit-identical
    assert parts["effective_rank"] == pytest.approx(whole["effective_rank"], rel=1e-12)
    assert whole["effective_rank"] == pytest.approx(effective_rank(hidden, mask), rel=1e-12)
    # The last microbatch alone (what was measured before) is a different number.
    assert effective_rank(hidden[:, 6:], mask[:, 6:]) != pytest.approx(whole["effective_rank"],
                                                                        rel=1e-3)


def test_a_probes_microbatches_share_one_sums_buffer_and_give_the_whole_batch():
    # megatron keeps every microbatch's report until the step ends: d² sums must not be kept
    # once per microbatch; the shared buffer must still give the numbers of the whole batch.
    from megatron_nitp.nitp.metrics import SUMS_KEY, GeometryProbe, reduce_geometry

    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(5, 8, 4, generator=g) @ torch.randn(4, 4, generator=g)
    mask = torch.rand(5, 8, generator=g) > 0.2
    plan = sample_pairs(8, 5, num_pairs=300, seed=2)
    probe = GeometryProbe(plan, micro_batch_size=2, dp_rank=0, dp_size=1)
    reports = []
    for i in range(4):
        mb = probe.next_microbatch()
        assert mb.first_sequence == 2 * i
        reports.append(mb.sums(hidden[:, 2 * i:2 * i + 2], mask[:, 2 * i:2 * i + 2], torch.arange(5)))
    assert len({id(r[SUMS_KEY]) for r in reports}) == 1
    got = reduce_geometry(reports, plan)
    whole = geometry_of_batches([(hidden, mask)], num_pairs=300, seed=2)
    assert got["effective_rank"] == pytest.approx(whole["effective_rank"], rel=1e-12)
    assert got["pair_cosine"] == whole["pair_cosine"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_step_gives_nan_metrics_instead_of_raising(bad):
    # A loss spike on a metrics step must reach the engine's skip-the-step path, not eigvalsh.
    h = torch.randn(2, 8, 16)
    h[0, 3, 5] = bad
    assert math.isnan(effective_rank(h))
    assert math.isnan(pair_cosine(h))
