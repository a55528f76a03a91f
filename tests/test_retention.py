"""Retention: a deleted job's status and log are removed once the period is over."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from filerexec.config import Settings
from filerexec.daemon import Daemon
from filerexec.ledger import Ledger
from filerexec.publisher import REMOVAL_RETRY
from tests.conftest import Host
from tests.test_model import FakeProcs
from tests.util import index_states, wait_for


def test_daemon_removes_deleted_jobs_status_after_retention(spool: Path, tmp_path: Path) -> None:
    offset = [0.0]  # the daemon's clock runs ahead of the real one when the test says so

    def clock() -> float:
        return time.time() + offset[0]

    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                        delete_grace=0.5, retention=3600.0, rescan_interval=1000.0,
                        poll_interval=1000.0, heartbeat_interval=1000.0)
    daemon = Daemon(settings, clock)
    daemon.open()
    try:
        for name in ("gone", "kept"):
            job = spool / "jobs" / f"{name}.yaml"
            job.write_text(f"commands: echo {name}\n")
            os.utime(job, (clock() - 60, clock() - 60))
        status = spool / "status" / "h"

        def finished() -> bool:
            daemon.step(clock())
            return all((status / f"{n}.log").exists() for n in ("gone", "kept"))

        wait_for(finished, what="both jobs to finish")
        (spool / "jobs" / "gone.yaml").unlink()
        for _ in range(2):  # the next listing misses it; the one after the grace confirms it
            offset[0] += settings.scan_interval
            daemon.step(clock())
        assert daemon.writer.flush()  # status files are written on the writer thread
        assert "deleted:" in (status / "gone.yaml").read_text()
        deleted_at = daemon.jobs["gone"].deleted
        assert deleted_at is not None

        offset[0] += 3600 - 2  # just before the retention ends: everything stays
        assert 1.5 < daemon.step(clock()) <= 2.0  # and the daemon wakes up for it
        assert (status / "gone.yaml").exists() and (status / "gone.log").exists()

        offset[0] += 2
        daemon.step(clock())
        assert daemon.writer.flush()
        assert not (status / "gone.yaml").exists() and not (status / "gone.log").exists()
        assert (status / "kept.yaml").exists() and (status / "kept.log").exists()
        assert "gone" not in daemon.jobs
        assert set(index_states((status / "index.md").read_text())) == {"kept"}
    finally:
        daemon.close()
    # Its record is gone from the ledger (a restart does not bring the status back);
    # its run history stays.
    db = sqlite3.connect(next((tmp_path / "state").glob("ledger.sqlite")))
    try:
        assert [r[0] for r in db.execute("SELECT name FROM jobs ORDER BY name")] == ["kept"]
        assert db.execute("SELECT COUNT(*) FROM runs WHERE job = 'gone'").fetchone()[0] == 1
    finally:
        db.close()


def test_retention_flag_reaches_the_real_daemon(host: Host) -> None:
    host.extra_args += ["--retention", "1s", "--delete-grace", "0.3"]
    host.start()
    host.drop("brief.yaml", "commands: echo hi\n")
    host.wait_state("brief", "succeeded")
    (host.spool / "jobs" / "brief.yaml").unlink()
    # The status goes first, then the log: wait for both (checking the log at once raced).
    wait_for(lambda: not (host.status_dir / "brief.yaml").exists()
             and not (host.status_dir / "brief.log").exists(), timeout=30,
             what="the deleted job's status and log to be removed")


def test_a_ledger_error_during_retention_is_shown_and_retried_not_a_crash(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    procs, now = FakeProcs(), [time.time() + 10]  # after the file's mtime: read at once
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                        settle=0.0, delete_grace=1.0, retention=100.0)
    daemon = Daemon(settings, clock=lambda: now[0], procs=procs)
    daemon.open()
    try:
        (spool / "jobs" / "gone.yaml").write_text("commands: 'exit 0 # n1'\n")
        daemon.step(now[0])
        procs.running()[0].end(0)
        (spool / "jobs" / "gone.yaml").unlink()
        for dt in (1.0, 1.0, 1.0):  # collected, missing, deletion confirmed
            now[0] += dt
            daemon.step(now[0])
        assert daemon.jobs["gone"].deleted is not None

        def full(*args: object, **kwargs: object) -> None:
            raise sqlite3.OperationalError("attempt to write a readonly database")

        monkeypatch.setattr(Ledger, "save", full)
        now[0] += 200
        daemon.step(now[0])  # raised OperationalError before
        assert daemon.writer.flush()
        assert "ledger unwritable" in (spool / "status" / "h" / "host.yaml").read_text()
        assert not (spool / "status" / "h" / "gone.yaml").exists()
        monkeypatch.undo()
        now[0] += 2
        daemon.step(now[0])
        assert daemon.table.ledger_problem is None
    finally:
        daemon.close()
        procs.release()
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0  # removed at last
    finally:
        db.close()


def test_a_status_folder_failing_during_a_removal_keeps_the_record_until_it_works(
        spool: Path, tmp_path: Path) -> None:
    procs, now = FakeProcs(), [time.time() + 10]
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                        settle=0.0, delete_grace=1.0, retention=100.0)
    status = spool / "status" / "h"
    daemon = Daemon(settings, clock=lambda: now[0], procs=procs)
    daemon.open()
    try:
        (spool / "jobs" / "gone.yaml").write_text("commands: 'exit 0 # n1'\n")
        daemon.step(now[0])
        procs.running()[0].end(0)
        (spool / "jobs" / "gone.yaml").unlink()
        for _ in range(3):
            now[0] += 1.0
            daemon.step(now[0])
        assert daemon.writer.flush() and (status / "gone.yaml").exists()
        status.rename(tmp_path / "aside")  # the folder fails: a file where it must be
        status.write_text("not a folder\n")
        now[0] += 200
        delay = daemon.step(now[0])
        assert "gone" in daemon.jobs, "forgotten although its status could not be removed"
        assert delay >= 0.5, "a failing removal must not spin the loop"
        status.unlink()  # repaired: the writer, retrying, may make the folder again first
        status.mkdir(exist_ok=True)
        for aside in (tmp_path / "aside").iterdir():
            aside.replace(status / aside.name)
        now[0] += REMOVAL_RETRY
        daemon.step(now[0])
        assert daemon.writer.flush()
        assert not (status / "gone.yaml").exists() and not (status / "gone.log").exists()
        assert "gone" not in daemon.jobs
    finally:
        daemon.close()
        procs.release()
