"""Listing and reading job files as a Windows editor and the Windows file APIs leave them.

Runs in the Windows stage (tests/test_wine.py) too: there the listing's stat comes from
``os.scandir`` (st_ino 0 on Windows) and a CRLF file is read through the C runtime.
"""

from __future__ import annotations

from pathlib import Path

from filerexec import spool

CRLF_JOB = b"# saved by Notepad\r\ncommands:\r\n  - echo one\r\n  - echo two\r\n"


def test_a_listed_job_file_reads_back_whole_crlf_included(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "team").mkdir(parents=True)
    (jobs / "team" / "backup.yaml").write_bytes(CRLF_JOB)
    listing = spool.scan(jobs)
    assert listing is not None
    info = listing.jobs["team/backup"]
    assert info.size == len(CRLF_JOB)
    # Without a real inode in the listing the read says "the file changed while it was read";
    # read in text mode it says "the file is still arriving" (CRLF read as LF).
    assert spool.read_job_file(info, 1 << 20) == CRLF_JOB


def test_the_listing_and_a_single_stat_see_the_same_file(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "hello.yaml").write_bytes(CRLF_JOB)
    listing = spool.scan(jobs)
    assert listing is not None
    found = spool.stat_file(jobs, str(jobs / "hello.yaml"))
    assert found is not None
    name, info = found
    assert name == "hello"
    assert info.key == listing.jobs["hello"].key  # else every event looks like a change
    assert info.ino != 0
