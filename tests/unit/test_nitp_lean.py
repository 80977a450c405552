"""What the NITP objective keeps in memory between forward and backward (issue #5, "lean").

- the cosine loss keeps no copy of the implicit target: only the head output p and views of z,
- --nitp-head-recompute keeps only the head's input, and gives bit-identical gradients.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_nitp.nitp.config import NITPConfig

S, B, D = 12, 2, 16


def make_head(recompute):
    from megatron.core.transformer import TransformerConfig
    from megatron_nitp.nitp.head import NITPHead, get_nitp_head_spec

    config = TransformerConfig(num_layers=2, hidden_size=D, num_attention_heads=2,
                               add_bias_linear=False, gated_linear_unit=True,
                               activation_func=F.silu, bias_activation_fusion=False)
    return NITPHead(config, get_nitp_head_spec(False), 4, recompute)


def saved_storages(fn):
    """Run fn() and return {storage pointer: bytes} of every tensor autograd saved for backward
    (what stays alive until backward; non-reentrant checkpoint hides its recomputed ones)."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def objective(cfg, h, z, head):
    from megatron_nitp.nitp.objective import nitp_token_losses

    per_tok, valid = nitp_token_losses(h, z, torch.ones(B, S), head, cfg, seq_length=S)
    return per_tok.sum() / valid.sum()


@pytest.mark.parametrize("shift", [1, 0])
def test_cosine_objective_keeps_no_copy_of_the_target(mp, shift):
    # (The MSE / smooth-L1 ablations keep their residual p - z: their backward needs it.)
    cfg = NITPConfig(enabled=True, projector="none", shift=shift)
    h = torch.randn(S, B, D, requires_grad=True)
    z = torch.randn(S, B, D)  # the captured layer output: alive anyway (the next layer saved it)
    _, saved = saved_storages(lambda: objective(cfg, h, z, None))
    row_bytes = B * D * h.element_size()
    big = {ptr for ptr, n in saved.items() if n >= row_bytes * (S - 1)}
    # Anything [s, b, d]-sized that is kept must be h or z themselves (views included).
    assert big <= {h.untyped_storage().data_ptr(), z.untyped_storage().data_ptr()}, saved


def test_head_recompute_keeps_only_the_head_input(mp):
    h = torch.randn(S, B, D, requires_grad=True)
    for recompute, most in ((False, None), (True, 0)):
        head = make_head(recompute)
        _, saved = saved_storages(lambda: head(h))
        head_bytes = sum(n for ptr, n in saved.items() if ptr != h.untyped_storage().data_ptr())
        if most is None:
            # Without recompute: fc1 output (2 x 4d), SiLU output and the fc2 input (4d each)...
            assert head_bytes >= 16 * S * B * D * h.element_size()
        else:
            assert head_bytes == most, saved


def test_head_recompute_gradients_are_bit_identical(mp):
    torch.manual_seed(0)
    h0 = torch.randn(S, B, D)
    z = torch.randn(S, B, D)
    grads = {}
    plain = make_head(False)
    for recompute in (False, True):
        head = make_head(recompute)
        head.load_state_dict(plain.state_dict())
        h = h0.clone().requires_grad_()
        loss = objective(NITPConfig(enabled=True, head_recompute=recompute), h, z, head)
        loss.backward()
        grads[recompute] = [h.grad] + [p.grad for p in head.parameters()]
    for a, b in zip(grads[False], grads[True]):
        assert torch.equal(a, b)
