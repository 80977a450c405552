"""Layer specs: local vs Transformer Engine selection, the TE import guard, MoE layer pattern,
and the NITP head placement (last pipeline stage only, not with generic_cosine / no projector)."""

import pytest
import torch

from megatron_nitp.models import specs
from tests.helpers import suite_parse_args as parse_args


def build(argv):
    from megatron_nitp.models.builder import (build_model_chunks, padded_vocab_size,
                                              transformer_config_from_args)
    from megatron_nitp.nitp.config import NITPConfig

    args = parse_args(["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "64", "--transformer-impl", "local"] + argv)
    args.padded_vocab_size = padded_vocab_size(64, 1, 1)
    return build_model_chunks(args, transformer_config_from_args(args),
                              NITPConfig.from_args(args))[0]


def test_transformer_engine_is_import_guarded():
    if specs.transformer_engine_available():
        pytest.skip("Transformer Engine is installed here")
    assert specs.resolve_transformer_impl(None) == "local"
    with pytest.raises(ValueError, match="--transformer-impl"):
        specs.resolve_transformer_impl("transformer_engine")


def test_moe_model_has_dense_first_layer_and_shared_expert(mp):
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.moe.moe_layer import MoELayer

    model = build(["--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "16",
                   "--moe-shared-expert-intermediate-size", "16",
                   "--moe-layer-freq", "([0]*1+[1]*3)", "--nitp"])
    kinds = [type(layer.mlp) for layer in model.decoder.layers]
    assert kinds == [MLP, MoELayer, MoELayer, MoELayer]
    assert model.decoder.layers[1].mlp.shared_experts is not None
    assert model.config.moe_router_pre_softmax  # DeepSeek-V2: softmax over all, then top-k


def test_head_is_swiglu_without_bias_and_only_when_used(mp):
    model = build(["--nitp", "--nitp-target-layer", "1"])
    fc1 = model.nitp_head.mlp.linear_fc1.weight
    assert tuple(fc1.shape) == (2 * 4 * 32, 32)  # [gate; up], d -> 4d each
    assert tuple(model.nitp_head.mlp.linear_fc2.weight.shape) == (32, 4 * 32)
    assert not any("bias" in n for n, _ in model.nitp_head.named_parameters())
    assert build(["--nitp", "--nitp-no-projector"]).nitp_head is None
    assert build(["--nitp", "--nitp-loss-type", "generic_cosine"]).nitp_head is None
    assert build(["--no-nitp"]).nitp_head is None


def test_target_layer_is_layer_k_and_captures_once_per_forward(mp):
    from megatron_nitp.nitp.target import ImplicitTargetLayer

    model = build(["--nitp", "--nitp-target-layer", "2"])
    assert [isinstance(l, ImplicitTargetLayer) for l in model.decoder.layers] == \
        [False, True, False, False]
    tokens = torch.randint(0, 64, (2, 8))
    pos = torch.arange(8).repeat(2, 1)
    seen = []
    model.decoder.layers[1].register_forward_hook(lambda m, i, o: seen.append(o[0]))
    captured = []
    original = model._capture.offer
    model._capture.offer = lambda v: (captured.append(v), original(v))
    lm, nitp, valid = model(tokens, pos, None, labels=tokens, loss_mask=torch.ones(2, 8))
    assert len(captured) == 1 and captured[0] is seen[0]
    assert nitp.shape == (2, 8) and valid[:, -1].sum() == 0


def test_forward_scope_is_cleared_after_every_forward(mp):
    from megatron_nitp.models.gpt_nitp import NO_INPUTS

    model = build(["--nitp", "--nitp-target-layer", "2"])
    tokens = torch.randint(0, 64, (2, 8))
    pos = torch.arange(8).repeat(2, 1)
    seen = []
    original = model._postprocess
    model._postprocess = lambda *a, **k: (seen.append(model.forward_inputs()), original(*a, **k))[1]
    base = torch.ones(2, 8)
    model(tokens, pos, None, labels=tokens, loss_mask=torch.ones(2, 8), nitp_loss_mask=base)
    assert seen[0].nitp_loss_mask is base and model.forward_inputs() is NO_INPUTS
    with pytest.raises(Exception):  # labels of the wrong length fail inside _postprocess
        model(tokens, pos, None, labels=tokens[:, :3], loss_mask=torch.ones(2, 8),
              nitp_loss_mask=base)
    assert seen[1].nitp_loss_mask is base and model.forward_inputs() is NO_INPUTS
    assert not model._capture._armed and model._capture.value is None


@pytest.mark.parametrize("moe", [False, True])
def test_mtp_layers_built_like_the_last_layer_and_counted(mp, moe):
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from megatron_nitp.models.param_count import count_parameters

    argv = ["--nitp", "--mtp-num-layers", "1", "--position-embedding-type", "rope",
            "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear"]
    if moe:
        argv += ["--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "16",
                 "--moe-shared-expert-intermediate-size", "16", "--moe-layer-freq",
                 "([0]*1+[1]*3)"]
    model = build(argv)
    layer = model.mtp.layers[0].transformer_layer
    assert isinstance(layer.mlp, MoELayer) == moe
    built = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    args = parse_args(["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--vocab-size", "64", "--transformer-impl", "local"] + argv)
    assert count_parameters(args)["mtp"] == built


def test_force_load_balancing_routes_by_random_logits(mp):
    """--moe-router-force-load-balancing (Megatron-LM's benchmarking router) reaches
    megatron-core: the same tokens take other routes on each call; without it, the same."""
    torch.manual_seed(0)
    x = torch.randn(16, 2, 32)  # [s, b, h]

    def routes(model):
        router = model.decoder.layers[0].mlp.router
        return [router(x)[1] for _ in range(2)]  # routing maps [tokens, experts]

    flags = ["--num-experts", "4", "--moe-router-topk", "1", "--moe-ffn-hidden-size", "16"]
    first, second = routes(build(flags))
    assert torch.equal(first, second)
    first, second = routes(build(flags + ["--moe-router-force-load-balancing"]))
    assert not torch.equal(first, second)
