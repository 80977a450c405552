"""Every tensor the engine hands to a collective is on the engine's device (NCCL rejects CPU
tensors), checked during a real 2-rank gloo engine run (DP2, distributed optimizer, NITP,
representation metrics, evaluation, a checkpoint save, the SIGTERM poll); see
workers/collective_devices_worker.py for how a tensor made without `device=` is caught on CPU."""

import json
from pathlib import Path

from tests.helpers import run_torchrun

WORKER = Path(__file__).parent / "workers" / "collective_devices_worker.py"


def test_every_collective_tensor_is_on_the_engine_device(tmp_path):
    run_torchrun(WORKER, 2, args=[tmp_path], timeout=300)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"report_{rank}.json").read_text())
        assert report["exit_code"] == 0
        assert report["probe_caught"], "the checker missed a deliberately unplaced tensor"
        assert report["collectives"] > 50, report["collectives"]  # the run really was watched
        assert not report["problems"], "\n\n".join(report["problems"][:5])
