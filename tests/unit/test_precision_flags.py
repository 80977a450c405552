"""Precision, recompute and fp8 flags (issue #15 item 8): Megatron-LM 0.16.1's names, defaults and
meaning, mapped into megatron-core's TransformerConfig / DDP / optimizer configs
(megatron_nitp/parallel/precision.py).

- every flag's dest and default equal Megatron-LM 0.16.1's (the table cites its source);
- Megatron-LM's derivations: --recompute-activations, --apply-query-key-layer-scaling, --bf16's
  fp32 gradient reduction unless --grad-reduce-in-bf16;
- the fp8 family and --tp-comm-overlap land in a real TransformerConfig (built here without
  Transformer Engine), are refused in one line before any work without TE on a GPU, and pass
  --dry-run with a "needs Transformer Engine at run time" line;
- recompute (full uniform/block, selective core_attn, selective core_attn+mlp+layernorm) gives
  the same losses (bit-identical) and gradients (bit-identical; rtol 1e-5 with layernorm/mlp
  recompute) as no recompute, NITP on: the implicit target is captured once under recompute.
"""

import pytest
import torch

from megatron_nitp.training.arguments import build_parser, parse_args
from megatron_nitp.training.validation import ConfigError, validate_args

# Every model flag explicit: the project's defaults are being aligned in parallel.
TINY = ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4",
        "--seq-length", "16", "--micro-batch-size", "2", "--vocab-size", "64", "--lr", "1e-3",
        "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
        "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--train-iters", "2", "--mock-data",
        "--nitp", "--nitp-target-layer", "2"]

# flag: (dest, default), from Megatron-LM core_v0.16.1: megatron/training/arguments.py
# (_add_mixed_precision_args, _add_training_args: --recompute-activations,
# _add_transformer_engine_args: --fp8-param-gather) and the TransformerConfig /
# ModelParallelConfig fields it turns into flags (ArgumentGroupFactory in
# _add_network_size_args; defaults in megatron/core/transformer/transformer_config.py and
# model_parallel_config.py).
MEGATRON_LM = {
    "--fp16": ("fp16", False),
    "--bf16": ("bf16", False),
    "--loss-scale": ("loss_scale", None),
    "--initial-loss-scale": ("initial_loss_scale", 2.0 ** 32),
    "--min-loss-scale": ("min_loss_scale", 1.0),
    "--loss-scale-window": ("loss_scale_window", 1000),
    "--hysteresis": ("hysteresis", 2),
    "--grad-reduce-in-bf16": ("grad_reduce_in_bf16", False),
    "--accumulate-allreduce-grads-in-fp32": ("accumulate_allreduce_grads_in_fp32", False),
    "--attention-softmax-in-fp32": ("attention_softmax_in_fp32", False),
    "--apply-query-key-layer-scaling": ("apply_query_key_layer_scaling", False),
    "--cross-entropy-loss-fusion": ("cross_entropy_loss_fusion", False),
    "--cross-entropy-fusion-impl": ("cross_entropy_fusion_impl", "native"),
    "--recompute-activations": ("recompute_activations", False),
    "--recompute-granularity": ("recompute_granularity", None),
    "--recompute-method": ("recompute_method", None),
    "--recompute-num-layers": ("recompute_num_layers", None),
    "--recompute-modules": ("recompute_modules", None),
    "--distribute-saved-activations": ("distribute_saved_activations", False),
    "--fp8-format": ("fp8", None),
    "--fp8-recipe": ("fp8_recipe", "delayed"),
    "--fp8-quantizer-factory": ("fp8_quantizer_factory", None),
    "--fp8-margin": ("fp8_margin", 0),
    "--fp8-interval": ("fp8_interval", 1),
    "--fp8-amax-history-len": ("fp8_amax_history_len", 1),
    "--fp8-amax-compute-algo": ("fp8_amax_compute_algo", "most_recent"),
    "--no-fp8-wgrad": ("fp8_wgrad", True),
    "--disable-fp8-wgrad": ("fp8_wgrad", True),
    "--fp8-param-gather": ("fp8_param_gather", False),
    "--first-last-layers-bf16": ("first_last_layers_bf16", False),
    "--num-layers-at-start-in-bf16": ("num_layers_at_start_in_bf16", 1),
    "--num-layers-at-end-in-bf16": ("num_layers_at_end_in_bf16", 1),
    "--tp-comm-overlap": ("tp_comm_overlap", False),
    "--tp-comm-overlap-cfg": ("tp_comm_overlap_cfg", None),
    "--tp-comm-bootstrap-backend": ("tp_comm_bootstrap_backend", "nccl"),
}
CHOICES = {"--fp8-format": ["e4m3", "hybrid"],
           "--fp8-recipe": ["tensorwise", "delayed", "mxfp8", "blockwise", "custom"],
           "--fp8-amax-compute-algo": ["most_recent", "max"],
           "--recompute-granularity": ["full", "selective"],
           "--recompute-method": ["uniform", "block"],
           "--tp-comm-bootstrap-backend": ["nccl", "mpi", "gloo"],
           "--cross-entropy-fusion-impl": ["native", "te"]}


