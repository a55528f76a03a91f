"""What sync clients do to job files, through the real daemon: delays, deadlines, files not ready.

Sync-delay telemetry (``modified`` → ``seen`` → ``started``), stale jobs
(``not_after``) and files that cannot be read yet (permission denied, still
being written, online-only placeholders). The Syncthing end-to-end versions
of some of these are in test_syncthing.py.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml

from filerexec.config import Settings
from filerexec.daemon import Daemon
from filerexec.machine import Job, Readiness, Run, State, Version
from filerexec.render import timestamp
from filerexec.spec import parse_job
from filerexec.spool import FileStat, NotReady, is_placeholder, read_job_file
from filerexec.textindex import delays
from tests.conftest import Host
from tests.test_daemon import started_runs
from tests.test_model import FakeProcs
from tests.util import index_jobs, wait_for


def drop_with_mtime(host: Host, name: str, text: str, mtime: float) -> Path:
    """Deliver a file as a sync client does, keeping the mtime it had on the phone."""
    target = host.spool / "jobs" / name
    tmp = target.with_name(f".syncthing.{name}.tmp")
    tmp.write_text(text)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, target)
    return target


def index_facts(host: Host, job: str) -> dict[str, str]:
    index = host.status_dir / "index.md"
    return index_jobs(index.read_text() if index.exists() else "").get(job, {})


# --- sync-delay telemetry -----------------------------------------------------


def test_status_and_index_show_sync_delay_and_start_delay(host: Host) -> None:
    host.start()
    saved = time.time() - 7  # the phone saved it 7 s ago; the sync took that long
    drop_with_mtime(host, "late-sync.yaml", "commands: 'true'\n", saved)
    doc = host.wait_state("late-sync", "succeeded")
    assert doc["modified"] == timestamp(saved)
    seen, started = datetime.fromisoformat(doc["seen"]), datetime.fromisoformat(doc["started"])
    assert timedelta(seconds=6) <= seen - datetime.fromisoformat(doc["modified"])
    assert started - seen <= timedelta(seconds=1)
    facts = wait_for(lambda: index_facts(host, "late-sync"), what="index.md to list the job")
    assert re.fullmatch(r"[78]s → [01]s", facts["sync → start"]), facts
    assert "next" not in facts


def test_delays_rendering() -> None:
    spec = parse_job("commands: 'true'\n", "j")
    version = Version(Readiness.VALID, spec, mtime=1000.0, seen=1004.2)
    run = Run("r1", spec.digest, started=1004.3)
    assert delays(Job("j", State.SUCCEEDED, version=version, run=run)) == "4s → 0s"
    assert delays(Job("j", State.PENDING, version=version)) == "4s → …"
    assert delays(Job("j", State.EXPIRED, version=version)) == "4s"
    slow = Version(Readiness.VALID, spec, mtime=1000.0, seen=1000.0 + 90 * 60)
    assert delays(Job("j", State.RUNNING, version=slow,
                      run=Run("r2", spec.digest, started=1000.0 + 92 * 60))) == "2h → 2m"
    skewed = Version(Readiness.VALID, spec, mtime=1010.0, seen=1004.0)  # phone clock ahead
    assert delays(Job("j", State.PENDING, version=skewed)) == "-6s → …"
    old_run = Run("r0", "another digest", started=900.0)
    assert delays(Job("j", State.INVALID, version=version, run=old_run)) == "4s"
    assert delays(Job("j", State.KILLED, run=run)) == ""  # deleted: no version


class Served:
    """A daemon in this process with fake processes and a fake clock: time passing is shown
    by moving the clock, never by waiting for the real one."""

    def __init__(self, spool: Path, state: Path) -> None:
        self.spool, self.now, self.procs = spool, time.time() + 100, FakeProcs()
        self.settings = Settings(spool=spool, host="h", state_dir=state, poll=True,
                                 settle=0.0, delete_grace=1.0)
        self.daemon = self.open()

    def open(self) -> Daemon:
        daemon = Daemon(self.settings, clock=lambda: self.now, procs=self.procs)
        daemon.open()
        return daemon

    def drop(self, name: str, text: str, mtime: float) -> None:
        target = self.spool / "jobs" / name
        tmp = target.with_name(f".syncthing.{name}.tmp")
        tmp.write_text(text)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, target)

    def step(self, dt: float = 1.0) -> None:
        self.now += dt
        self.daemon.step(self.now)
        for proc in self.procs.running():
            proc.end(proc.code)
        self.daemon.step(self.now)

    def doc(self, name: str) -> dict[str, Any]:
        assert self.daemon.writer.flush()
        doc = yaml.safe_load((self.spool / "status" / "h" / f"{name}.yaml").read_text())
        assert isinstance(doc, dict)
        return doc

    def close(self) -> None:
        self.daemon.close()
        self.procs.release()


def test_seen_survives_touch_identical_redelivery_and_restart(
        spool: Path, tmp_path: Path) -> None:
    host = Served(spool, tmp_path / "state")
    try:
        text = "commands: 'exit 0 # n1'\n"
        host.drop("keep.yaml", text, host.now - 3)
        host.step()
        first = host.doc("keep")
        assert first["state"] == "succeeded" and first["seen"] == timestamp(host.now)
        host.now += 60  # a new seen would differ by a minute
        host.drop("keep.yaml", text, host.now - 1)  # an identical re-delivery
        host.step()
        assert host.doc("keep")["modified"] == timestamp(host.now - 2)
        assert host.doc("keep")["seen"] == first["seen"]
        os.utime(spool / "jobs" / "keep.yaml", (host.now, host.now))  # a touch
        host.step()
        touched = host.doc("keep")
        assert touched["modified"] != first["modified"] and touched["seen"] == first["seen"]
        host.daemon.close()
        host.now += 60
        host.daemon = host.open()
        host.drop("keep.yaml", text, host.now + 5)
        host.step()
        after = host.doc("keep")
        assert after["modified"] == timestamp(host.now + 4)  # read again, after the restart
        assert after["seen"] == first["seen"] and after["started"] == first["started"]
        assert after["runs"] == 1 and len(host.procs.procs) == 1
    finally:
        host.close()


def test_seen_is_new_for_a_new_version_and_for_a_redrop_after_deletion(
        spool: Path, tmp_path: Path) -> None:
    host = Served(spool, tmp_path / "state")
    try:
        host.drop("v.yaml", "commands: 'exit 0 # n1'\n", host.now)
        host.step()
        first = host.doc("v")
        host.now += 60
        (spool / "jobs" / "v.yaml").unlink()
        for _ in range(3):  # missing, then confirmed after the grace
            host.step()
        assert host.doc("v").get("deleted")
        host.drop("v.yaml", "commands: 'exit 0 # n1'\n", host.now)
        host.step()
        again = host.doc("v")
        assert again["runs"] == 2 and again["state"] == "succeeded"
        assert again["seen"] != first["seen"] and again["seen"] <= again["started"]
        host.drop("v.yaml", "commands: 'exit 0 # n2'\n", host.now)  # a new version
        host.now += 60
        host.step()
        assert host.doc("v")["seen"] == timestamp(host.now) != again["seen"]
    finally:
        host.close()


# --- stale jobs -----------------------------------------------------------------


def test_job_arriving_after_not_after_is_expired_not_run(host: Host, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    deadline = (datetime.now().astimezone() - timedelta(seconds=30)).replace(microsecond=0)
    host.start()
    host.drop("stale.yaml", f"commands: touch {marker}\nnot_after: {deadline.isoformat()}\n")
    later = (deadline + timedelta(hours=1)).isoformat()
    host.drop("fresh.yaml", f"commands: 'true'\nnot_after: {later}\n")
    doc = host.wait_state("stale", "expired")
    assert doc["reason"] == f"not run: its not_after time {deadline.isoformat()} had passed"
    assert "started" not in doc and doc["runs"] == 0
    host.wait_state("fresh", "succeeded")
    wait_for(lambda: index_facts(host, "stale").get("state") == "expired",
             what="index.md to list the expired job")
    assert not marker.exists() and started_runs(host, "stale") == 0


# --- files that are not ready ---------------------------------------------------------

# Tests run as root, and root reads a mode-000 file. The daemon is started without
# the capabilities that let root ignore file permissions, so it meets a real EACCES.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_unreadable_file_is_pending_retried_and_runs_once_readable(
        host: Host, tmp_path: Path) -> None:
    out = tmp_path / "out"
    host.prefix = NO_DAC if os.geteuid() == 0 else []
    host.start()
    target = host.spool / "jobs" / "locked.yaml"
    tmp = target.with_name(".syncthing.locked.yaml.tmp")
    tmp.write_text(f"commands: echo ran >> {out}\n")
    tmp.chmod(0)
    os.replace(tmp, target)
    doc = host.wait_state("locked", "pending")
    assert doc["reason"].startswith("waiting for the sync client")
    host.drop("other.yaml", "commands: 'true'\n")  # the daemon is not blocked meanwhile
    host.wait_state("other", "succeeded")
    assert (host.status("locked") or {}).get("state") == "pending"
    assert host.proc is not None and host.proc.poll() is None
    target.chmod(0o644)  # the stat key does not change: only the retry can notice
    host.wait_state("locked", "succeeded")
    assert out.read_text().split() == ["ran"] and started_runs(host, "locked") == 1


def test_file_still_growing_never_runs_half_and_does_not_block(
        host: Host, tmp_path: Path) -> None:
    out = tmp_path / "out"
    host.start()
    lines = ["commands:\n"] + [f"  - echo {i} >> {out}\n" for i in range(6)]
    target = host.spool / "jobs" / "grow.yaml"
    meanwhile = [f"meanwhile-{i}" for i in range(len(lines))]
    # Written in place, slowly (pauses shorter than the 1 s settle time), like a client
    # without temp files; other jobs arrive meanwhile.
    with open(target, "w") as f:
        for line, other in zip(lines, meanwhile, strict=True):
            f.write(line)
            f.flush()
            host.drop(f"{other}.yaml", "commands: 'true'\n")
            wait_for(lambda: time.time() - target.stat().st_mtime >= 0.2,
                     what="a pause between chunks")
            assert (host.status("grow") or {}).get("state", "pending") == "pending"
    doc = host.wait_state("grow", "succeeded")
    assert doc["runs"] == 1 and out.read_text().split() == [str(i) for i in range(6)]
    for other in meanwhile:
        host.wait_state(other, "succeeded")


def _stat(path: Path, **change: Any) -> FileStat:
    st = os.stat(path)
    fields: dict[str, Any] = dict(where=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns,
                                  ino=st.st_ino, mode=st.st_mode, nlink=st.st_nlink)
    fields.update(change)
    return FileStat(**fields)


def test_read_refuses_a_file_that_grew_since_it_was_listed(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_text("commands:\n  - echo 1\n")
    listed = _stat(path)
    with open(path, "a") as f:
        f.write("  - echo 2\n")
    with pytest.raises(NotReady, match="waiting for the sync client: the file is still arriving"):
        read_job_file(listed, 65536)
    assert read_job_file(_stat(path), 65536).endswith(b"echo 2\n")


def test_placeholder_is_not_read_and_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_text("commands: 'true'\n")
    with pytest.raises(NotReady, match="online-only"):
        read_job_file(_stat(path, placeholder=True), 65536)
    assert is_placeholder(cast(os.stat_result, SimpleNamespace(st_flags=0x40000000)))  # macOS
    assert is_placeholder(cast(os.stat_result, SimpleNamespace(st_file_attributes=0x400000)))
    assert is_placeholder(cast(os.stat_result, SimpleNamespace(st_file_attributes=0x1000)))
    assert not is_placeholder(cast(os.stat_result, SimpleNamespace(st_flags=0)))
    assert not is_placeholder(os.stat(path))
