"""The NITP shift on sharded hidden states equals the unsharded shift (values and gradients).

One launch per world size; the worker walks several layouts (CP, SP, CP x SP, shifts 0/1/2) and
prints PASS per layout. See workers/shift_worker.py for what each layout checks.
"""

from pathlib import Path

import pytest

from tests.helpers import run_torchrun

WORKER = Path(__file__).parent / "workers" / "shift_worker.py"
LAYOUTS = {
    2: ["cp2", "tp2_sp", "tp2_no_sp"],
    4: ["cp4", "tp4_sp", "cp2_tp2_sp", "cp2_tp2_no_sp"],
}


@pytest.mark.parametrize("nproc", sorted(LAYOUTS))
def test_sharded_shift_equals_unsharded_shift(nproc):
    layouts = LAYOUTS[nproc]
    out = run_torchrun(WORKER, nproc, ["--layouts", ",".join(layouts)], timeout=240).stdout
    passed = {line.split()[-1] for line in out.splitlines() if " PASS " in f" {line} "}
    assert passed == set(layouts), out
