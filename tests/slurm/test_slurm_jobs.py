"""Issue #13: what tools/launch_slurm.py writes, submitted to a real SLURM controller.

The localhost cluster of tests/slurm/cluster.py (two CPU nodes n1, n2 of 2 CPUs); the job runs
a tiny NITP GPT on mock data with 2 ranks (`--gpus-per-node 0 --ntasks-per-node 2`, or 1 rank
on each of the 2 nodes), no container. The oracle is a torchrun run of the same config: every
job's JSONL (iteration, LM loss, NITP loss, lr, grad norm, consumed samples) must equal it
exactly, in order, whatever stops and requeues happened in between.

Stops are made to land mid-run with the engine's test hook MEGATRON_NITP_TEST_SLOW_SAVE
(the save of one iteration sleeps after writing, before its rename): the tiny model trains an
iteration in ~50 ms, faster than any signal arrives.
"""

import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.engine_runner import engine_env, read_log, run_engine
from tests.slurm.cluster import KILL_WAIT_S

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import launch_slurm  # noqa: E402

TRAIN_ITERS = 8
TINY = f"""\
num-layers: 2
hidden-size: 32
num-attention-heads: 2
seq-length: 32
max-position-embeddings: 32
micro-batch-size: 2
global-batch-size: 8
vocab-size: 255
make-vocab-size-divisible-by: 64
lr: 1.0e-3
lr-warmup-iters: 1
train-iters: {TRAIN_ITERS}
log-interval: 1
nitp: true
nitp-target-layer: 1
# the suite's model and run settings, explicit (tests/helpers.py: SUITE_*_FLAGS)
ffn-hidden-size: 128
normalization: RMSNorm
norm-epsilon: 1.0e-6
swiglu: true
position-embedding-type: rope
disable-bias-linear: true
attention-dropout: 0.0
hidden-dropout: 0.0
adam-beta2: 0.95
weight-decay: 0.1
lr-decay-style: cosine
num-workers: 0
eval-iters: 2
"""
KEYS = ("iteration", "lm_loss", "nitp_loss", "lr", "grad_norm", "consumed_samples", "skipped")
pytestmark = pytest.mark.timeout(900)  # the first test also installs SLURM when missing


def records(path):
    train, valid = read_log(path)
    assert not valid
    return [tuple(r[k] for k in KEYS) for r in train]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny_nitp.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def torchrun_records(config, tmp_path_factory):
    log = tmp_path_factory.mktemp("torchrun") / "log.jsonl"
    run_engine(["--config", config, "--mock-data", "--log-jsonl", log], nproc=2)
    got = records(log)
    assert [r[0] for r in got] == list(range(1, TRAIN_ITERS + 1))
    return got