def _validated(extra, world_size=1):
    args = parse_args(TINY + extra)
    validate_args(args, world_size=world_size)
    return args


def _refusal(extra, world_size=1):
    with pytest.raises(ConfigError) as e:
        _validated(extra, world_size)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_flag_names_dests_defaults_and_choices_are_megatron_lms():
    actions = {o: a for a in build_parser()._actions for o in a.option_strings}
    for flag, (dest, default) in MEGATRON_LM.items():
        assert flag in actions, flag
        assert actions[flag].dest == dest, flag
        assert actions[flag].default == default, flag
    for flag, choices in CHOICES.items():
        assert list(actions[flag].choices) == choices, flag


def test_megatron_lm_derivations():
    a = _validated(["--recompute-activations"])
    assert a.recompute_granularity == "selective"
    a = _validated(["--apply-query-key-layer-scaling", "--fp16"])
    assert a.attention_softmax_in_fp32
    assert _validated(["--bf16"]).accumulate_allreduce_grads_in_fp32
    assert not _validated(["--bf16", "--grad-reduce-in-bf16"]).accumulate_allreduce_grads_in_fp32
    assert not _validated(["--fp16"]).accumulate_allreduce_grads_in_fp32
    assert _validated(["--fp16", "--accumulate-allreduce-grads-in-fp32"]
                      ).accumulate_allreduce_grads_in_fp32


def test_ddp_and_optimizer_configs_take_the_flags():
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig

    from megatron_nitp.parallel.precision import ddp_precision_config, optimizer_precision_config

    for extra, fp32_reduce in ((["--bf16"], True), (["--bf16", "--grad-reduce-in-bf16"], False),
                               (["--fp16"], False),
                               (["--fp16", "--accumulate-allreduce-grads-in-fp32"], True)):
        ddp = DistributedDataParallelConfig(**ddp_precision_config(_validated(extra)))
        assert ddp.grad_reduce_in_fp32 is fp32_reduce, extra
    a = _validated(["--fp16", "--initial-loss-scale", "1024", "--min-loss-scale", "4",
                    "--loss-scale-window", "50", "--hysteresis", "3"])
    opt = OptimizerConfig(lr=1e-3, **optimizer_precision_config(a))
    assert (opt.fp16, opt.bf16, opt.params_dtype, opt.loss_scale, opt.initial_loss_scale,
            opt.min_loss_scale, opt.loss_scale_window, opt.hysteresis) == (
        True, False, torch.float16, None, 1024.0, 4.0, 50.0, 3)
    assert OptimizerConfig(lr=1e-3, **optimizer_precision_config(
        _validated(["--fp16", "--loss-scale", "128"]))).loss_scale == 128.0


