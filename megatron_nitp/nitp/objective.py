"""The NITP objective on one microbatch, as in the paper's §3.4:

    z      = stop_grad(output of layer k)             # captured by target.py
    z_next = z shifted left by one position           # shift.py (halo exchange under SP/CP)
    p      = P(h), h = final-norm output               # head.py
    loss_t = 1 - cos(p_t, z_next_t), t valid           # loss.py
  valid_t = loss_mask_t and t+1 < seq_length           # LM-masked positions and the last one drop

Inputs are in megatron's layout: h and z are [s_local, b, d] (s_local = s/(cp*tp) under SP),
loss_mask is [b, s/cp]. Outputs are per-token [b, s/cp] (gathered over TP under SP) so the loss
function treats them exactly like the LM per-token loss.
"""

import torch
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

from .loss import TOKEN_LOSSES, fp32, generic_cosine_token_loss
from .shift import shift_implicit_target, valid_target_mask


def _size(group):
    return group.size() if group is not None else 1


def tp_rows(mask_sb, tp_group, sequence_parallel):
    """Slice [s_cp, b] to this TP rank's SP rows."""
    if not sequence_parallel or tp_group is None or tp_group.size() == 1:
        return mask_sb
    rows = mask_sb.size(0) // tp_group.size()
    start = tp_group.rank() * rows
    return mask_sb[start:start + rows]


def nitp_token_losses(hidden, target, loss_mask, head, config, seq_length,
                      sequence_parallel=False, tp_group=None, cp_group=None):
    """Returns (per-token NITP loss [b, s_cp] zero where invalid, valid mask [b, s_cp])."""
    cp_size = _size(cp_group)
    sp_group = tp_group if sequence_parallel and _size(tp_group) > 1 else None
    shift = config.shift if config.uses_target else 0
    if loss_mask is None:
        loss_mask = torch.ones(hidden.size(1), seq_length // cp_size, device=hidden.device)
    cp_rank = cp_group.rank() if cp_size > 1 else 0
    valid = valid_target_mask(loss_mask, seq_length, cp_rank, cp_size, shift=shift).bool()
    valid_local = tp_rows(valid.T, tp_group, sequence_parallel)  # [s_local, b]

    if config.loss_type == "generic_cosine":
        groups = [g for g in (sp_group, cp_group) if _size(g) > 1]
        # Sequences spread over TP (SP) and CP; one group is enough for either alone.
        assert len(groups) <= 1, "generic_cosine with both SP and CP is not supported"
        per_tok = generic_cosine_token_loss(hidden, valid_local, groups[0] if groups else None)
    else:
        token_loss = TOKEN_LOSSES[config.loss_type]
        z = target.detach() if config.stop_grad else target
        p = head(hidden) if head is not None else hidden
        # The per-token loss runs in fp32 whatever the model dtype, as megatron's LM
        # cross-entropy does: in bf16 the cosine's gradient is off by 1-4% once cos > 0.8.
        # (A no-op in fp32 runs; in bf16 runs autograd keeps fp32 copies of p and z.)
        if shift and sp_group is None and cp_size == 1:
            # The whole sequence is local: pair p_t with z_{t+shift} through views rather than
            # build a shifted copy of z ([s, b, d], kept for backward by the loss). The last
            # `shift` positions have no target; they are invalid and get 0.
            per_tok = token_loss(fp32(p[:-shift]), fp32(z[shift:]))
            per_tok = torch.cat([per_tok, per_tok.new_zeros(shift, per_tok.size(1))])
        else:
            z = shift_implicit_target(z, seq_length, tp_group=sp_group, cp_group=cp_group,
                                      shift=shift)
            per_tok = token_loss(fp32(p), fp32(z))
    per_tok = per_tok.masked_fill(~valid_local, 0.0)
    if sp_group is not None:
        # Every TP rank then holds the whole per-token loss, as for the LM loss; the backward
        # of this gather is a split (each rank's own rows), not a reduce-scatter.
        per_tok = gather_from_sequence_parallel_region(
            per_tok, tensor_parallel_output_grad=False, group=tp_group)
    return per_tok.T, valid
