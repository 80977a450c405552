"""The RunConfig (training/run_config.py): built once from argv, typed by the parser's groups,
read-only after the freeze; megatron-core's TransformerConfig takes every same-named flag."""

import dataclasses
import os

import pytest

from megatron_nitp.training.arguments import build_parser
from megatron_nitp.training.run_config import FrozenConfigError, RunConfig, flag_sections
from megatron_nitp.training.validation import validate_args
from tests.helpers import suite_parse_args


def _run(extra=(), world="1"):
    os.environ["WORLD_SIZE"] = world
    try:
        args = suite_parse_args(list(extra))
        return RunConfig.freeze(args, validate_args(args))
    finally:
        os.environ.pop("WORLD_SIZE", None)


def test_every_flag_is_in_exactly_one_section():
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    sections = flag_sections()
    assert set(sections) == dests
    run = _run()
    names = [f.name for s in sorted(set(sections.values()))
             for f in dataclasses.fields(run.section(s))]
    assert sorted(names) == sorted(dests)  # no flag in two sections
    assert run.parallel.tensor_model_parallel_size == run.tensor_model_parallel_size == 1
    assert run.schedule.lr == 3e-4 and run.model.num_layers == 4
    assert run.nitp_config.target_layer == run.nitp_target_layer == 1  # round(0.2 * 4)


def test_frozen_after_resolution():
    run = _run(["--nitp"])
    with pytest.raises(FrozenConfigError, match="read-only .*replace"):
        run.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.schedule.lr = 1.0
    with pytest.raises(TypeError):
        vars(run)["lr"] = 1.0  # a read-only view
    assert run.data_parallel_size == 1  # resolved by validation, then frozen with the flags


def test_pickles_and_copies_as_itself():
    import copy
    import pickle

    run = _run(["--nitp", "--lr", "1e-3"])
    again = pickle.loads(pickle.dumps(run))
    assert again == run and again.nitp_config == run.nitp_config and again.lr == 1e-3
    assert copy.deepcopy(run) is run  # read-only: a copy is the same object


def test_replace_checks_types_and_rebuilds_nitp():
    run = _run(["--nitp"])
    other = run.replace(lr=1e-3, nitp_target_layer=2)
    assert (other.lr, run.lr) == (1e-3, 3e-4)
    assert other.nitp_config.target_layer == 2 and run.nitp_config.target_layer == 1
    with pytest.raises(TypeError, match="num_layers = 'four' is not int"):
        run.replace(num_layers="four")
    with pytest.raises(TypeError, match="no flag or resolved value"):
        run.replace(num_layer=4)  # a typo is not a new field


def test_from_saved_fills_new_flags_and_drops_removed_ones():
    run = _run(["--nitp"])
    saved = run.to_dict()
    del saved["log_throughput"]  # a checkpoint from before the flag existed
    saved["a_flag_removed_since"] = 3
    again = RunConfig.from_saved(saved, run.nitp_config.to_dict())
    assert again.log_throughput is False  # today's default
    assert "a_flag_removed_since" not in vars(again)
    assert again.nitp_config == run.nitp_config and again.num_layers == run.num_layers


def test_transformer_config_takes_every_same_named_flag():
    """Megatron-LM's core_transformer_config_from_args: a field named like a flag's dest takes
    its value. The exceptions are the derivations builder.py states (speed kernels this machine
    lacks, expert TP's default, the resolved layer implementation) and the no-op flags."""
    from megatron_nitp.models.builder import fields_by_name, transformer_config_from_args

    derived = {"apply_rope_fusion", "bias_dropout_fusion", "gradient_accumulation_fusion",
               "masked_softmax_fusion", "expert_tensor_parallel_size", "transformer_impl",
               "recompute_modules"}  # the last: None, filled in by TransformerConfig itself
    for extra in ([], ["--multi-latent-attention", "--num-experts", "4", "--qk-layernorm",
                       "--moe-router-topk", "2", "--moe-aux-loss-coeff", "0.01"]):
        run = _run(extra)
        config = transformer_config_from_args(run)
        taken = fields_by_name(type(config), run)
        assert {"num_layers", "hidden_size", "moe_aux_loss_coeff", "mtp_num_layers"} <= set(taken)
        assert "attention_backend" not in taken  # a documented no-op stays one
        if "--multi-latent-attention" in extra:  # None taken as is: a full-rank query
            assert taken["q_lora_rank"] is None and config.q_lora_rank is None
        wrong = {k: (v, getattr(config, k)) for k, v in taken.items()
                 if k not in derived and getattr(config, k) != v}
        assert not wrong


def test_dry_run_of_a_run_with_nothing_to_install(monkeypatch, capsys):
    """A value only resolution sets is None on every RunConfig when nothing set it (here: a dry
    run needs nothing at run time with --transformer-impl local, as on a node with Transformer
    Engine); the dry run must read it as "nothing", not crash."""
    from megatron_nitp.training.engine import pretrain
    from tests.helpers import suite_flags

    monkeypatch.setenv("WORLD_SIZE", "1")
    argv = ["--dry-run", "--transformer-impl", "local", "--mock-data", "--vocab-size", "100"]
    assert pretrain("gpt", suite_flags(argv) + argv) == 0
    out = capsys.readouterr().out
    assert "parameters: total" in out and "needs at run time" not in out


def test_nitp_config_is_read_only_too():
    run = _run(["--nitp"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.nitp_config.enabled = False  # the run's NITP settings change only by replace()
    assert run.replace(nitp_loss_weight=0.5).nitp_config.loss_weight == 0.5


def test_equal_means_the_same_run_nitp_objective_included():
    run = _run(["--nitp"])
    backbone = run.replace(dataclasses.replace(run.nitp_config, enabled=False))
    assert backbone != run and run.replace() == run
    assert (run == object()) is False


def test_from_saved_drops_nitp_fields_removed_since():
    run = _run(["--nitp"])
    nitp = dict(run.nitp_config.to_dict(), a_field_removed_since=1)
    del nitp["head_recompute"]  # a checkpoint from before the field existed: its default
    assert RunConfig.from_saved(run.to_dict(), nitp).nitp_config == run.nitp_config
