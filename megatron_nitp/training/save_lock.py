"""One run per --save directory: a lock file naming the owner (pid, host, SLURM job), taken before
any work.

Two runs saving into one directory would interleave checkpoints and race on the tracker. The lock
is `SAVE/.megatron_nitp.lock`, created by global rank 0 with its content in one step (a hard link
of a finished temporary file: no reader ever sees an empty lock) and removed when the run ends.
A lock left by a run that died without cleaning up (SIGKILL, node loss) is stale when its host is
this host and its pid is gone, or when it names an earlier incarnation of this run's own SLURM job
(a requeue: SLURM ends the job before it starts it again, on any node, with a higher
SLURM_RESTART_COUNT); it is then taken over with a notice. A lock from another host cannot be
checked from here: the message says how to remove it.
"""

import atexit
import json
import os
import socket
import time

from ..processes import process_alive
from .log import info
from .validation import ConfigError

LOCK_NAME = ".megatron_nitp.lock"


def _read(path):
    try:
        with open(path, "rb") as f:
            owner = json.loads(f.read().decode("utf-8", errors="replace"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}  # unreadable (another tool's file, a damaged disk): no owner to protect


def _restart_count(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


class SaveDirLock:
    def __init__(self, save_dir: str, log=info):
        self.save_dir = os.path.abspath(save_dir)
        self.path = os.path.join(self.save_dir, LOCK_NAME)
        self.log = log
        self.created_dir = False
        self.held = False
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                   "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                   "slurm_restart_count": _restart_count(os.environ.get("SLURM_RESTART_COUNT"))}

    def acquire(self):
        if not os.path.isdir(self.save_dir):
            os.makedirs(self.save_dir)
            self.created_dir = True
        temporary = f"{self.path}.{os.getpid()}"
        with open(temporary, "w") as f:
            json.dump(self.me, f)
        try:
            for _ in range(3):
                try:
                    os.link(temporary, self.path)  # atomic: fails if a lock exists
                except FileExistsError:
                    self._refuse_or_clear()
                    continue
                self.held = True
                atexit.register(self.release)
                return self
        finally:
            os.remove(temporary)
        raise ConfigError(f"--save {self.save_dir}: could not take the lock {self.path}")

    def _stale_reason(self, owner):
        """Why the owner's lock may be taken over, or None if the owner may still be running."""
        pid, host = owner.get("pid"), owner.get("host")
        if isinstance(pid, int) and host == self.me["host"]:
            return None if process_alive(pid) else f"pid {pid} on this host is gone"
        job = self.me["slurm_job_id"]
        if job and owner.get("slurm_job_id") == job and \
                _restart_count(owner.get("slurm_restart_count")) < self.me["slurm_restart_count"]:
            return f"it is SLURM job {job}'s earlier run (the job was requeued)"
        if not owner:
            return "it names no owner"
        return None

    def _refuse_or_clear(self):
        owner = _read(self.path)
        reason = self._stale_reason(owner)
        pid, host = owner.get("pid"), owner.get("host")
        if reason is None:
            where = "this host" if host == self.me["host"] else f"host {host}"
            hint = "" if host == self.me["host"] else "; if that run is gone, delete the lock file"
            raise ConfigError(f"--save {self.save_dir}: in use by another run (pid {pid} on "
                              f"{where}, lock {self.path}); two runs must not write one "
                              f"checkpoint directory{hint}")
        # Take over by renaming, then check that what was renamed is the stale lock just read:
        # another run may have taken it over first and put its own live lock there.
        claimed = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, claimed)
        except FileNotFoundError:
            return
        if _read(claimed) != owner:
            os.rename(claimed, self.path)
            raise ConfigError(f"--save {self.save_dir}: another run took the lock {self.path} "
                              "at the same moment; two runs must not write one checkpoint "
                              "directory")
        os.remove(claimed)
        self.log(f"notice: --save {self.save_dir}: taking over the lock of pid {pid} on "
                 f"{host or 'an unknown host'}: {reason}")

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
