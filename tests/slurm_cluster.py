"""A private single-node Slurm cluster for the tests: munged, slurmctld and slurmd on
127.0.0.1 with their own config folder, ports and state, started as root.

Debian's packages (`slurmctld slurmd slurm-client munge`; `.ci/run` installs them).
`Cluster.start()` returns once the node is idle; `stop()` cancels every job, stops the
daemons and checks that nothing is left running. `stop_controller()` /
`start_controller()` take slurmctld away and bring it back (its state survives).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.util import wait_for

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol",
            "scancel", "sinfo")


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    absent = [b for b in BINARIES if shutil.which(b) is None
              and not Path("/usr/sbin", b).exists()]
    if absent:
        return f"Slurm is not installed (missing {', '.join(absent)}; apt-get install " \
               "slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "the private Slurm cluster runs its daemons as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proctrack() -> str:
    probe = Path(f"/sys/fs/cgroup/freezer/.probe-{os.getpid()}")
    try:
        probe.mkdir()
    except OSError:
        return "linuxproc"
    probe.rmdir()
    return "cgroup"


class Cluster:
    def __init__(self, root: Path, min_job_age: int = 300, kill_wait: int = 2) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "etc" / "slurm.conf"
        self.min_job_age, self.kill_wait = min_job_age, kill_wait
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # where Debian puts the daemons
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def _write_config(self) -> None:
        """Only what must differ from Slurm's defaults: the "none" plugins (accounting,
        job completion, switch, MPI, task) are left to the default, as Slurm 22.05 (Debian
        12) and 24.11 (Debian 13) both load it, where a newer Slurm may no longer know a
        plugin named in the file."""
        r = self.root
        for sub in ("etc", "munge", "state", "spool", f"spool/slurmd-{self.node}", "log", "run"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        for folder in (r, *r.parents):  # munged: every folder above its socket must be o+x
            if folder.stat().st_mode & 0o001 == 0:
                folder.chmod(folder.stat().st_mode | 0o011)
        (r / "munge").chmod(0o755)
        self.conf.write_text(f"""ClusterName=filerexec
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/slurmd-%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
ProctrackType=proctrack/{_proctrack()}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
MinJobAge={self.min_job_age}
KillWait={self.kill_wait}
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        (r / "etc" / "cgroup.conf").write_text(
            "CgroupPlugin=autodetect\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=no\n"
            "ConstrainRAMSpace=no\nConstrainDevices=no\n")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              timeout=30, check=check)

    def start(self) -> None:
        self._write_config()
        m = self.root / "munge"
        if not (m / "munge.key").exists():
            self._run("mungekey", "--create", "--bits=1024", f"--keyfile={m / 'munge.key'}")
        (m / "munge.key").chmod(0o600)
        self._run("munged", f"--socket={m / 'munge.socket'}", f"--key-file={m / 'munge.key'}",
                  f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                  f"--seed-file={m / 'munged.seed'}")
        self.start_controller()
        self._run("slurmd", "-f", str(self.conf), "-N", self.node)
        self.wait_idle()

    def wait_idle(self) -> None:
        """Until the controller answers and the node takes jobs."""
        wait_for(lambda: self._run("sinfo", "-h", "-n", self.node, "-o", "%T",
                                   check=False).stdout.strip() == "idle",
                 timeout=30, interval=0.1, what=f"the Slurm node to be idle ({self.root}/log)")

    def start_controller(self) -> None:
        """Start slurmctld (again); return once it answers."""
        self._run("slurmctld", "-f", str(self.conf))
        wait_for(lambda: self._run("sinfo", "-h", "-n", self.node, "-o", "%T",
                                   check=False).stdout.strip(),
                 timeout=30, interval=0.1, what=f"slurmctld to answer ({self.root}/log)")

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.root / name).read_text())
        except (OSError, ValueError):
            return None

    def _alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _stop(self, *names: str) -> None:
        pids = [p for n in names if (p := self._pid(n)) is not None and self._alive(p)]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(self._alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if self._alive(pid):
                os.kill(pid, signal.SIGKILL)

    def stop_controller(self) -> None:
        self._stop("run/slurmctld.pid")

    def cancel(self, job_id: str) -> None:
        self._run("scancel", job_id)

    def scontrol(self, *args: str) -> str:
        return self._run("scontrol", *args, check=False).stdout

    def submitted(self, text: str) -> list[str]:
        """The ids of every job Slurm still knows whose record mentions ``text`` (a test's
        state folder is in each of its runs' ``StdOut=``): how many submissions were made."""
        lines = self.scontrol("-o", "show", "job").splitlines()
        return [line.split()[0].removeprefix("JobId=") for line in lines if text in line]

    def state_of(self, job_id: str) -> str:
        """``JobState`` of one job, as scontrol says it now."""
        for field in self.scontrol("-o", "show", "job", job_id).split():
            if field.startswith("JobState="):
                return field.removeprefix("JobState=")
        return ""

    def jobs(self) -> list[str]:
        return self._run("squeue", "-h", "-o", "%i", check=False).stdout.split()

    def stop(self) -> list[str]:
        """Cancel every job, stop the daemons; return what was left running (killed)."""
        ids = self.jobs()
        if ids:
            self._run("scancel", *ids, check=False)
            wait_for(lambda: not self.jobs(), timeout=20, what="every Slurm job to end")
        self._stop(f"run/slurmd-{self.node}.pid", "run/slurmctld.pid", "munge/munged.pid")
        left = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if cmdline.startswith("slurmstepd") or (
                    f"SLURM_CONF={self.conf}".encode() in environ
                    and b"SLURM_JOB_ID=" in environ):
                left.append(f"{proc.name}: {cmdline}")
                os.kill(int(proc.name), signal.SIGKILL)
        return left
