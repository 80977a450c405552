"""The NITP per-token losses run in fp32 when the model runs in bf16 (as megatron's LM
cross-entropy does): value and gradient of bf16 inputs match an fp64 computation on the same
bf16 values to bf16 rounding of the gradient (0.4%), where a bf16 computation is off by 1-4%
once the cosine is close to 1."""

import pytest
import torch

from megatron_nitp.nitp.config import NITPConfig
from megatron_nitp.nitp.objective import nitp_token_losses

S, B, D = 16, 2, 64


def _aligned_pair(cos, seed=0):
    """p, z with cos(p_t, z_{t+1}) ~= cos: z is p shifted by one position plus noise."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(S, B, D, generator=g, dtype=torch.float64)
    noise = torch.randn(S, B, D, generator=g, dtype=torch.float64)
    noise -= (noise * p).sum(-1, keepdim=True) / p.pow(2).sum(-1, keepdim=True) * p
    noise *= p.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
    sin = (1 - cos ** 2) ** 0.5
    z = torch.roll(cos * p + sin * noise, shifts=1, dims=0)  # z[t+1] pairs with p[t]
    return p, z


@pytest.mark.parametrize("loss_type", ["cosine", "mse", "smooth_l1", "kl"])
@pytest.mark.parametrize("cos", [0.8, 0.99])
def test_bf16_inputs_give_fp32_losses_with_fp64_gradients(loss_type, cos):
    cfg = NITPConfig(enabled=True, loss_type=loss_type, projector="none")
    p64, z64 = _aligned_pair(cos)
    p16 = p64.to(torch.bfloat16).requires_grad_()
    z16 = z64.to(torch.bfloat16)
    loss, valid = nitp_token_losses(p16, z16, None, None, cfg, seq_length=S)
    assert loss.dtype == torch.float32
    loss.sum().backward()

    exact = p16.detach().double().requires_grad_()  # the same bf16 values, computed in fp64
    ref, _ = nitp_token_losses(exact, z16.double(), None, None, cfg, seq_length=S)
    ref.sum().backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    # The gradient reaches the bf16 model in bf16: its rounding (2^-8 relative) is the limit.
    err = (p16.grad.double() - exact.grad).norm() / exact.grad.norm()
    assert err < 4e-3, f"{loss_type} at cos {cos}: relative gradient error {err:.2e}"
