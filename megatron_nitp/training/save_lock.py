"""One run per --save directory: a lock file naming the owner (pid, host), taken before any work.

Two runs saving into one directory would interleave checkpoints and race on the tracker. The lock
is `SAVE/.megatron_nitp.lock`, created exclusively (O_EXCL) by global rank 0 and removed when the
run ends. A lock left by a run that died without cleaning up (SIGKILL, node loss) is stale when
its host is this host and its pid is gone, or when it names this run's own SLURM job (a requeued
job: SLURM ends the earlier incarnation before it starts the job again, on any node); it is then
taken over with a notice. A lock from another host cannot be checked from here: the message says
how to remove it.
"""

import atexit
import json
import os
import socket
import time

from .validation import ConfigError

LOCK_NAME = ".megatron_nitp.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path):
    try:
        with open(path, "rb") as f:
            owner = json.loads(f.read().decode("utf-8", errors="replace"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}  # half-written by a killed run: no owner to protect


class SaveDirLock:
    def __init__(self, save_dir: str, log=print):
        self.save_dir = os.path.abspath(save_dir)
        self.path = os.path.join(self.save_dir, LOCK_NAME)
        self.log = log
        self.created_dir = False
        self.held = False

    def acquire(self):
        if not os.path.isdir(self.save_dir):
            os.makedirs(self.save_dir)
            self.created_dir = True
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            atexit.register(self.release)
            return self
        raise ConfigError(f"--save {self.save_dir}: could not take the lock {self.path}")

    def _refuse_or_clear(self):
        owner = _read(self.path)
        pid, host = owner.get("pid"), owner.get("host")
        job = os.environ.get("SLURM_JOB_ID")
        if job and owner.get("slurm_job_id") == job:
            self.log(f"notice: --save {self.save_dir}: taking over the lock of SLURM job {job}'s "
                     f"earlier run (pid {pid} on {host}): the job was requeued")
            os.remove(self.path)
            return
        if isinstance(pid, int) and host and host != socket.gethostname():
            raise ConfigError(f"--save {self.save_dir}: in use by pid {pid} on host {host} "
                              f"(lock {self.path}); if that run is gone, delete the lock file")
        if isinstance(pid, int) and _alive(pid):
            raise ConfigError(f"--save {self.save_dir}: in use by another run (pid {pid} on "
                              f"this host, lock {self.path}); two runs must not write one "
                              "checkpoint directory")
        self.log(f"notice: --save {self.save_dir}: removing the stale lock of pid {pid} "
                 f"on {host or 'an unknown host'} (that run is gone)")
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self):
        if not self.held:
            return
        self.held = False
        if _read(self.path).get("pid") == os.getpid():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        if self.created_dir:
            try:
                os.rmdir(self.save_dir)  # only if the run ended before writing anything
            except OSError:
                pass
