"""The NITP per-token losses, and the megatron loss function that adds them to the LM loss.

Per-token losses take the (projected) final hidden state p_t and the shifted implicit target
z_{t+1}, both [s, b, d], and return [s, b]. The microbatch loss function combines them with the
LM loss so that megatron-core's schedule (which divides by the token count and the number of
microbatches, see `forward_step_calc_loss`) and DDP (which averages over DP) deliver exactly the
single-process gradient of  L_NTP + lambda * L_NITP.
"""

import torch
import torch.nn.functional as F


def fp32(x):
    """x in at least fp32 (bf16/fp16 are upcast; fp64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def cosine_token_loss(p, z, eps=1e-8):
    """1 - cos(p, z), each norm clamped at eps as in F.cosine_similarity. Zero target rows (no
    next position) give 1, and are masked by the caller.

    Written out rather than F.cosine_similarity, which keeps z / |z| ([s, b, d], a copy of the
    target) alive for backward; here autograd keeps only p, z (alive anyway: the next layer
    saved it) and [s, b] norms."""
    dot = (p * z).sum(dim=-1)
    p_norm = torch.linalg.vector_norm(p, dim=-1).clamp_min(eps)
    z_norm = torch.linalg.vector_norm(z, dim=-1).clamp_min(eps)
    return 1.0 - dot / (p_norm * z_norm)


def mse_token_loss(p, z):
    return (p - z).pow(2).mean(dim=-1)


def smooth_l1_token_loss(p, z):
    return F.smooth_l1_loss(p, z, reduction="none", beta=1.0).mean(dim=-1)


def kl_token_loss(p, z):
    """KL(softmax(z) || softmax(p)) over the hidden dimension: the paper's 'distillation' row."""
    log_q = F.log_softmax(fp32(z), dim=-1)
    log_p = F.log_softmax(fp32(p), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)


TOKEN_LOSSES = {
    "cosine": cosine_token_loss,
    "mse": mse_token_loss,
    "smooth_l1": smooth_l1_token_loss,
    "kl": kl_token_loss,
}


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose downstream losses differ per rank: backward must sum too."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        torch.distributed.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


def generic_cosine_token_loss(h, valid, group=None):
    """The paper's generic cosine regularisation baseline (Table 3): mean cosine between the
    final hidden states of distinct valid tokens of the same sequence, written per token as
    u_i . (S - u_i) / (n - 1) with S the sum of unit vectors of the sequence, so that the mean
    over valid tokens is the mean pair cosine. `group`: ranks holding other parts of the same
    sequences (TP under SP, CP).  h: [s, b, d]; valid: [s, b] bool.
    """
    u = F.normalize(h.float(), dim=-1) * valid.unsqueeze(-1)
    stats = torch.cat([u.sum(dim=0), valid.sum(dim=0, keepdim=True).T.to(u.dtype)], dim=-1)
    if group is not None and torch.distributed.get_world_size(group) > 1:
        stats = _AllReduceSum.apply(stats, group)
    seq_sum, n = stats[..., :-1], stats[..., -1]  # [b, d], [b]
    pair = (u * (seq_sum.unsqueeze(0) - u)).sum(dim=-1) / (n - 1).clamp(min=1).unsqueeze(0)
    return pair


def nitp_loss_func(loss_mask, nitp_weight, calculate_per_token_loss, output):
    """Megatron 3-tuple loss function for one microbatch.

    output: the last stage's model output: either the LM per-token loss [b, s] (NTP) or
    (lm_loss [b, s], nitp_loss [b, s] zero where invalid, nitp_valid [b, s]); on a metrics step
    a 4th element, App. D's sums of the microbatch (nitp_loss/nitp_valid None for NTP).
    Returns (loss to backprop, LM token count, {name: [sum, count]} for logging, plus the
    geometry sums as they are: `nitp.metrics.reduce_geometry` reduces them).
    """
    geometry = None
    if isinstance(output, tuple):
        lm, nitp_tok, nitp_valid, *rest = output
        geometry = rest[0] if rest else None
    else:
        lm, nitp_tok, nitp_valid = output, None, None
    mask = loss_mask.reshape(-1).float()
    lm_sum = torch.sum(lm.reshape(-1).float() * mask)
    num_tokens = mask.sum().to(torch.int)
    total = lm_sum
    report = {"lm loss": torch.stack([lm_sum.detach(), mask.sum()])}
    if nitp_tok is not None:
        nitp_sum = nitp_tok.float().sum()
        n_nitp = nitp_valid.float().sum()
        if nitp_weight:
            if calculate_per_token_loss:
                # megatron normalises every summed loss by the global LM token count.
                total = total + nitp_weight * nitp_sum
            else:
                # The schedule divides by num_tokens: pre-multiply so the NITP term is its
                # own mean over valid NITP tokens.
                total = total + nitp_weight * nitp_sum / n_nitp.clamp(min=1) * mask.sum()
        report["nitp loss"] = torch.stack([nitp_sum.detach(), n_nitp])
    if geometry is not None:
        report.update(geometry)
    return total, num_tokens, report
