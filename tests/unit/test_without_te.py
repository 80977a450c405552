"""megatron-core without Transformer Engine on a GPU machine: the fixes are applied whenever TE
is absent, not only when CUDA is (parallel/without_te.py)."""

import torch

from megatron_nitp.parallel import without_te


def test_moe_router_gating_runs_without_te_when_cuda_is_available(monkeypatch):
    from megatron.core.transformer.moe import moe_utils

    assert not without_te.transformer_engine_available()  # this machine has no TE
    # A fresh process on a GPU machine: CUDA present, moe_utils' name never bound.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delattr(moe_utils, "te_general_gemm", raising=False)
    monkeypatch.setattr(without_te, "_APPLIED", False)
    monkeypatch.setattr(without_te, "_patch_distributed_optimizer_state", lambda: None)
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8)
    try:
        moe_utils.router_gating_linear(x, w, None, torch.float32)
        raise AssertionError("megatron-core binds te_general_gemm without TE now: drop the patch")
    except NameError as e:
        assert "te_general_gemm" in str(e)
    assert without_te.apply_without_transformer_engine() is True
    out = moe_utils.router_gating_linear(x, w, None, torch.float32)
    torch.testing.assert_close(out, x @ w.T)
    out.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(4, 8))

