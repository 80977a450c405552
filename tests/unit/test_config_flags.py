"""Flags derived from TransformerConfig's fields (training/config_flags.py) read megatron-core's
source without importing it: the reading must equal the class itself."""

import dataclasses

import pytest

from megatron_nitp.training import arguments
from megatron_nitp.training.config_flags import TRANSFORMER_CONFIG, config_fields, flag_kwargs

DERIVED = arguments._MODEL_FIELDS + arguments._MOE_FIELDS


@pytest.mark.parametrize("name", DERIVED)
def test_source_reading_equals_the_dataclass(name):
    from megatron.core.transformer.transformer_config import TransformerConfig

    real = {f.name: f for f in dataclasses.fields(TransformerConfig)}[name]
    read = config_fields(TRANSFORMER_CONFIG)[name]
    assert read.default == real.default
    assert read.type == real.type
    assert read.metadata == dict(real.metadata)
    assert read.doc  # help text from the field's docstring


def test_every_derived_field_is_a_flag_with_the_fields_meaning():
    parser = arguments.build_parser()
    by_dest = {}
    for action in parser._actions:
        by_dest.setdefault(action.dest, []).append(action)
    for name in DERIVED:
        names, kwargs = flag_kwargs(TRANSFORMER_CONFIG, name)
        dest = {"layernorm_epsilon": "norm_epsilon"}.get(name, name)
        action = by_dest[dest][0]
        assert names[0] in action.option_strings, (name, names, action.option_strings)
        assert action.default == kwargs["default"], name
    # megatron-core's argparse_meta is honoured: names and defaults Megatron-LM gives them
    assert flag_kwargs(TRANSFORMER_CONFIG, "layernorm_epsilon")[0] == ["--norm-epsilon"]
    assert flag_kwargs(TRANSFORMER_CONFIG, "num_layers")[1]["default"] is None
    assert flag_kwargs(TRANSFORMER_CONFIG, "num_query_groups")[1]["default"] == 1
    assert flag_kwargs(TRANSFORMER_CONFIG, "add_bias_linear")[0] == ["--disable-bias-linear"]
