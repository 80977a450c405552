"""Each ablation switch of the paper (Tables 3, 7, 8; examples/ablations/) does what it claims,
checked in-process on a tiny NITP GPT built by the real builder (TP1/PP1, one process)."""

import glob
import os

import pytest
import torch

from megatron_nitp.nitp.config import NITPConfig
from megatron_nitp.nitp.loss import nitp_loss_func
from tests.helpers import suite_parse_args as parse_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABLATIONS = os.path.join(REPO, "examples", "ablations")
LAYERS, SEQ, BATCH, VOCAB = 3, 16, 2, 64
TARGET = 1


@pytest.fixture(scope="module")
def mp():
    from megatron_nitp.parallel.distributed import (destroy_distributed_model_parallel,
                                                    initialize_distributed)

    initialize_distributed(seed=1)
    yield
    destroy_distributed_model_parallel()


def build(*flags):
    """A tiny NITPGPTModel (and its NITPConfig) from command-line flags."""
    from megatron_nitp.models.builder import (build_model_chunks, padded_vocab_size,
                                              transformer_config_from_args)

    args = parse_args(["--num-layers", str(LAYERS), "--hidden-size", "32",
                       "--num-attention-heads", "4", "--seq-length", str(SEQ),
                       "--vocab-size", str(VOCAB), "--nitp-target-layer", str(TARGET),
                       "--transformer-impl", "local", *flags])
    args.padded_vocab_size = padded_vocab_size(VOCAB, args.make_vocab_size_divisible_by, 1)
    cfg = NITPConfig.from_args(args)
    (model,) = build_model_chunks(args, transformer_config_from_args(args), cfg)
    return model, cfg


def same_weights(dst, src):
    """Copy every backbone weight (and the head, when both have one) from src into dst."""
    theirs = src.state_dict()
    mine = dst.state_dict()
    for k in mine:
        if k in theirs and not k.endswith("_extra_state"):
            mine[k] = theirs[k].clone()
    dst.load_state_dict(mine)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    return dict(tokens=tokens[:, :-1], labels=tokens[:, 1:],
                position_ids=torch.arange(SEQ).expand(BATCH, SEQ),
                loss_mask=torch.ones(BATCH, SEQ))


def forward(model, b):
    return model(b["tokens"], b["position_ids"], None, labels=b["labels"],
                 loss_mask=b["loss_mask"])


def objective(model, cfg, b, iteration=0):
    """(total loss as the schedule sees it, {name: mean}) for one microbatch."""
    total, n, report = nitp_loss_func(b["loss_mask"], cfg.weight_at(iteration) if cfg.enabled
                                      else 0.0, False, forward(model, b))
    return total / n, {k: (v[0] / v[1]).item() for k, v in report.items()}


def grads(model, cfg, b, iteration=0):
    model.zero_grad(set_to_none=True)
    loss, _ = objective(model, cfg, b, iteration)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def nitp_loss(model, cfg, b):
    with torch.no_grad():
        return objective(model, cfg, b)[1]["nitp loss"]


def layer_of(name):
    """Global 1-based layer number of a decoder parameter, 0 for the embedding, None otherwise."""
    if name.startswith("embedding."):
        return 0
    if name.startswith("decoder.layers."):
        return int(name.split(".")[2]) + 1
    return None


def test_shift_0_is_much_easier_than_shift_1_after_a_few_steps(mp):
    """Current-step alignment (t -> t) reads z_t off the residual stream of h_t itself; the
    method's z_{t+1} has to be predicted (Table 3)."""
    losses = {}
    ref = None
    for shift in (0, 1):
        model, cfg = build("--nitp", "--nitp-shift", str(shift))
        if ref is None:
            ref = model
        else:
            same_weights(model, ref)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(20):
            opt.zero_grad()
            objective(model, cfg, batch(step % 3))[0].backward()
            opt.step()
        losses[shift] = nitp_loss(model, cfg, batch(7))
    assert losses[0] < 0.5 * losses[1], losses


def test_stop_grad_off_lets_gradient_into_the_target_path(mp):
    """z is the output of layer k: without stop-gradient the layers <= k (and the embedding)
    get an extra gradient through z; the layers above k cannot tell the difference."""
    on, cfg_on = build("--nitp")
    off, cfg_off = build("--nitp", "--nitp-no-stop-grad")
    same_weights(off, on)
    b = batch(0)
    g_on, g_off = grads(on, cfg_on, b), grads(off, cfg_off, b)
    below = [k for k in g_on if layer_of(k) is not None and layer_of(k) <= TARGET]
    above = [k for k in g_on if layer_of(k) is not None and layer_of(k) > TARGET]
    assert below and above
    for k in below:
        assert not torch.allclose(g_on[k], g_off[k], rtol=1e-4, atol=1e-7), k
    for k in above:
        torch.testing.assert_close(g_on[k], g_off[k], rtol=1e-5, atol=1e-7)


def test_no_projector_has_no_head_parameters(mp):
    with_head, _ = build("--nitp")
    without, cfg = build("--nitp", "--nitp-no-projector")
    assert any("nitp_head" in k for k, _ in with_head.named_parameters())
    assert without.nitp_head is None
    assert not any("nitp_head" in k for k, _ in without.named_parameters())
    assert not any("nitp_head" in k for k in without.state_dict())
    assert nitp_loss(without, cfg, batch(0)) > 0  # still a loss: h_t against z_{t+1} directly


