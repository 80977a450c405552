"""The --save lock (training/save_lock.py) in-process: whose lock is taken over, whose refused."""

import json

import pytest

from megatron_nitp.training.save_lock import LOCK_NAME, SaveDirLock
from megatron_nitp.training.validation import ConfigError


def _foreign_lock(save_dir, job):
    # A live-looking owner on another host: its pid cannot be checked from here.
    (save_dir / LOCK_NAME).write_text(json.dumps(
        {"pid": 1, "host": "some-other-node", "since": 0.0, "slurm_job_id": job}))


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _foreign_lock(tmp_path, "4242")
    notices = []
    lock = SaveDirLock(str(tmp_path), notices.append).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["slurm_job_id"] == "4242"
    assert "requeued" in notices[0]
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("job", [None, "4242"])
def test_another_jobs_lock_on_another_node_is_refused(tmp_path, monkeypatch, job):
    if job:
        monkeypatch.setenv("SLURM_JOB_ID", job)
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _foreign_lock(tmp_path, "77")
    with pytest.raises(ConfigError, match="in use by pid 1 on host some-other-node"):
        SaveDirLock(str(tmp_path)).acquire()
