"""Retention: a deleted job's status and log are removed once the period is over."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from filerexec.config import Settings
from filerexec.daemon import Daemon
from tests.conftest import Host
from tests.util import wait_for


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
        assert "| gone |" not in (status / "index.md").read_text()
        assert "| kept |" in (status / "index.md").read_text()
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
    wait_for(lambda: not (host.status_dir / "brief.yaml").exists(), timeout=10,
             what="the deleted job's status to be removed")
    assert not (host.status_dir / "brief.log").exists()
