"""Shared fixtures for in-process unit tests."""

import pytest


@pytest.fixture(scope="module")
def mp():
    """megatron model-parallel state for one process (world of one, gloo on CPU)."""
    from megatron_nitp.parallel.distributed import (
        destroy_distributed_model_parallel,
        initialize_distributed,
    )

    initialize_distributed(seed=1)
    yield
    destroy_distributed_model_parallel()
