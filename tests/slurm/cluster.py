"""A real SLURM cluster on localhost for the job-script tests: munged, slurmctld and two slurmd.

Debian's slurm-wlm (22.05) and munge, installed with apt-get when missing (as root; CI runs as
root). Everything lives in one temporary state directory: munge key and socket, slurm.conf,
controller state, spool and logs; ports are picked free. Two nodes are emulated on this host
(NodeName n1 and n2, NodeAddr 127.0.0.1, each slurmd on its own port, started with `slurmd -N`:
Debian's build runs several slurmd on one host), 2 CPUs each whatever the hardware has
(SlurmdParameters=config_overrides). No cgroups are needed (proctrack/linuxproc, task/none),
so this runs in containers too. The daemons run in the foreground as children of this process
and are stopped by their pids.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

NODES = ("n1", "n2")
CPUS_PER_NODE = 2
KILL_WAIT_S = 10  # the grace time between SIGTERM and SIGKILL when a job is killed
# How long a requeued job waits before it may start again (slurm.conf: "cred_expire ... also
# controls how long a requeued job must wait"); the default is 120 s.
CRED_EXPIRE_S = 10
PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")


def missing_binaries() -> List[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def install() -> Optional[str]:
    """Install slurm-wlm and munge with apt-get; None on success, else why it cannot be done."""
    if os.geteuid() != 0:  # slurmd launches the jobs' processes as root
        return "the localhost cluster runs its daemons as root; not root here"
    if not missing_binaries():
        return None
    if shutil.which("apt-get") is None:
        return "SLURM not installed and no apt-get to install Debian's slurm-wlm and munge"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}"
    if missing_binaries():
        return f"installed {PACKAGES}, still missing {missing_binaries()}"
    return None


def _free_ports(n: int) -> List[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalSlurm:
    def __init__(self):
        # munged refuses a socket whose directories are not searchable by everyone (pytest's
        # tmp_path is 0700): its own directory under /tmp.
        self.root = Path(tempfile.mkdtemp(prefix="nitp-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.procs: List[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_",
                                                                             "SRUN_"))}
        self.env["SLURM_CONF"] = str(self.conf)

    # -- set-up -------------------------------------------------------------------------------
    def _write_config(self):
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir()
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 Port={p} "
            f"CPUs={CPUS_PER_NODE} State=UNKNOWN" for n, p in zip(NODES, node_ports))
        self.conf.write_text(f"""\
ClusterName=nitptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_ports[0]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge.sock,cred_expire={CRED_EXPIRE_S}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# A requeued job becomes eligible after cred_expire without an event that would schedule it:
# the periodic passes (default 60 s and 30 s) decide when it starts.
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait={KILL_WAIT_S}
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=60
{nodes}
PartitionName=cpu Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name, cmd):
        log = open(self.root / "log" / f"{name}.stdout", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        proc.name = name
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60):
        self._write_config()
        r = self.root
        munged = self._spawn("munged", [
            "munged", "--foreground", f"--key-file={r}/munge/munge.key",
            f"--socket={r}/munge.sock", f"--pid-file={r}/munged.pid",
            f"--log-file={r}/log/munged.log", f"--seed-file={r}/munge/seed"])
        self._wait(lambda: (r / "munge.sock").exists(), timeout, "munged socket", munged)
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
        for n in NODES:
            self._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(self.conf)])
        self._wait(lambda: self.node_states() == {n: "idle" for n in NODES}, timeout,
                   "both nodes idle")

    def _wait(self, cond, timeout, what, proc=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [p.name for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"SLURM daemon(s) {dead} exited\n{self.logs()}")
            if cond():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")

    # -- commands -----------------------------------------------------------------------------
    def run(self, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(c) for c in cmd], env=kw.pop("env", self.env),
                              capture_output=True, text=True, timeout=60, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))}: {proc.returncode}\n{proc.stderr}")
        return proc

    def node_states(self) -> dict:
        proc = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        return dict(line.split() for line in proc.stdout.splitlines() if line.strip())

    def sbatch(self, script, *args, env=None, cwd=None) -> str:
        proc = self.run("sbatch", "--parsable", *args, script, env=env or self.env, cwd=cwd)
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id) -> dict:
        """scontrol's fields of one job ({} once it is gone)."""
        proc = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        fields = {}
        for tok in proc.stdout.split():
            key, sep, value = tok.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields

    def wait_job(self, job_id, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                       "NODE_FAIL", "OUT_OF_MEMORY"), timeout=300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: "
                             f"{self.job(job_id)}\n{self.logs()}")

    def cancel_all(self, timeout=60):
        ids = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if ids:
            self.run("scancel", *ids, check=False)
        deadline = time.time() + timeout
        while time.time() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.5)

    def logs(self, lines=30) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- tear-down ----------------------------------------------------------------------------
    def stop(self):
        """Cancel what is left, then stop the daemons this object started, by pid (slurmd
        before slurmctld before munged)."""
        if all(p.poll() is None for p in self.procs):
            try:
                self.cancel_all()
            except Exception:  # noqa: BLE001  - tear-down goes on
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []
        shutil.rmtree(self.root, ignore_errors=True)
