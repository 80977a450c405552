"""Tensor correspondences written once, read both ways (as torchtitan's state_dict_adapter inverts
its from-HF map).

A family's mapping is a list of rules (hf_mapping, hf_deepseek): most are `Rename` (one megatron
name = one HF name); the rest carry one of the few real layout changes. `convert` walks the list in
order for either direction: it reads each rule's source tensors from a `Tensors` side, which
records what was read, and writes the other side's tensors in the same order (so an export writes
its tensors, and shards, in a fixed order). A source tensor no rule reads is an error.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from . import ConversionError

TO_HF, FROM_HF = "to_hf", "from_hf"


class Tensors:
    """One side's tensors, with the names read so far."""

    def __init__(self, tensors: Dict[str, torch.Tensor], missing: str, unused: str,
                 ignored: Callable[[str], bool] = lambda name: False):
        self.tensors, self.used = tensors, set()
        self._missing, self._unused, self._ignored = missing, unused, ignored

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise ConversionError(f"{self._missing} {name!r}")
        self.used.add(name)
        return self.tensors[name]

    def zero_or_absent(self, name: str, what: str) -> None:
        """An HF tensor megatron-nitp has no counterpart for: read only when it is zero."""
        if name in self.tensors:
            self.used.add(name)
            if torch.count_nonzero(self.tensors[name]):
                raise ConversionError(f"{name}: non-zero {what} (megatron-nitp models have none)")

    def check_all_used(self) -> None:
        leftover = sorted(k for k in self.tensors if k not in self.used and not self._ignored(k))
        if leftover:
            raise ConversionError(f"{self._unused}: {', '.join(leftover[:5])}"
                                  + (" ..." if len(leftover) > 5 else ""))


def gate_up(fc1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU fc1 at TP1 is [gate; up] (dist-ckpt re-interleaves a TP-sharded fc1 on load)."""
    gate, up = fc1.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


# -- rules: each has to_hf(src, out) and from_hf(src, out) -----------------------------------

@dataclass(frozen=True)
class Rename:
    megatron: str
    hf: str

    def to_hf(self, src: Tensors, out: dict) -> None:
        out[self.hf] = src.take(self.megatron)

    def from_hf(self, src: Tensors, out: dict) -> None:
        out[self.megatron] = src.take(self.hf)


@dataclass(frozen=True)
class GateUp:
    """megatron's SwiGLU fc1 [gate; up] = HF gate_proj, up_proj."""
    fc1: str
    gate: str
    up: str

    def to_hf(self, src: Tensors, out: dict) -> None:
        out[self.gate], out[self.up] = gate_up(src.take(self.fc1))

    def from_hf(self, src: Tensors, out: dict) -> None:
        out[self.fc1] = torch.cat([src.take(self.gate), src.take(self.up)], dim=0)


@dataclass(frozen=True)
class ZeroOnly:
    """An HF tensor with no megatron counterpart: never exported, imported only when zero."""
    hf: str
    what: str

    def to_hf(self, src: Tensors, out: dict) -> None:
        pass

    def from_hf(self, src: Tensors, out: dict) -> None:
        src.zero_or_absent(self.hf, self.what)


@dataclass(frozen=True)
class Experts:
    """Routed experts, per expert on both sides (`{m}local_experts.{e}.linear_fc1.weight`,
    `{h}{e}.gate_proj.weight`); on import also transformers 5's fused in-memory form
    (`{h}gate_up_proj` [E, 2I, d] with [gate; up] rows like megatron's fc1, `{h}down_proj`)."""
    m: str  # "...mlp.experts."
    h: str  # "...mlp.experts."
    num_experts: int

    def _expert(self, e: int) -> Tuple[GateUp, Rename]:
        m, h = f"{self.m}local_experts.{e}.", f"{self.h}{e}."
        return (GateUp(m + "linear_fc1.weight", h + "gate_proj.weight", h + "up_proj.weight"),
                Rename(m + "linear_fc2.weight", h + "down_proj.weight"))

    def to_hf(self, src: Tensors, out: dict) -> None:
        for e in range(self.num_experts):
            for rule in self._expert(e):
                rule.to_hf(src, out)

    def from_hf(self, src: Tensors, out: dict) -> None:
        fused = self.h + "gate_up_proj" in src
        if fused:
            all_fc1, all_fc2 = src.take(self.h + "gate_up_proj"), src.take(self.h + "down_proj")
        for e in range(self.num_experts):
            fc1, fc2 = self._expert(e)
            if fused:
                out[fc1.fc1], out[fc2.megatron] = all_fc1[e].contiguous(), all_fc2[e].contiguous()
            else:
                fc1.from_hf(src, out)
                out[fc2.megatron] = src.take(fc2.hf).contiguous()


def swiglu_mlp(m: str, h: str) -> list:
    """A SwiGLU MLP under prefixes m / h: linear_fc1, linear_fc2 = gate_proj + up_proj, down_proj"""
    return [GateUp(m + "linear_fc1.weight", h + "gate_proj.weight", h + "up_proj.weight"),
            Rename(m + "linear_fc2.weight", h + "down_proj.weight")]


def rules_for(names: List[Tuple[str, str]], m: str, h: str) -> List[Rename]:
    """Renames of a (megatron suffix, HF suffix) table under prefixes m and h."""
    return [Rename(m + a, h + b) for a, b in names]


# -- the walk ----------------------------------------------------------------------------------

def apply(rules: Sequence, src: Tensors, direction: str,
          out: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """`rules` read from `src` in one direction (TO_HF or FROM_HF), written into `out`."""
    out = {} if out is None else out
    for rule in rules:
        getattr(rule, direction)(src, out)
    return out


def convert(src: Tensors, direction: str, embedding: Sequence, layers: Iterable[Sequence],
            final: Sequence, progress: Optional[Callable[[int], None]] = None
            ) -> Dict[str, torch.Tensor]:
    """The whole model: embedding, each layer (progress(1) after each), final norm and head, then
    the check that every source tensor was read."""
    out = apply(embedding, src, direction)
    for rules in layers:
        apply(rules, src, direction, out)
        if progress:
            progress(1)
    apply(final, src, direction, out)
    src.check_all_used()
    return out
