"""The NITP shift on sharded hidden states equals the unsharded shift (values and gradients).

One 4-rank launch walks every layout (CP2, CP4, TP2/TP4 with SP, CP2 x TP2 with and without SP;
shifts 0/1/2) and prints PASS per layout; see workers/shift_worker.py for what each checks. Layouts
smaller than the world run as several data-parallel replicas, which must then agree as well. SP
shards straddling two CP chunks need TP >= 3 with CP >= 2 (6+ ranks): they are covered in one
process by tests/unit/test_shift_positions.py.
"""

from pathlib import Path

import pytest

from tests.helpers import run_torchrun

WORKER = Path(__file__).parent / "workers" / "shift_worker.py"
LAYOUTS = {4: ["cp2", "tp2_sp", "tp2_no_sp", "cp4", "tp4_sp", "cp2_tp2_sp", "cp2_tp2_no_sp"]}


@pytest.mark.parametrize("nproc", sorted(LAYOUTS))
def test_sharded_shift_equals_unsharded_shift(nproc):
    layouts = LAYOUTS[nproc]
    out = run_torchrun(WORKER, nproc, ["--layouts", ",".join(layouts)], timeout=240).stdout
    passed = {line.split()[-1] for line in out.splitlines() if " PASS " in f" {line} "}
    assert passed == set(layouts), out
