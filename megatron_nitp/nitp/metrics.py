"""Representation metrics the paper monitors (App. D): effective rank and average pair cosine.

Both take hidden states as the model holds them, `[..., d]` (e.g. `[s_local, b, d]` under sequence
parallelism), with an optional boolean mask of valid tokens over the leading dims, and reduce over
the ranks that hold *different* tokens: pass the group (or list of groups) that partitions the
tokens, e.g. `[tp_group]` under SP plus the data-parallel group. Do not include a group whose ranks
hold copies (TP without SP): those tokens would be counted several times.

Both reduce sufficient statistics (float64), so the exact results do not depend on the sharding.
They return python floats and never build a graph.
"""

import math
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.distributed as dist

Groups = Union[None, dist.ProcessGroup, Sequence[dist.ProcessGroup]]


def _groups(group: Groups) -> Iterable[dist.ProcessGroup]:
    if group is None:
        return []
    if isinstance(group, (list, tuple)):
        return [g for g in group if g is not None]
    return [group]


def _all_reduce(t: torch.Tensor, group: Groups) -> torch.Tensor:
    for g in _groups(group):
        if g.size() > 1:
            dist.all_reduce(t, group=g)
    return t


def _valid_tokens(hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """[N, d] float64 rows of the valid tokens."""
    x = hidden.detach().reshape(-1, hidden.size(-1)).to(torch.float64)
    if mask is not None:
        if mask.shape != hidden.shape[:-1]:
            raise ValueError(f"mask {tuple(mask.shape)} must match hidden {tuple(hidden.shape[:-1])}")
        x = x[mask.reshape(-1).to(device=x.device, dtype=torch.bool)]
    return x


@torch.no_grad()
def effective_rank(hidden: torch.Tensor, mask: Optional[torch.Tensor] = None, group: Groups = None) -> float:
    """exp(entropy of the normalised eigenvalues of the mean-centred covariance) of valid tokens.

    Roy & Vetterli's effective rank: k for isotropic data spanning k dimensions, 1 for rank-1 data,
    0.0 when the tokens have no spread (or there are none). Covariance from Σx, Σxxᵀ and N summed
    over `group`; tiny negative eigenvalues (round-off) are clamped to 0.
    """
    x = _valid_tokens(hidden, mask)
    d = x.size(1)
    stats = torch.cat([x.new_tensor([x.size(0)]), x.sum(0), (x.T @ x).flatten()])
    stats = _all_reduce(stats, group)
    n = stats[0].item()
    if n < 1:
        return 0.0
    mean = stats[1 : 1 + d] / n
    cov = stats[1 + d :].view(d, d) / n - torch.outer(mean, mean)
    eig = torch.linalg.eigvalsh((cov + cov.T) / 2).clamp(min=0)
    total = eig.sum()
    if total <= 0:
        return 0.0
    p = eig / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    # A zero vector has no direction: it contributes cosine 0 to every pair it is in.
    return x / x.norm(dim=1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)


def _all_gather_rows(x: torch.Tensor, group: Groups) -> torch.Tensor:
    """Concatenate every rank's rows (uneven counts: pad to the largest, gather, trim)."""
    for g in _groups(group):
        if g.size() == 1:
            continue
        counts = torch.zeros(g.size(), dtype=torch.long, device=x.device)  # NCCL: on x.device
        counts[g.rank()] = x.size(0)
        dist.all_reduce(counts, group=g)
        width = int(counts.max())
        padded = x.new_zeros((width, x.size(1)))
        padded[: x.size(0)] = x
        gathered = x.new_empty((g.size() * width, x.size(1)))
        dist.all_gather_into_tensor(gathered, padded, group=g)
        x = torch.cat([gathered[r * width : r * width + int(n)] for r, n in enumerate(counts)])
    return x


@torch.no_grad()
def pair_cosine(
    hidden: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    group: Groups = None,
    num_pairs: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> float:
    """Average cosine similarity of pairs of distinct valid tokens (nan with fewer than 2 tokens).

    num_pairs=None: the exact mean over all N(N-1) ordered pairs i != j, from u = x/|x| as
    (|Σu|² - Σ|u|²) / (N(N-1)) — the expectation of the paper's random-pair estimate, cheap
    (O(N d), one all-reduce of d+2 numbers) and independent of how tokens are sharded.

    num_pairs=k: the paper's estimator, k pairs (i, j != i) drawn uniformly with `generator`
    (default: seeded 0, so every rank draws the same pairs and returns the same value). The valid
    tokens are all-gathered over `group` first, in rank order, so the drawn pairs — and the value —
    depend on the sharding; only its expectation does not.
    """
    u = _unit_rows(_valid_tokens(hidden, mask))
    if num_pairs is None:
        stats = torch.cat([u.new_tensor([u.size(0), (u * u).sum()]), u.sum(0)])
        stats = _all_reduce(stats, group)
        n, sq_norms, total = stats[0].item(), stats[1].item(), stats[2:]
        if n < 2:
            return float("nan")
        return ((total @ total).item() - sq_norms) / (n * (n - 1))
    u = _all_gather_rows(u, group)
    n = u.size(0)
    if n < 2:
        return float("nan")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    i = torch.randint(0, n, (num_pairs,), generator=generator)
    j = (i + torch.randint(1, n, (num_pairs,), generator=generator)) % n  # uniform over j != i
    return (u[i] * u[j]).sum(1).mean().item()