def test_start_step_gives_no_nitp_gradient_before_it(mp):
    nitp, cfg = build("--nitp", "--nitp-start-step", "5")
    ntp, cfg_ntp = build("--no-nitp")
    same_weights(ntp, nitp)
    b = batch(0)
    g_ntp = grads(ntp, cfg_ntp, b)
    for it in (0, 4):  # iterations before the start: exactly the NTP gradient
        g = grads(nitp, cfg, b, iteration=it)
        for k in g_ntp:
            torch.testing.assert_close(g[k], g_ntp[k], rtol=0, atol=0)
        assert not any(k.startswith("nitp_head") for k in g)  # head untouched
    g = grads(nitp, cfg, b, iteration=5)  # from the start step on: NITP counts
    assert any(not torch.allclose(g[k], g_ntp[k]) for k in g_ntp)
    assert any(k.startswith("nitp_head") for k in g)
    _, report = objective(nitp, cfg, b, iteration=0)
    assert "nitp loss" in report  # still logged before the start


def test_generic_cosine_has_no_head_and_no_target(mp):
    model, cfg = build("--nitp", "--nitp-loss-type", "generic_cosine")
    assert model.nitp_head is None and not cfg.uses_target
    hooked = [n for n, m in model.named_modules() if m._forward_hooks]
    assert hooked == [], hooked  # nothing captures a layer's output
    # Its loss is the mean pair cosine of the final hidden states, which depends on the
    # final layer only through h: it cannot see a target layer.
    other, cfg2 = build("--nitp", "--nitp-loss-type", "generic_cosine",
                        "--nitp-target-layer", "2")
    same_weights(other, model)
    assert nitp_loss(model, cfg, batch(0)) == pytest.approx(nitp_loss(other, cfg2, batch(0)))


def test_loss_types_give_different_values(mp):
    ref, values = None, {}
    for kind in ("cosine", "mse", "smooth_l1", "kl"):
        model, cfg = build("--nitp", "--nitp-loss-type", kind)
        if ref is None:
            ref = model
        else:
            same_weights(model, ref)
        values[kind] = nitp_loss(model, cfg, batch(0))
    assert len({round(v, 6) for v in values.values()}) == 4, values


def test_target_layer_changes_the_target(mp):
    ref, values = None, {}
    for k in (0, 1, 2):
        model, cfg = build("--nitp", "--nitp-target-layer", str(k), "--nitp-no-projector")
        if ref is None:
            ref = model
        else:
            same_weights(model, ref)
        values[k] = nitp_loss(model, cfg, batch(0))
    assert len({round(v, 6) for v in values.values()}) == 3, values


def test_loss_weight_scales_only_the_nitp_term(mp):
    a, cfg_a = build("--nitp", "--nitp-loss-weight", "1.0")
    b_, cfg_b = build("--nitp", "--nitp-loss-weight", "0.5")
    same_weights(b_, a)
    b = batch(0)
    with torch.no_grad():
        la, ra = objective(a, cfg_a, b)
        lb, rb = objective(b_, cfg_b, b)
    assert ra == pytest.approx(rb)
    assert (la - lb).item() == pytest.approx(0.5 * ra["nitp loss"], rel=1e-5)


EXPECTED = {  # override file prefix -> the NITPConfig field it must change
    "target_layer_": "target_layer", "shift_0": "shift", "loss_": "loss_type",
    "loss_weight_": "loss_weight", "generic_cosine_reg": "loss_type",
    "no_stop_grad": "stop_grad", "start_step_": "start_step", "no_projector": "projector",
    "ntp_baseline": "enabled",
}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ABLATIONS, "*.yaml"))),
                         ids=os.path.basename)
def test_each_override_file_changes_only_its_switch(path):
    base = os.path.join(ABLATIONS, "base", "demo_dense.yaml")
    default = NITPConfig.from_args(parse_args(["--config", base]))
    cfg = NITPConfig.from_args(parse_args(["--config", base, "--config", path]))
    name = os.path.basename(path)[:-5]
    field = next(f for p, f in sorted(EXPECTED.items(), key=lambda kv: -len(kv[0]))
                 if name.startswith(p))
    changed = {k for k, v in cfg.to_dict().items() if default.to_dict()[k] != v}
    if name in ("loss_cosine", "loss_weight_1.0"):  # the defaults, for completeness
        assert changed == set()
    else:
        assert changed == {field}, (name, changed)


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("projector", ["swiglu", "none"])
@pytest.mark.parametrize("loss_type", ["cosine", "generic_cosine"])
def test_a_saved_nitp_entry_has_a_head_exactly_when_its_config_does(enabled, projector,
                                                                    loss_type):
    """Resume (a fresh head means a fresh optimizer) and export (--keep-nitp-head) read a
    checkpoint's "nitp" entry with the same rule as NITPConfig.uses_head."""
    from megatron_nitp.nitp.config import saved_head_in_use

    cfg = NITPConfig(enabled=enabled, projector=projector, loss_type=loss_type)
    assert saved_head_in_use(cfg.to_dict()) == cfg.uses_head
    assert not saved_head_in_use(None) and not saved_head_in_use({})
