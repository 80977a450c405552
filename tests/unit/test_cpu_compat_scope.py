"""What `apply_cpu_compat` changes, and what it leaves alone (one process, no ranks).

The distributed behaviour is tested in tests/distributed/test_cpu_compat.py."""

import pytest
import torch

from megatron_nitp.parallel import cpu_compat


@pytest.fixture(scope="module", autouse=True)
def applied():
    assert cpu_compat.apply_cpu_compat() is True  # this machine has no CUDA
    return True


def test_is_a_noop_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.apply_cpu_compat() is False


def test_is_idempotent():
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    before = (DistributedOptimizer.load_state_dict, torch.Tensor.type, torch.cuda.current_device)
    assert cpu_compat.apply_cpu_compat() is True
    after = (DistributedOptimizer.load_state_dict, torch.Tensor.type, torch.cuda.current_device)
    assert before == after


def test_tensor_type_reports_cuda_names_only_to_megatrons_optimizer():
    t = torch.zeros(2)
    assert t.type() == "torch.FloatTensor"
    megatron_optimizer_code = {"__name__": "megatron.core.optimizer.clip_grads", "t": t}
    exec("name = t.type()", megatron_optimizer_code)
    assert megatron_optimizer_code["name"] == "torch.cuda.FloatTensor"
    assert t.type(torch.float64).dtype == torch.float64


def test_device_cuda_literals_are_mapped_only_inside_patched_megatron_modules():
    from megatron.core.transformer import utils as transformer_utils

    mask = transformer_utils.get_default_causal_mask(3)  # torch.ones(..., device="cuda") inside
    assert mask.device.type == "cpu" and mask.tolist()[0] == [False, True, True]
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")  # the real torch module is untouched


def test_cuda_rng_state_is_the_cpu_generator():
    torch.cuda.manual_seed(5)
    state = torch.cuda.get_rng_state()
    assert torch.equal(state, torch.get_rng_state())
    a = torch.rand(3)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_tensor_cuda_keeps_cpu_tensors_in_place():
    t = torch.ones(2)
    assert t.cuda() is t and torch.nn.Linear(2, 2).cuda().weight.device.type == "cpu"