class Job:
    """One submitted job: its script, checkpoint directory, JSONL and output file."""

    def __init__(self, slurm, tmp_path, config, name, nodes=1, tasks_per_node=2, env=None):
        self.slurm, self.dir, self.name = slurm, tmp_path, name
        self.ckpt, self.log = tmp_path / "ckpt", tmp_path / "ckpt" / "log.jsonl"
        self.tracker = self.ckpt / "latest_checkpointed_iteration.txt"
        self.script = tmp_path / f"{name}.sbatch"
        assert launch_slurm.main([
            "--config", str(config), "--nodes", str(nodes), "--gpus-per-node", "0",
            "--ntasks-per-node", str(tasks_per_node), "--time", "00:30:00",
            "--job-name", name, "--repo-dir", str(REPO), "--ckpt-dir", str(self.ckpt),
            "--data-path", "none", "--save-interval", "2", "--save-margin-minutes", "0",
            "--extra-args", f"--mock-data --log-jsonl {self.log}",
            "--output", str(self.script)]) == 0
        job_env = engine_env(env)
        job_env.update(SLURM_CONF=slurm.env["SLURM_CONF"],
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{job_env['PATH']}")
        self.id = slurm.sbatch(self.script, env={k: v for k, v in job_env.items()
                                                 if not k.startswith(("SLURM_JOB", "SBATCH_"))},
                               cwd=tmp_path)

    @property
    def out(self) -> str:
        path = self.dir / f"{self.name}-{self.id}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def info(self):
        return self.slurm.job(self.id)

    def wait_for(self, cond, what, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"job {self.id}: timed out waiting for {what}\n{self.info()}\n"
                             f"{self.out[-4000:]}")

    def running_restart(self, n):
        """The n-th run (SLURM_RESTART_COUNT n) is running and its ranks have resumed."""
        info = self.info()
        return (info.get("JobState") == "RUNNING" and int(info.get("Restarts", 0)) == n
                and len(re.findall(r"^training \w+ model", self.out, re.M)) > n)

    def tracker_at(self, it):
        return self.tracker.is_file() and self.tracker.read_text().strip() == str(it)

    def done(self, timeout=300):
        info = self.slurm.wait_job(self.id, timeout=timeout)
        assert info["JobState"] == "COMPLETED", f"{info}\n{self.out[-4000:]}"
        return info

    def resumed_at(self):
        return [int(i) for i in re.findall(r"resumed from \S+ at iteration (\d+)", self.out)]


def test_two_task_job_trains_to_the_end_like_torchrun(slurm, config, torchrun_records,
                                                      tmp_path):
    job = Job(slurm, tmp_path, config, "straight")
    info = job.done()
    assert info["Restarts"] == "0" and info["NumTasks"] == "2"
    assert records(job.log) == torchrun_records
    assert "not requeued: training complete" in job.out
    assert job.tracker_at(TRAIN_ITERS)


def test_time_limit_warning_saves_requeues_and_resumes_exactly(slurm, config, torchrun_records,
                                                               tmp_path):
    """USR1 to the batch shell is what --signal=B:USR1@300 delivers: every rank saves and exits
    0, the job requeues itself. (A SIGTERM to the batch shell alone takes the same path: the
    second run of the preemption test.)"""
    job = Job(slurm, tmp_path, config, "warn", env={"MEGATRON_NITP_TEST_SLOW_SAVE": "8@4"})
    # After iteration 1 is logged: the signal lands in iteration 2-4 (or in the slow save of 4).
    job.wait_for(lambda: job.log.is_file() and job.log.read_text().count("\n") >= 1,
                 "iteration 1")
    slurm.run("scancel", "--signal=USR1", "--batch", job.id)
    info = job.done()
    out = job.out
    stopped = [int(i) for i in re.findall(r"exiting at iteration (\d+) \(SIGTERM\)", out)]
    assert len(stopped) == 1 and stopped[0] < TRAIN_ITERS, out[-4000:]
    assert "ranks exited with status 0" in out and "forcing job termination" not in out
    assert f"checkpoint at iteration {stopped[0]} of {TRAIN_ITERS}: requeueing" in out
    assert info["Restarts"] == "1" and job.resumed_at() == [stopped[0]]
    assert records(job.log) == torchrun_records  # no gap, no duplicate


def test_preemption_resumes_from_the_last_complete_checkpoint(slurm, config, torchrun_records,
                                                              tmp_path):
    """`scontrol requeue` while the iteration-4 save is in its window: SLURM SIGTERMs every
    process of the job, the save (15 s here) outlasts KillWait and is SIGKILLed half-written;
    then a SIGTERM to the batch shell alone in the second run (a preemption notice)."""
    assert KILL_WAIT_S < 15
    job = Job(slurm, tmp_path, config, "preempt", env={"MEGATRON_NITP_TEST_SLOW_SAVE": "15@4"})
    partial = job.ckpt / "iter_0000004.tmp"
    job.wait_for(lambda: job.tracker_at(2) and partial.is_dir(), "the save of iteration 4")
    slurm.run("scontrol", "requeue", job.id)
    job.wait_for(lambda: job.running_restart(1), "the requeued run", timeout=180)
    assert job.resumed_at() == [2], job.out[-4000:]  # the complete one, not iter_4.tmp
    slurm.run("scancel", "--signal=TERM", "--batch", job.id)
    info = job.done()
    assert info["Restarts"] == "2"
    resumed = job.resumed_at()
    assert len(resumed) == 2 and 2 < resumed[1] < TRAIN_ITERS, job.out[-4000:]
    assert records(job.log) == torchrun_records
    assert not list(job.ckpt.glob("*.tmp"))


def test_scancel_stops_within_the_grace_time_and_is_not_requeued(slurm, config, tmp_path):
    """scancel during the iteration-4 save (5 s, shorter than KillWait): the ranks finish it
    and exit 0, and the job is not requeued (the batch script, when SLURM lets it run to its
    end, sees the job is no longer RUNNING; tests/unit/test_slurm.py checks that decision)."""
    assert KILL_WAIT_S > 5
    job = Job(slurm, tmp_path, config, "cancel", env={"MEGATRON_NITP_TEST_SLOW_SAVE": "5@4"})
    job.wait_for(lambda: job.tracker_at(2) and (job.ckpt / "iter_0000004.tmp").is_dir(),
                 "the save of iteration 4")
    start = time.time()
    slurm.run("scancel", job.id)
    # Gone: every process of the job exited (squeue lists running and completing jobs).
    job.wait_for(lambda: job.id not in slurm.run("squeue", "-h", "-o", "%i").stdout.split(),
                 "the job to leave the queue", timeout=KILL_WAIT_S + 30)
    # SLURM SIGKILLs what is left after KillWait; the slack is the controller's completing
    # phase on a loaded 2-core machine (18 s measured at load 10).
    took = time.time() - start
    assert took < KILL_WAIT_S + 20, f"{took:.1f} s\n{job.out[-4000:]}"
    info = job.info()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    assert "exiting at iteration 4 (SIGTERM)" in job.out, job.out[-4000:]
    assert "requeueing" not in job.out, job.out[-4000:]
    time.sleep(3)  # a requeue by the batch script would show as PENDING / Restarts 1 by now
    assert slurm.job(job.id).get("Restarts") == "0" and job.id not in slurm.run(
        "squeue", "-h", "-o", "%i").stdout.split()
    assert job.tracker_at(4) and not list(job.ckpt.glob("*.tmp"))
    # Valid: the checkpoint the tracker names loads (one process; no training left to do).
    # (--train-iters 4: nothing left to train; the checkpoint's 8-iteration schedule is kept.)
    res = run_engine(["--config", config, "--mock-data", "--load", job.ckpt,
                      "--train-iters", "4", "--use-checkpoint-opt_param-scheduler"])
    assert "at iteration 4" in res.stdout


def test_two_nodes_rendezvous_at_the_first_nodes_address(slurm, config, torchrun_records,
                                                        tmp_path):
    job = Job(slurm, tmp_path, config, "twonode", nodes=2, tasks_per_node=1)
    info = job.done()
    assert info["NodeList"] == "n[1-2]"
    ranks = sorted(re.findall(r"^rank (\d) of 2 \(local (\d)\) on (n\d), rendezvous (\S+)$",
                              job.out, re.M))
    port = 20000 + int(job.id) % 20000
    # MASTER_ADDR: n1's NodeAddr (the node name is only a label here), not "n1".
    assert ranks == [("0", "0", "n1", f"127.0.0.1:{port}"), ("1", "0", "n2", f"127.0.0.1:{port}")]
    assert records(job.log) == torchrun_records
