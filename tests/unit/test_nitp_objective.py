"""The NITP objective against an independent plain-PyTorch computation (one process).

Covers: loss value, shift, validity mask, stop-gradient, every loss type, no projector, shift 0,
start step, the generic cosine baseline, and the loss function's normalisation.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_nitp.nitp.config import NITPConfig, NITPConfigError
from megatron_nitp.nitp.loss import nitp_loss_func


def tiny_config():
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=2,
                             add_bias_linear=False, gated_linear_unit=True,
                             activation_func=F.silu, bias_activation_fusion=False)


def make_head(cfg: NITPConfig):
    from megatron_nitp.nitp.head import NITPHead, get_nitp_head_spec

    torch.manual_seed(0)
    return NITPHead(tiny_config(), get_nitp_head_spec(False), cfg.head_ffn_multiplier)


def reference_head(head, h):
    """SwiGLU from the head's raw weights: megatron stores fc1 as [gate; up]."""
    w1 = head.mlp.linear_fc1.weight
    w2 = head.mlp.linear_fc2.weight
    gate, up = torch.chunk(w1, 2, dim=0)
    return (F.silu(h @ gate.T) * (h @ up.T)) @ w2.T


def reference_loss(p, z, loss_mask, shift, kind):
    """Plain loops: position t is compared to z[t + shift]; valid iff mask[t] and t+shift < s."""
    s, b, _ = p.shape
    total, count = 0.0, 0
    for t in range(s):
        for j in range(b):
            if t + shift >= s or not loss_mask[j, t]:
                continue
            a, c = p[t, j], z[t + shift, j]
            if kind == "cosine":
                v = 1 - (a @ c) / (a.norm() * c.norm())
            elif kind == "mse":
                v = ((a - c) ** 2).mean()
            elif kind == "smooth_l1":
                d = (a - c).abs()
                v = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
            elif kind == "kl":
                q = torch.softmax(c, -1)
                v = (q * (torch.log(q) - torch.log_softmax(a, -1))).sum()
            total, count = total + v, count + 1
    return total / count, count


def run_objective(cfg, h, z, loss_mask, head):
    from megatron_nitp.nitp.objective import nitp_token_losses

    per_tok, valid = nitp_token_losses(h, z, loss_mask, head, cfg, seq_length=h.size(0))
    return per_tok.sum() / valid.sum(), valid


def inputs(s=7, b=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(s, b, d, generator=g, requires_grad=True)
    z_src = torch.randn(s, b, d, generator=g, requires_grad=True)
    loss_mask = torch.ones(b, s)
    loss_mask[1, 2] = 0  # an LM-masked position must be excluded
    return h, z_src, loss_mask


@pytest.mark.parametrize("kind", ["cosine", "mse", "smooth_l1", "kl"])
@pytest.mark.parametrize("shift", [1, 0])
def test_loss_value_matches_reference(mp, kind, shift):
    cfg = NITPConfig(enabled=True, loss_type=kind, shift=shift)
    head = make_head(cfg)
    h, z, mask = inputs()
    got, valid = run_objective(cfg, h, z, mask, head)
    want, count = reference_loss(reference_head(head, h), z, mask, shift, kind)
    assert valid.sum().item() == count
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_mask_drops_last_position_and_lm_masked_positions(mp):
    cfg = NITPConfig(enabled=True)
    h, z, mask = inputs(s=5, b=2)
    _, valid = run_objective(cfg, h, z, mask, make_head(cfg))
    want = mask.bool().clone()
    want[:, -1] = False
    assert torch.equal(valid, want)


def test_no_projector_aligns_hidden_state_directly(mp):
    cfg = NITPConfig(enabled=True, projector="none")
    h, z, mask = inputs()
    got, _ = run_objective(cfg, h, z, mask, None)
    want, _ = reference_loss(h, z, mask, 1, "cosine")
    torch.testing.assert_close(got, want)


def test_stop_grad_blocks_the_target_path(mp):
    h, z, mask = inputs()
    cfg = NITPConfig(enabled=True)
    loss, _ = run_objective(cfg, h, z, mask, make_head(cfg))
    loss.backward()
    assert z.grad is None and h.grad is not None and h.grad.abs().sum() > 0

    h, z, mask = inputs()
    cfg = NITPConfig(enabled=True, stop_grad=False)
    loss, _ = run_objective(cfg, h, z, mask, make_head(cfg))
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # Shifted by one: row 0 of z is never a target, so it gets no gradient.
    assert z.grad[0].abs().sum() == 0


def test_generic_cosine_is_mean_pair_cosine_within_sequences(mp):
    cfg = NITPConfig(enabled=True, loss_type="generic_cosine")
    h, z, mask = inputs(s=6, b=2)
    got, valid = run_objective(cfg, h, None, mask, None)
    pair_means = []
    for j in range(2):
        rows = [h[t, j] for t in range(6) if mask[j, t]]
        cos = [F.cosine_similarity(a, c, dim=0) for i, a in enumerate(rows)
               for k, c in enumerate(rows) if i != k]
        pair_means.append((torch.stack(cos).mean(), len(rows)))
    # The per-token form averages to the token-weighted mean of per-sequence pair means.
    want = sum(m * n for m, n in pair_means) / sum(n for _, n in pair_means)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert valid.sum() == mask.sum()  # no shift: the last position counts


def test_start_step_zeroes_the_weight_until_it_is_reached():
    cfg = NITPConfig(enabled=True, loss_weight=0.7, start_step=3)
    assert [cfg.weight_at(i) for i in range(5)] == [0.0, 0.0, 0.0, 0.7, 0.7]


def test_loss_func_adds_lambda_times_mean_over_valid_tokens():
    lm = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    loss_mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    nitp = torch.tensor([[0.5, 0.25, 0.0, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    total, n, report = nitp_loss_func(loss_mask, 0.5, False, (lm, nitp, valid))
    # megatron's schedule divides by n: (lm_sum + w * nitp_mean * n) / n
    assert n.item() == 3
    assert math.isclose(total.item() / 3, (1 + 2 + 4) / 3 + 0.5 * 0.375, rel_tol=1e-6)
    assert torch.allclose(report["nitp loss"], torch.tensor([0.75, 2.0]))
    # per-token mode: sums, normalised later by the global LM token count
    total, _, _ = nitp_loss_func(loss_mask, 0.5, True, (lm, nitp, valid))
    assert math.isclose(total.item(), 7 + 0.5 * 0.75, rel_tol=1e-6)
    # weight 0 (before start step): the gradient sees only the LM loss, NITP is still logged
    total, _, report = nitp_loss_func(loss_mask, 0.0, False, (lm, nitp, valid))
    assert math.isclose(total.item(), 7.0) and "nitp loss" in report


@pytest.mark.parametrize("kwargs,option", [
    (dict(target_layer=4), "--nitp-target-layer"),
    (dict(target_layer=-1), "--nitp-target-layer"),
    (dict(loss_weight=float("nan")), "--nitp-loss-weight"),
    (dict(loss_weight=-1.0), "--nitp-loss-weight"),
    (dict(loss_type="l2"), "--nitp-loss-type"),
    (dict(head_ffn_multiplier=3), "--nitp-head-ffn-multiplier"),
])
def test_bad_config_names_the_option(kwargs, option):
    cfg = NITPConfig(enabled=True, **kwargs)
    with pytest.raises(NITPConfigError, match=option):
        cfg.validate(num_layers=4, hidden_size=10, tensor_model_parallel_size=4)
