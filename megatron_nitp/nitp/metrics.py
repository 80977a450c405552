"""Representation geometry the paper monitors (App. D), on the last-layer hidden states.

- Effective rank: "collecting all valid token representations within a mini-batch, applying
  mean-centering, and computing the entropy-based effective rank from the eigenvalue spectrum of
  the empirical covariance matrix". Here: every valid token (loss_mask) of the step's whole
  mini-batch, i.e. all microbatches, all data-/context-parallel ranks and all sequence-parallel
  shards, from the sums N, Σx, Σxxᵀ (float64) accumulated per microbatch and summed over ranks.
- Pair cosine: "a fixed number of token pairs is sampled across sentences, and cosine similarity
  is computed after ℓ2 normalization". Here: `num_pairs` pairs of tokens of two *different*
  sequences of the mini-batch, drawn uniformly over (sequence, position) with a per-step seed,
  the same draw on every rank (`sample_pairs`). Each rank contributes the unit vectors of the
  drawn tokens it holds and zeros elsewhere; the sum over ranks assembles them exactly (x + 0 is
  exact), so the value is bit-identical whatever the layout. 2 x num_pairs candidates are drawn
  and the first num_pairs whose two tokens are both valid are used (fewer only when more than
  half of the candidates touch a masked token).

Flow during training (data moves one way): the trainer builds a `GeometryProbe` for a metrics
step -> the forward step hands each microbatch's `MicrobatchGeometry` to the model -> the last
pipeline chunk returns `geometry_sums(...)` with its output -> the loss function puts them in its
report (`GEOMETRY_KEYS`) -> after the schedule `reduce_geometry` sums microbatches and ranks.

Groups: pass the groups whose ranks hold *different* tokens (data parallel with context parallel;
tensor parallel only under sequence parallelism). A group whose ranks hold copies (TP without
SP) would count tokens several times. Every tensor handed to a collective lives on the hidden
states' device (NCCL needs it).

Memory on a metrics step: megatron's schedule keeps every microbatch's report until the step
ends, and d² float64 sums per microbatch would add up (d = 3072, 96 microbatches: 7 GB). So the
microbatches of one `GeometryProbe` add their sums into one buffer in place and every report
refers to that same tensor (`reduce_geometry` counts each tensor once): 8 (d² + d + 1) bytes per
step (75 MB at d = 3072), plus the drawn tokens each microbatch holds.
"""

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.distributed as dist

Groups = Union[None, dist.ProcessGroup, Sequence[dist.ProcessGroup]]

SUMS_KEY, PAIRS_KEY = "geometry sums", "geometry pairs"
GEOMETRY_KEYS = (SUMS_KEY, PAIRS_KEY)
DEFAULT_NUM_PAIRS = 1024


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


def _covariance_sums(x: torch.Tensor) -> torch.Tensor:
    """[1 + d + d²] float64: N, Σx, Σxxᵀ of the rows of x [N, d]."""
    return torch.cat([x.new_tensor([x.size(0)]), x.sum(0), (x.T @ x).flatten()])


