"""pytest setup shared by every test directory.

- The repository root goes on sys.path, so `megatron_nitp` and `tests.helpers` import without an
  install, whichever directory pytest is started from.
- With pytest-timeout installed, every test without its own `@pytest.mark.timeout` gets
  DEFAULT_TIMEOUT seconds unless a timeout is set on the command line or in the ini file: a hung
  gloo collective must fail the test, not the CI job. (Distributed tests also pass their own
  timeout to `tests.helpers.run_torchrun`, which kills the whole process group.)
"""

import sys
from pathlib import Path

import pytest

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

DEFAULT_TIMEOUT = 900


def _timeout_configured(config) -> bool:
    try:
        return bool(config.getoption("timeout")) or bool(config.getini("timeout"))
    except (ValueError, KeyError):
        return False


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("timeout") or _timeout_configured(config):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.fixture(autouse=True)
def _restore_logging_levels():
    """--logging-level sets process-wide levels (as in Megatron-LM); an in-process run (a dry
    run of an example script giving it) must not silence the next test's output."""
    import logging

    from megatron_nitp.training.log import get_logger

    levels = logging.getLogger().level, get_logger().level
    yield
    logging.getLogger().setLevel(levels[0])
    get_logger().setLevel(levels[1])
