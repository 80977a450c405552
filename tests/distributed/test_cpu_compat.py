"""megatron-core's parallel code paths run on CPU/gloo through `apply_cpu_compat` and give the
single-process numbers (fp32, rtol 1e-4): TP+SP with the SP norm, the RNG tracker, PP 1F1B and
interleaved schedules with DDP + finalize_model_grads, the plain optimizer with grad clipping,
full/selective recompute with dropout, the distributed optimizer through a dist-checkpoint save and
a load at another TP size, and MoE with the allgather and alltoall dispatchers.

Two launches (2 and 4 ranks) run all cases; each test reads its case's verdict.
"""

from pathlib import Path

import pytest

from tests.helpers import run_python, run_torchrun

WORKERS = Path(__file__).parent / "workers"
WORKER = WORKERS / "cpu_compat_worker.py"
LAUNCHES = {
    2: ["tp2_sp", "pp2_1f1b", "pp2_vpp2", "recompute", "distopt_checkpoint", "moe_ep2"],
    4: ["moe_tp2_ep2_sp", "moe_ep2_pp2"],
}
CASE_LAUNCH = {case: nproc for nproc, cases in LAUNCHES.items() for case in cases}


@pytest.fixture(scope="module")
def launch_output(tmp_path_factory):
    outputs = {}

    def get(nproc):
        if nproc not in outputs:
            tmp = tmp_path_factory.mktemp(f"cpu_compat_{nproc}")
            args = ["--cases", ",".join(LAUNCHES[nproc]), "--tmpdir", str(tmp)]
            outputs[nproc] = run_torchrun(WORKER, nproc, args, timeout=420).stdout
        return outputs[nproc]

    return get


@pytest.mark.parametrize("case", list(CASE_LAUNCH))
def test_parallel_layout_matches_single_process(launch_output, case):
    out = launch_output(CASE_LAUNCH[case])
    assert f"[rank 0] PASS {case}" in out.splitlines(), out


def test_checkpoint_save_works_from_a_script_without_main_guard(tmp_path):
    """megatron's checkpoint writer starts a spawn-context Manager, which re-imports __main__;
    the CPU layer makes it fork, so an unguarded script saves (instead of failing or hanging)."""
    out = run_python(WORKERS / "unguarded_checkpoint_save.py", [tmp_path / "ckpt"], timeout=240)
    assert "SAVED_AND_LOADED" in out.stdout, out.stdout