def effective_rank_from_sums(sums: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank of the mean-centred covariance from N, Σx, Σxxᵀ: k for
    isotropic data spanning k dimensions, 1 for rank-1 data, 0.0 when the tokens have no spread
    (or there are none), nan when the sums are not finite (a diverging step: the engine skips
    it, eigvalsh would raise). Tiny negative eigenvalues (round-off) are clamped to 0."""
    if not bool(torch.isfinite(sums).all()):
        return float("nan")
    d = int(round((math.sqrt(4 * sums.numel() - 3) - 1) / 2))
    n = sums[0].item()
    if n < 1:
        return 0.0
    mean = sums[1 : 1 + d] / n
    cov = sums[1 + d :].view(d, d) / n - torch.outer(mean, mean)
    eig = torch.linalg.eigvalsh((cov + cov.T) / 2).clamp(min=0)
    total = eig.sum()
    if total <= 0:
        return 0.0
    p = eig / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


@torch.no_grad()
def effective_rank(hidden: torch.Tensor, mask: Optional[torch.Tensor] = None, group: Groups = None) -> float:
    """Effective rank of the valid tokens of `hidden` [..., d], summed over `group`."""
    return effective_rank_from_sums(_all_reduce(_covariance_sums(_valid_tokens(hidden, mask)), group))


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    # A zero vector has no direction: it contributes cosine 0 to every pair it is in.
    return x / x.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)


# -- the step's plan of token pairs -------------------------------------------------------------


@dataclass(frozen=True)
class PairPlan:
    """Candidate token pairs of one mini-batch, the same on every rank. Endpoint e < C is the
    first token of candidate e, endpoint C + e its second; `sequence`/`position` are [2C]."""

    sequence: torch.LongTensor
    position: torch.LongTensor
    num_pairs: int

    @property
    def num_endpoints(self) -> int:
        return self.sequence.numel()


def sample_pairs(num_sequences: int, seq_length: int, num_pairs: int = DEFAULT_NUM_PAIRS,
                 seed: int = 0) -> PairPlan:
    """2 x num_pairs candidate pairs (i, j) with i, j in different sequences, uniform over
    (sequence, position); a CPU generator seeded with `seed` makes every rank draw the same."""
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    g = torch.Generator().manual_seed(seed)
    c = 2 * num_pairs
    if num_sequences < 2:  # no pair across sentences exists: nothing is drawn (value: nan)
        empty = torch.zeros(0, dtype=torch.long)
        return PairPlan(empty, empty, num_pairs)
    first = torch.randint(0, num_sequences, (c,), generator=g)
    second = (first + torch.randint(1, num_sequences, (c,), generator=g)) % num_sequences
    position = torch.randint(0, seq_length, (2 * c,), generator=g)
    return PairPlan(torch.cat([first, second]), position, num_pairs)


@dataclass
class MicrobatchGeometry:
    """What the model needs to measure one microbatch: the step's plan and the mini-batch index
    of this microbatch's first sequence (its sequences are consecutive)."""

    plan: PairPlan
    first_sequence: int
    micro_batch_size: int
    shared: Optional[dict] = None  # the probe's running sums (one buffer for all microbatches)

    @torch.no_grad()
    def sums(self, hidden: torch.Tensor, valid: torch.Tensor,
             positions: torch.LongTensor) -> Dict[str, torch.Tensor]:
        """hidden [s_local, b, d] (final-norm output as the model holds it), valid [s_local, b]
        bool, positions [s_local]: the global position of each local row. Returns the report
        entries: SUMS_KEY [1 + d + d²] and PAIRS_KEY [n, d + 2] = (endpoint, valid, unit vector)
        for the n drawn tokens held here."""
        device = hidden.device
        x = hidden.detach().to(torch.float64)
        s_local, b, d = x.shape
        sums = _covariance_sums(_valid_tokens(x, valid))
        if self.shared is not None:
            if self.shared.get(SUMS_KEY) is None:
                self.shared[SUMS_KEY] = sums
            else:
                self.shared[SUMS_KEY] += sums
                sums = self.shared[SUMS_KEY]
        out = {SUMS_KEY: sums}
        plan = self.plan
        seq = plan.sequence.to(device) - self.first_sequence
        row_of = torch.full((int(positions.max()) + 1 if positions.numel() else 1,), -1,
                            dtype=torch.long, device=device)
        row_of[positions.to(device)] = torch.arange(s_local, device=device)
        pos = plan.position.to(device)
        in_range = pos < row_of.numel()
        rows = torch.where(in_range, row_of[pos.clamp(max=row_of.numel() - 1)], -1)
        held = (seq >= 0) & (seq < min(b, self.micro_batch_size)) & (rows >= 0)
        e = held.nonzero().squeeze(1)
        r, col = rows[e], seq[e]
        u = _unit_rows(x[r, col])
        flag = valid.to(device=device)[r, col].to(torch.float64)
        out[PAIRS_KEY] = torch.cat([e.to(torch.float64).unsqueeze(1), flag.unsqueeze(1), u], 1)
        return out


class GeometryProbe:
    """One metrics step's measurement: hands out each microbatch's `MicrobatchGeometry` in
    order. Sequence numbering follows the data iterators (data/iterators.py, as Megatron-LM's
    sampler): microbatch m of data-parallel rank r holds mini-batch sequences
    [(m * dp + r) * mbs, (m * dp + r + 1) * mbs)."""

    def __init__(self, plan: PairPlan, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.plan, self.mbs, self.dp_rank, self.dp_size = plan, micro_batch_size, dp_rank, dp_size
        self._next = 0
        self._sums = {}

    @classmethod
    def for_step(cls, iteration: int, seed: int, global_batch_size: int, seq_length: int,
                 micro_batch_size: int, dp_rank: int, dp_size: int,
                 num_pairs: int = DEFAULT_NUM_PAIRS) -> "GeometryProbe":
        plan = sample_pairs(global_batch_size, seq_length, num_pairs,
                            seed=seed * 1_000_003 + iteration)
        return cls(plan, micro_batch_size, dp_rank, dp_size)

    def next_microbatch(self) -> MicrobatchGeometry:
        m, self._next = self._next, self._next + 1
        return MicrobatchGeometry(self.plan, (m * self.dp_size + self.dp_rank) * self.mbs,
                                  self.mbs, self._sums)


# -- after the schedule ---------------------------------------------------------------------------


def pair_cosine_from_endpoints(endpoints: torch.Tensor, num_pairs: int) -> float:
    """endpoints [2C, d + 1] = (valid, unit vector), assembled over ranks: the mean cosine of
    the first num_pairs candidates whose two tokens are valid (nan when there is none)."""
    c = endpoints.size(0) // 2
    a, b = endpoints[:c], endpoints[c:]
    ok = ((a[:, 0] > 0.5) & (b[:, 0] > 0.5)).nonzero().squeeze(1)[:num_pairs]
    if ok.numel() == 0:
        return float("nan")
    return (a[ok, 1:] * b[ok, 1:]).sum(1).mean().item()


@torch.no_grad()
def reduce_geometry(reports: Sequence[Dict[str, torch.Tensor]], plan: PairPlan,
                    group: Groups = None) -> Dict[str, float]:
    """Effective rank and pair cosine of the mini-batch from the microbatches' report entries
    (`GEOMETRY_KEYS`; any other keys are ignored), summed over `group`. One all-reduce per group
    of one buffer on the reports' device."""
    reports = [r for r in reports if SUMS_KEY in r]
    if not reports:
        return {}
    # Microbatches of one probe share one running-sum tensor: count each tensor once.
    unique = list({id(r[SUMS_KEY]): r[SUMS_KEY] for r in reports}.values())
    sums = torch.stack(unique).sum(0)
    width = reports[0][PAIRS_KEY].size(1) - 1
    endpoints = sums.new_zeros(plan.num_endpoints, width)
    for r in reports:
        rows = r[PAIRS_KEY]
        endpoints[rows[:, 0].long()] = rows[:, 1:]
    buf = _all_reduce(torch.cat([sums, endpoints.flatten()]), group)
    sums, endpoints = buf[: sums.numel()], buf[sums.numel():].view(-1, width)
    return {"effective_rank": effective_rank_from_sums(sums),
            "pair_cosine": pair_cosine_from_endpoints(endpoints, plan.num_pairs)}


@torch.no_grad()
def pair_cosine(hidden: torch.Tensor, mask: Optional[torch.Tensor] = None,
                num_pairs: int = DEFAULT_NUM_PAIRS, seed: int = 0) -> float:
    """App. D's pair cosine of one unsharded batch: hidden [s, b, d] (sequences along dim 1;
    a 2-D [N, d] is N one-token sequences), mask [s, b]. The same code path as training."""
    if hidden.dim() == 2:
        hidden = hidden.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    s, b, _ = hidden.shape
    if mask is None:
        mask = torch.ones(s, b, dtype=torch.bool, device=hidden.device)
    plan = sample_pairs(b, s, num_pairs, seed)
    if plan.num_endpoints == 0:
        return float("nan")
    probe = MicrobatchGeometry(plan, 0, b)
    report = probe.sums(hidden, mask.bool(), torch.arange(s, device=hidden.device))
    return reduce_geometry([report], plan)["pair_cosine"]


def geometry_of_batches(hidden_and_masks: List, num_pairs: int = DEFAULT_NUM_PAIRS,
                        seed: int = 0) -> Dict[str, float]:
    """Both metrics over several microbatches [(hidden [s, b, d], mask [s, b])] taken as one
    mini-batch (sequences numbered in order), in one process."""
    s = hidden_and_masks[0][0].size(0)
    total = sum(h.size(1) for h, _ in hidden_and_masks)
    plan = sample_pairs(total, s, num_pairs, seed)
    reports, first = [], 0
    for h, m in hidden_and_masks:
        probe = MicrobatchGeometry(plan, first, h.size(1))
        reports.append(probe.sums(h, m.bool(), torch.arange(s, device=h.device)))
        first += h.size(1)
    return reduce_geometry(reports, plan)
