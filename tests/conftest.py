"""Fixtures: a spool in a temp folder and a real `filerexec serve` process on it."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings

from tests.slurm_cluster import Cluster
from tests.slurm_cluster import missing as slurm_missing
from tests.util import wait_for


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest-xdist (scripts/test runs up to 4 workers), the long tests run one after
    another on one worker, so they never compete with each other for the machine's cores, and
    fixed resources a slow test starts once (a Syncthing pair, a Slurm cluster, a Wine prefix)
    are never started twice at the same time; the short ones share out the other workers."""
    serial = item.get_closest_marker("slow") or item.get_closest_marker("serial")
    if serial and item.config.pluginmanager.hasplugin("xdist"):  # not in the Windows stage
        item.add_marker(pytest.mark.xdist_group("serial"))  # read by xdist's modifyitems hook


# Property tests check what the code does, not how fast: hypothesis' per-example deadline
# (200 ms) failed them on a shared 2-core machine under load. Speed is the benchmark's.
settings.register_profile("filerexec", deadline=None)
settings.load_profile("filerexec")

HOST = "testhost"


class Host:
    """A real daemon process serving ``spool`` as host ``name``, driven like a user would."""

    def __init__(self, spool: Path, state: Path, name: str = HOST) -> None:
        self.spool, self.state, self.name = spool, state, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state.parent / f"daemon-{name}.log"
        self.extra_args: list[str] = ["--rescan", "1"]
        self.prefix: list[str] = []  # e.g. setpriv: run the daemon with fewer privileges
        self.entry = ["-m", "filerexec"]  # or a test's own entry (tests/dying_daemon.py)
        self.timeout = 15.0  # for the daemon to start or stop (Wine under load needs more)

    @property
    def status_dir(self) -> Path:
        return self.spool / "status" / self.name

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, *self.entry, "serve", str(self.spool), "--host", self.name,
                "--state-dir", str(self.state), "-v", *self.extra_args, *args]
        argv = [*self.prefix, *argv]
        with open(self.log, "ab") as log:
            proc = self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
        wait_for(lambda: (self.status_dir / "host.yaml").exists() or proc.poll() is not None,
                 timeout=self.timeout, what="the daemon to write host.yaml")
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=self.timeout)
        self.proc = None
        return code

    def drop(self, name: str, text: str) -> Path:
        """Deliver a job file as sync clients do: a temp name, then a rename into place."""
        target = self.spool / "jobs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".syncthing.{target.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
        return target

    def status(self, job: str) -> dict[str, Any] | None:
        try:
            doc = yaml.safe_load((self.status_dir / f"{job}.yaml").read_text())
        except (OSError, yaml.YAMLError):  # Windows: PermissionError while it is replaced
            return None
        return doc if isinstance(doc, dict) else None

    def wait_state(self, job: str, *states: str, timeout: float = 15) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.status(job)
            return doc if doc and doc.get("state") in states else None
        try:
            return wait_for(check, timeout=timeout, what=f"{job} to be {'/'.join(states)}")
        except AssertionError:
            raise AssertionError(f"{job}: last status {self.status(job)}\n"
                                 f"daemon log:\n{self.log.read_text()[-3000:]}") from None

    def ledger(self) -> sqlite3.Connection:
        """The daemon's run ledger, opened beside it (SQLite allows a reader)."""
        return sqlite3.connect(next(self.state.glob("spools/*/ledger.sqlite")), timeout=30)

    def heartbeat(self) -> dict[str, Any]:
        """host.yaml as it is now; empty while it is missing or being replaced."""
        try:
            doc = yaml.safe_load((self.status_dir / "host.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def log_of(self, job: str) -> str:
        try:
            return (self.status_dir / f"{job}.log").read_text()
        except OSError:
            return ""


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test (nor the daemons it starts) reads the developer's own config file."""
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text("")
    monkeypatch.setenv("FILEREXEC_CONFIG", str(path))
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    root = tmp_path / "spool"
    (root / "jobs").mkdir(parents=True)
    (root / "status").mkdir()
    return root


@pytest.fixture
def host(spool: Path, tmp_path: Path) -> Iterator[Host]:
    h = Host(spool, tmp_path / "state")
    yield h
    if h.proc is not None and h.proc.poll() is None:
        h.stop()
    _kill_leftovers(tmp_path)


def _kill_leftovers(tmp_path: Path) -> None:
    """Kill any job process a test left running (found by the run's state folder)."""
    marker = str(tmp_path)
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and int(proc_dir.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc_dir.name), signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One private Slurm cluster per test process (the Slurm tests are slow: they all run
    on one worker, one after another); every test leaves it with its controller up."""
    why = slurm_missing()
    if why is not None:
        if os.environ.get("FILEREXEC_REQUIRE_SLURM") == "1":
            pytest.fail(f"FILEREXEC_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    # KillWait longer than the daemon's kill grace: a job that ignores TERM is ended by the
    # daemon's KILL (tests/test_slurm.py shows it), not by Slurm's own.
    c = Cluster(tmp_path_factory.mktemp("slurm"), kill_wait=30)
    c.start()
    yield c
    left = c.stop()
    assert left == [], f"left running after the cluster stopped: {left}"


@pytest.fixture
def slurm_host(host: Host, cluster: Cluster, _isolated_config: Path,
               monkeypatch: pytest.MonkeyPatch) -> Host:
    """A daemon (not yet started) with `executor: slurm` on the private cluster."""
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    _isolated_config.write_text("executor: slurm\nslurm: {poll: 0.3, allow: [cpus, time]}\n")
    return host
