"""The `slurm` fixture: one localhost SLURM cluster (tests/slurm/cluster.py) for this directory.

SLURM is installed when missing (root + apt-get); the tests skip, with the reason, only where
that cannot be done. A cluster that is installed but does not come up fails the tests.
"""

import pytest

from tests.slurm.cluster import LocalSlurm, install


@pytest.fixture(scope="session")
def slurm():
    why_not = install()
    if why_not:
        pytest.skip(f"no SLURM: {why_not}")
    cluster = LocalSlurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