def test_fp8_and_tp_comm_overlap_map_into_a_real_transformer_config():
    """The mapping without Transformer Engine: the args as they would be on a TE GPU."""
    from megatron_nitp.models.builder import transformer_config_from_args

    args = parse_args(TINY + [
        "--bf16", "--fp8-format", "hybrid", "--fp8-recipe", "tensorwise", "--fp8-margin", "1",
        "--fp8-amax-history-len", "16", "--fp8-amax-compute-algo", "max", "--no-fp8-wgrad",
        "--fp8-param-gather", "--use-distributed-optimizer", "--first-last-layers-bf16",
        "--num-layers-at-start-in-bf16", "2", "--num-layers-at-end-in-bf16", "0",
        "--tensor-model-parallel-size", "2", "--sequence-parallel", "--tp-comm-overlap",
        "--tp-comm-bootstrap-backend", "gloo", "--attention-softmax-in-fp32",
        "--apply-query-key-layer-scaling", "--cross-entropy-loss-fusion",
        "--cross-entropy-fusion-impl", "te"])
    c = transformer_config_from_args(args)
    assert (c.fp8, c.fp8_recipe, c.fp8_margin, c.fp8_amax_history_len, c.fp8_amax_compute_algo,
            c.fp8_wgrad, c.fp8_param, c.first_last_layers_bf16, c.num_layers_at_start_in_bf16,
            c.num_layers_at_end_in_bf16, c.tp_comm_overlap, c.tp_comm_bootstrap_backend) == (
        "hybrid", "tensorwise", 1, 16, "max", False, True, True, 2, 0, True, "gloo")
    assert c.bf16 and not c.fp16 and c.params_dtype == torch.bfloat16
    assert c.attention_softmax_in_fp32 and c.apply_query_key_layer_scaling
    assert c.cross_entropy_fusion_impl == "te"
    # Megatron-LM's default: softmax in the model dtype (megatron-core's own default is fp32).
    plain = transformer_config_from_args(parse_args(TINY + ["--bf16"]))
    assert plain.attention_softmax_in_fp32 is False and plain.fp8 is None
    fp16 = transformer_config_from_args(parse_args(TINY + ["--fp16"]))
    assert fp16.fp16 and fp16.params_dtype == torch.float16 == fp16.pipeline_dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("extra,flag", [
    (["--fp8-format", "e4m3"], "--fp8-format"),
    (["--bf16", "--fp8-format", "hybrid", "--fp8-param-gather", "--use-distributed-optimizer"],
     "--fp8-format"),
    (["--tensor-model-parallel-size", "2", "--sequence-parallel", "--tp-comm-overlap"],
     "--tp-comm-overlap"),
])
def test_te_gpu_flags_refused_in_one_line_here_and_planned_by_dry_run(extra, flag, capsys):
    msg = _refusal(extra, world_size=2)
    assert msg == (f"{flag}: needs Transformer Engine on a GPU (--transformer-impl "
                   "transformer_engine); not available here")
    _validated(extra + ["--dry-run"], world_size=2)
    assert f"notice: {flag}: needs Transformer Engine at run time (on a GPU)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("extra,expected", [
    (["--recompute-granularity", "full"], "--recompute-granularity full: needs --recompute-method"),
    (["--recompute-granularity", "full", "--recompute-method", "block"],
     "--recompute-granularity full: needs --recompute-num-layers (1 to the 4 layers"),
    (["--recompute-granularity", "full", "--recompute-method", "uniform",
      "--recompute-num-layers", "5"], "--recompute-num-layers 5: must be at most the 4"),
    (["--recompute-activations", "--recompute-method", "uniform"],
     "--recompute-method uniform: not with --recompute-granularity selective"),
    (["--recompute-activations", "--recompute-num-layers", "1"],
     "--recompute-num-layers 1: not with --recompute-granularity selective"),
    (["--recompute-activations", "--recompute-modules", "attention"],
     "--recompute-modules attention: not a recompute module; choose from core_attn, moe_act"),
    (["--recompute-activations", "--recompute-modules", "moe"], "needs --num-experts"),
    (["--recompute-activations", "--recompute-modules", "mla_up_proj"],
     "needs --multi-latent-attention"),
    (["--recompute-modules", "mlp"], "--recompute-modules: only with --recompute-granularity "
                                     "selective"),
    (["--recompute-method", "uniform"], "--recompute-method: needs --recompute-granularity full"),
    (["--recompute-granularity", "full", "--recompute-method", "uniform",
      "--recompute-num-layers", "1", "--distribute-saved-activations"],
     "--distribute-saved-activations: needs --tensor-model-parallel-size > 1"),
    (["--fp16", "--bf16"], "--fp16 and --bf16: give at most one"),
    (["--fp16", "--loss-scale", "0"], "--loss-scale 0.0: must be a positive number"),
    (["--fp16", "--hysteresis", "0"], "--hysteresis 0: must be >= 1"),
    (["--fp16", "--min-loss-scale", "8", "--initial-loss-scale", "4"],
     "--min-loss-scale 8.0: must not exceed --initial-loss-scale 4.0"),
    (["--fp8-param-gather", "--dry-run"], "--fp8-param-gather: needs --fp8-format"),
    (["--fp8-format", "e4m3", "--fp8-param-gather", "--dry-run"],
     "--fp8-param-gather: needs --use-distributed-optimizer"),
    (["--fp8-format", "e4m3", "--fp8-recipe", "custom", "--dry-run"],
     "--fp8-recipe custom: needs --fp8-quantizer-factory"),
    (["--tp-comm-overlap", "--dry-run"], "--tp-comm-overlap: needs --sequence-parallel"),
    (["--fp8-format", "hybrid", "--dry-run", "--transformer-impl", "local"],
     "--fp8-format: needs --transformer-impl transformer_engine (not local)"),
])
def test_bad_combinations_refused_before_any_work(extra, expected):
    assert expected in _refusal(extra)


