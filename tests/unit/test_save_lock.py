"""The --save lock (training/save_lock.py) in-process: whose lock is taken over, whose refused."""

import json
import os
import socket

import pytest

from megatron_nitp.training.save_lock import LOCK_NAME, SaveDirLock
from megatron_nitp.training.validation import ConfigError


def _lock(save_dir, **owner):
    (save_dir / LOCK_NAME).write_text(json.dumps(owner))


def _slurm(monkeypatch, job, restart):
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock_from_another_node(
        tmp_path, monkeypatch):
    _slurm(monkeypatch, "4242", 1)
    _lock(tmp_path, pid=1, host="other-node", slurm_job_id="4242", slurm_restart_count=0)
    notices = []
    lock = SaveDirLock(str(tmp_path), notices.append).acquire()
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert (owner["pid"], owner["slurm_restart_count"]) == (os.getpid(), 1)
    assert "requeued" in notices[0]
    lock.release()
    assert os.listdir(tmp_path) == []  # no lock, no temporary left


@pytest.mark.parametrize("owner_job, owner_restart", [("77", 0), ("4242", 1)])
def test_another_jobs_or_the_same_incarnations_lock_on_another_node_is_refused(
        tmp_path, monkeypatch, owner_job, owner_restart):
    # Same job id and restart count: two srun steps of one allocation, both alive.
    _slurm(monkeypatch, "4242", 1)
    _lock(tmp_path, pid=1, host="other-node", slurm_job_id=owner_job,
          slurm_restart_count=owner_restart)
    with pytest.raises(ConfigError, match="in use by another run .pid 1 on host other-node"):
        SaveDirLock(str(tmp_path)).acquire()
    assert sorted(os.listdir(tmp_path)) == [LOCK_NAME]


def test_a_live_process_on_this_host_keeps_its_lock_even_with_our_slurm_job_id(
        tmp_path, monkeypatch):
    _slurm(monkeypatch, "4242", 3)
    _lock(tmp_path, pid=os.getppid(), host=socket.gethostname(), slurm_job_id="4242",
          slurm_restart_count=0)
    with pytest.raises(ConfigError, match="on this host"):
        SaveDirLock(str(tmp_path)).acquire()


def test_a_dead_pid_on_this_host_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _lock(tmp_path, pid=2 ** 22 + 12345, host=socket.gethostname())  # beyond pid_max: gone
    notices = []
    SaveDirLock(str(tmp_path), notices.append).acquire().release()
    assert "is gone" in notices[0]


def test_a_lock_taken_over_by_someone_else_meanwhile_is_not_deleted(tmp_path, monkeypatch):
    # Between our read of the stale owner and our rename, another run replaced it with its own.
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _lock(tmp_path, pid=2 ** 22 + 12345, host=socket.gethostname())
    lock = SaveDirLock(str(tmp_path))
    real_read = __import__("megatron_nitp.training.save_lock", fromlist=["_read"])._read
    calls = []

    def read_then_race(path):
        owner = real_read(path)
        if not calls:
            calls.append(1)
            _lock(tmp_path, pid=os.getppid(), host=socket.gethostname())  # the winner's lock
        return owner

    monkeypatch.setattr("megatron_nitp.training.save_lock._read", read_then_race)
    with pytest.raises(ConfigError):
        lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getppid()
