"""Worker for tests/distributed/test_shift.py: the sharded NITP shift equals the unsharded one.

For each layout (CP, TP, SP) in `--layouts`: shard a seeded z_full [seq, b, d] the way megatron
lays hidden states out, shift every shard with `shift_implicit_target`, reassemble the shards by
global position and compare with torch.roll(z_full, -shift, 0) with the last `shift` rows zeroed;
backpropagate a fixed random weighting through the sharded shift and compare z's gradient with the
unsharded gradient; shift 0 must be the identity; `valid_target_mask` must equal the unsharded
mask. float64 throughout so equality is exact. Prints "PASS <layout>" on global rank 0.
"""

import argparse

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_nitp.nitp.shift import (
    local_global_positions,
    shift_implicit_target,
    valid_target_mask,
)
from megatron_nitp.parallel.distributed import (
    destroy_distributed_model_parallel,
    initialize_distributed,
)

# name: (tp, cp, sequence_parallel, seq_length)
LAYOUTS = {
    "cp2": (1, 2, False, 12),
    "tp2_sp": (2, 1, True, 10),
    "tp2_no_sp": (2, 1, False, 8),  # TP without SP: every TP rank holds the whole sequence
    "cp4": (1, 4, False, 16),
    "tp4_sp": (4, 1, True, 12),
    "cp2_tp2_sp": (2, 2, True, 12),  # chunks of 3 rows: SP shards = whole chunks
    "cp2_tp2_no_sp": (2, 2, False, 8),
}
B, D = 2, 3


def _expected_shift(z_full: torch.Tensor, shift: int) -> torch.Tensor:
    if shift == 0:
        return z_full.clone()
    out = torch.roll(z_full, -shift, 0)
    out[-shift:] = 0
    return out


def _reassemble(local: torch.Tensor, positions: torch.Tensor, seq: int) -> torch.Tensor:
    """Full [seq, ...] tensor from every rank's (rows, positions); checks coverage and agreement
    (DP replicas / non-SP TP ranks hold copies, which must be identical)."""
    world = dist.get_world_size()
    rows = [torch.empty_like(local) for _ in range(world)]
    poss = [torch.empty_like(positions) for _ in range(world)]
    dist.all_gather(rows, local.contiguous())
    dist.all_gather(poss, positions)
    full = torch.full((seq,) + tuple(local.shape[1:]), float("nan"), dtype=local.dtype)
    for r, p in zip(rows, poss):
        seen = ~torch.isnan(full[p].flatten(1)).all(dim=1)
        assert torch.equal(full[p][seen], r[seen]), "replicas disagree"
        full[p] = r
    assert not torch.isnan(full).any(), "some positions are held by no rank"
    return full


def check_layout(name: str) -> None:
    tp, cp, sp, seq = LAYOUTS[name]
    initialize_distributed(tensor_model_parallel_size=tp, context_parallel_size=cp)
    try:
        tp_group = ps.get_tensor_model_parallel_group() if sp else None
        cp_group = ps.get_context_parallel_group()
        positions = local_global_positions(
            seq, ps.get_tensor_model_parallel_rank(), tp, ps.get_context_parallel_rank(), cp, sp
        )
        g = torch.Generator().manual_seed(11)
        z_full = torch.randn(seq, B, D, generator=g, dtype=torch.float64)
        weight = torch.randn(seq, B, D, generator=g, dtype=torch.float64)
        loss_mask_full = (torch.rand(B, seq, generator=g) > 0.2).float()

        for shift in (0, 1, 2):
            z = z_full[positions].clone().requires_grad_(True)
            z_next = shift_implicit_target(z, seq, tp_group=tp_group, cp_group=cp_group, shift=shift)
            if shift == 0:
                assert z_next is z, "shift 0 must return z itself"

            full = _reassemble(z_next.detach(), positions, seq)
            assert torch.equal(full, _expected_shift(z_full, shift)), f"{name} shift {shift}: values"

            # d/dz of sum(z_next * w) over the whole sequence: every rank contributes its rows.
            (z_next * weight[positions]).sum().backward()
            z_ref = z_full.clone().requires_grad_(True)
            (_expected_shift_autograd(z_ref, shift) * weight).sum().backward()
            assert torch.equal(z.grad, z_ref.grad[positions]), f"{name} shift {shift}: grad"

            cp_positions = local_global_positions(seq, 0, 1, ps.get_context_parallel_rank(), cp, False)
            mask = valid_target_mask(
                loss_mask_full[:, cp_positions], seq, ps.get_context_parallel_rank(), cp, shift
            )
            expected_mask = loss_mask_full.clone()
            if shift:
                expected_mask[:, seq - shift :] = 0
            assert torch.equal(mask, expected_mask[:, cp_positions]), f"{name} shift {shift}: mask"
    finally:
        destroy_distributed_model_parallel()
    if dist.get_rank() == 0:
        print(f"PASS {name}", flush=True)


def _expected_shift_autograd(z: torch.Tensor, shift: int) -> torch.Tensor:
    if shift == 0:
        return z
    return torch.cat([z[shift:], torch.zeros_like(z[:shift])], dim=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", required=True)
    for name in parser.parse_args().layouts.split(","):
        check_layout(name)


if __name__ == "__main__":
    main()