def test_accepted_but_inert_flags_say_so(capsys):
    _validated(["--grad-reduce-in-bf16", "--initial-loss-scale", "1024"])
    out = capsys.readouterr().out
    assert "notice: --grad-reduce-in-bf16: no effect without --bf16" in out
    assert "dynamic loss scaling is used by --fp16 only" in out


# -- recompute: same losses and gradients -------------------------------------------------------

RECOMPUTE = {
    "full_uniform": ["--recompute-granularity", "full", "--recompute-method", "uniform",
                     "--recompute-num-layers", "2"],
    "full_block": ["--recompute-granularity", "full", "--recompute-method", "block",
                   "--recompute-num-layers", "3"],
    "selective_default": ["--recompute-activations"],
    "selective_modules": ["--recompute-granularity", "selective", "--recompute-modules",
                          "core_attn", "mlp", "layernorm"],
}


def _loss_and_grads(extra, state=None):
    from megatron_nitp.models.builder import build_model_chunks, transformer_config_from_args
    from megatron_nitp.nitp.config import NITPConfig

    args = _validated(extra)
    args.padded_vocab_size = 128
    torch.manual_seed(3)
    (model,) = build_model_chunks(args, transformer_config_from_args(args),
                                  NITPConfig.from_args(args))
    if state is not None:
        model.load_state_dict(state)
    calls = [0]
    for module in model.modules():  # recompute reruns forwards in backward
        module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (2, 16), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    position_ids = torch.arange(16).expand(2, 16)
    lm, nitp, valid = model(tokens, position_ids, None, labels=labels,
                            loss_mask=torch.ones(2, 16))
    loss = lm.mean() + nitp.sum() / valid.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return (model.state_dict(), (lm.mean().item(), (nitp.sum() / valid.sum()).item()), grads,
            calls[0])


@pytest.fixture(scope="module")
def reference(mp):
    return _loss_and_grads([])


@pytest.mark.parametrize("name", sorted(RECOMPUTE))
def test_recompute_gives_the_same_losses_and_gradients(reference, name):
    state, losses, grads, calls = reference
    _, got_losses, got, got_calls = _loss_and_grads(RECOMPUTE[name], state)
    assert got_calls > calls, "nothing was recomputed"
    assert got_losses == losses
    assert sorted(got) == sorted(grads)
    assert any(n.startswith("nitp_head") for n in grads)  # NITP trains through recompute
    for n in grads:
        if name == "selective_modules":  # layernorm/mlp recompute reorders a few sums
            torch.testing.assert_close(got[n], grads[n], rtol=1e-5, atol=1e-7,
                                       msg=f"{name}: {n}")
        else:  # measured bit-identical
            assert torch.equal(got[n], grads[n]), f"{name}: {n}"
