"""Which writes reach the disk before they return (issue 12): every ledger commit that an
action follows, and a commit of what a spawn returned without its fsync; the synced logs,
not the status files — counted by tracing the real system calls of a real process, which
then dies outright where that matters (nothing of it is lost)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

traced = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("strace") is None,
    reason="needs strace (Debian: apt install strace; .ci/run installs it)")

SAVE = """
import os, sys
from filerexec.ledger import Ledger
from filerexec.machine import Job
ledger = Ledger(__import__("pathlib").Path(sys.argv[1]))
os.write(1, b"MARK\\n")
ledger.save([Job(sys.argv[2])], durable=sys.argv[3] == "durable")
os.write(1, b"MARK\\n")
os.write(1, b"synchronous=%d\\n" % ledger._db.execute("PRAGMA synchronous").fetchone()[0])
os._exit(9)  # a crash: no close, no checkpoint
"""


def syncs_during_save(ledger: Path, job: str, durable: str) -> int:
    """fsync/fdatasync calls between the two marks of SAVE (strace follows the process)."""
    out = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,write", "-s", "8", sys.executable,
         "-c", SAVE, str(ledger), job, durable], capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr[-2000:]
    assert "synchronous=2" in out.stdout  # FULL again for the next commit
    trace = out.stderr.split('"MARK\\n"')
    assert len(trace) == 3, out.stderr[-2000:]  # before, during, after the save
    return sum(call in line for line in trace[1].splitlines()
               for call in ("fsync(", "fdatasync("))


@traced
def test_a_commit_before_an_action_is_fsynced_one_after_a_spawn_is_not_and_both_survive(
        tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    assert syncs_during_save(ledger, "before", "durable") >= 1
    assert syncs_during_save(ledger, "after", "not-durable") == 0
    with sqlite3.connect(ledger) as db:  # the process died without closing: both are there
        names = {row[0] for row in db.execute("SELECT name FROM jobs")}
    assert names == {"before", "after"}


def test_a_commit_that_cannot_begin_leaves_the_next_ones_durable(tmp_path: Path) -> None:
    from filerexec.ledger import Ledger
    from filerexec.machine import Job

    ledger = Ledger(tmp_path / "ledger.sqlite")
    other = sqlite3.connect(tmp_path / "ledger.sqlite", timeout=0)
    try:
        ledger._db.execute("PRAGMA busy_timeout=0")
        other.execute("BEGIN IMMEDIATE")  # another writer holds the ledger: BEGIN fails
        with pytest.raises(sqlite3.OperationalError):
            ledger.save([Job("a")], durable=False)
        other.rollback()
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        other.close()
        ledger.close()


WRITE = """
import os, sys
from pathlib import Path
from filerexec.machine import Job, State
from filerexec.writer import StatusDir
status = StatusDir(Path(sys.argv[1]), "h")
out = Path(sys.argv[1]) / "run.out"
out.write_bytes(b"hello\\n")
os.write(1, b"MARK\\n")
status.write_job(Job("a", state=State.SUCCEEDED, reason="exit code 0"))
status.write_host({"host": "h"})
os.write(1, b"MARK\\n")
status.publish_log("a", out, 1024)
os.write(1, b"MARK\\n")
"""


@traced
def test_status_files_are_not_fsynced_the_log_is(tmp_path: Path) -> None:
    """The status files are a view the next daemon rewrites; a log is the only copy of the
    output once the run's raw file is deleted, so it reaches the disk first."""
    (tmp_path / "status").mkdir()
    out = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,write", "-s", "8", sys.executable,
         "-c", WRITE, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    trace = out.stderr.split('"MARK\\n"')
    assert len(trace) == 4, out.stderr[-2000:]
    syncs = [sum(call in line for line in part.splitlines() for call in ("fsync(", "fdatasync("))
             for part in trace[1:3]]
    assert syncs == [0, 1]
    assert (tmp_path / "status" / "h" / "a.log").read_bytes() == b"hello\n"
    assert "succeeded" in (tmp_path / "status" / "h" / "a.yaml").read_text()
