"""One base type for the errors a user can fix (megatron_nitp/errors.py): every layer's error is
a UserError (the engine catches that type, no message matching), and keeps the built-in type its
callers already catch."""

import pytest

from megatron_nitp.convert import ConversionError
from megatron_nitp.data.errors import DataArgumentError
from megatron_nitp.errors import UserError
from megatron_nitp.nitp.config import NITPConfigError
from megatron_nitp.training.checkpoint_io import CheckpointError
from megatron_nitp.training.validation import ConfigError


@pytest.mark.parametrize("cls, builtin", [
    (ConfigError, ValueError), (NITPConfigError, ValueError), (CheckpointError, RuntimeError),
    (ConversionError, Exception), (DataArgumentError, SystemExit)])
def test_every_user_facing_error_is_a_user_error(cls, builtin):
    with pytest.raises(UserError, match="--flag: bad") as info:
        raise cls("--flag: bad")
    assert isinstance(info.value, builtin) and str(info.value) == "--flag: bad"


def test_an_uncaught_data_error_still_exits_non_zero_with_its_line():
    # SystemExit first in the MRO: its code is the message (exit status 1, the line on stderr).
    assert DataArgumentError("--data-path x: missing").code == "--data-path x: missing"
