"""Effective rank and pair cosine (paper App. D) on data whose answer is known."""

import itertools
import math

import numpy as np
import pytest
import torch

from megatron_nitp.nitp.metrics import effective_rank, pair_cosine


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


def brute_force_pair_cosine(x: torch.Tensor) -> float:
    x = x.double()
    cos = [torch.nn.functional.cosine_similarity(x[i], x[j], dim=0).item()
           for i, j in itertools.permutations(range(len(x)), 2)]
    return sum(cos) / len(cos)


def test_exact_pair_cosine_equals_brute_force_mean_over_distinct_pairs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=g) + 0.5
    assert pair_cosine(x) == pytest.approx(brute_force_pair_cosine(x), rel=1e-12)


def test_pair_cosine_respects_mask_and_known_values():
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])
    assert pair_cosine(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    assert pair_cosine(opposite) == pytest.approx(-1.0)
    hidden = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[5.0, 0.0]]])  # [s=3, b=1, d=2]
    mask = torch.tensor([[True], [False], [True]])
    assert pair_cosine(hidden, mask) == pytest.approx(1.0)
    assert math.isnan(pair_cosine(torch.ones(1, 3)))


def test_sampled_pair_cosine_is_seeded_and_estimates_the_exact_value():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g) + 0.3
    exact = pair_cosine(x)
    a = pair_cosine(x, num_pairs=20000, generator=torch.Generator().manual_seed(5))
    b = pair_cosine(x, num_pairs=20000, generator=torch.Generator().manual_seed(5))
    assert a == b
    assert a == pytest.approx(exact, abs=0.01)
    assert pair_cosine(x, num_pairs=20000) == pair_cosine(x, num_pairs=20000)  # default seed
