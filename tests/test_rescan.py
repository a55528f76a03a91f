"""Issue 12, item 4: the periodic rescan costs next to nothing at 10,000 jobs, and still finds
what the watcher missed.

A periodic rescan looks at the folders' stats (one lstat per folder) where the watcher is
trusted; it lists ``jobs/`` in full when a folder changed, when an event was lost (an inotify
overflow), while a file waits to be read again, and every ``FULL_LISTING`` seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from filerexec import reconcile as reconcile_module
from filerexec import spool as spool_module
from filerexec.config import Settings
from filerexec.daemon import Daemon
from filerexec.machine import State
from filerexec.reconcile import FULL_LISTING
from filerexec.spool import FileStat, NotReady, list_jobs, read_job_file, unchanged
from tests.conftest import Host
from tests.util import overflow_inotify, wait_for

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the overflow report is the inotify reader's (Linux)")


def _old(path: Path) -> None:
    """Make a file's folder look changed long ago (its ctime still says now)."""
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def test_a_folder_is_unchanged_until_an_entry_comes_or_goes_but_not_for_an_edit_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "sub").mkdir(parents=True)
    (jobs / "a.yaml").write_text("commands: 'true'\n")
    listing = list_jobs(jobs)
    assert set(listing.folders) == {"", "sub/"}
    assert not unchanged(jobs, listing)  # changed just before it was listed: racy
    monkeypatch.setattr(spool_module, "RACY_NS", 0)
    assert unchanged(jobs, list_jobs(jobs))
    (jobs / "a.yaml").write_text("commands: 'false'\n")  # in place: the watcher's to see
    assert unchanged(jobs, list_jobs(jobs))
    for change in (lambda: (jobs / "sub" / "b.yaml").write_text("x"),  # below, too
                   lambda: (jobs / "sub" / "b.yaml").rename(jobs / "sub" / "c.yaml"),
                   lambda: (jobs / "sub" / "c.yaml").unlink(),
                   lambda: (jobs / "sub").chmod(0o700),
                   lambda: _old(jobs)):  # a sync client setting the folder's mtime back
        listing = list_jobs(jobs)
        change()
        assert not unchanged(jobs, listing)


def _daemon(spool: Path, tmp_path: Path) -> Daemon:
    daemon = Daemon(Settings(spool=spool, host="h", state_dir=tmp_path / "state", settle=0.0,
                             rescan_interval=10.0))
    daemon.open()
    return daemon


def _listings(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    real = list_jobs
    monkeypatch.setattr(reconcile_module, "list_jobs",
                        lambda d: calls.append(time.time()) or real(d))
    return calls


def _lose_events(daemon: Daemon, path: Path) -> None:
    """Wait for the watcher's hint about ``path``, then drop it: an event never seen."""
    seen: set[str] = set()
    wait_for(lambda: seen.update(daemon.hints.drain()) or str(path) in seen,
             what=f"the watcher's event for {path.name}")
    daemon.hints.take_lost()  # e.g. the watcher re-armed: not what is tested here
    assert daemon.watcher.trusted  # the look (not a full listing) is what is tested


@linux
def test_job_files_whose_events_were_lost_are_found_by_the_next_periodic_look(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = spool / "jobs"
    (jobs / "old.yaml").write_text("commands: 'true'\n")
    daemon = _daemon(spool, tmp_path)
    try:
        monkeypatch.setattr(spool_module, "RACY_NS", 0)
        now = time.time()
        daemon.step(now)  # the first listing
        listings = _listings(monkeypatch)
        now += 10
        daemon.step(now)
        assert listings == []  # nothing changed: one lstat, no listing
        (jobs / "sub").mkdir()
        (jobs / "sub" / "new.yaml").write_text("commands: 'true'\n")
        (jobs / "old.yaml").unlink()
        _lose_events(daemon, jobs / "old.yaml")  # the last of them: events come in order
        daemon.step(now + 1)
        assert "sub/new" not in daemon.jobs  # no rescan due yet, and the events were lost
        now += 10
        daemon.step(now)
        assert len(listings) == 1
        assert daemon.jobs["sub/new"].runs == 1
        assert daemon.jobs["old"].missing_since is not None
        wait_for(lambda: daemon.step(time.time()) is not None and not daemon.runner.busy
                 and daemon.jobs["sub/new"].state is State.SUCCEEDED, what="sub/new to succeed")
        (jobs / "sub" / "new2.yaml").write_text("commands: 'true'\n")  # below a new folder
        _lose_events(daemon, jobs / "sub" / "new2.yaml")
        daemon.step(now + 10)
        assert daemon.jobs["sub/new2"].runs == 1
    finally:
        daemon.close()


@linux
def test_an_edit_in_place_whose_events_were_lost_waits_at_most_for_the_full_listing(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = spool / "jobs"
    (jobs / "a.yaml").write_text("commands: echo one\n")
    daemon = _daemon(spool, tmp_path)
    try:
        monkeypatch.setattr(spool_module, "RACY_NS", 0)
        now = time.time()
        daemon.step(now)
        wait_for(lambda: daemon.step(time.time()) is not None and not daemon.runner.busy
                 and daemon.jobs["a"].state is State.SUCCEEDED, what="a to succeed")
        listings = _listings(monkeypatch)
        with open(jobs / "a.yaml", "r+") as f:  # in place: no entry comes or goes
            f.write("commands: echo two\n")
        _lose_events(daemon, jobs / "a.yaml")
        now = time.time() + 10
        daemon.step(now)
        assert listings == [] and daemon.jobs["a"].runs == 1
        daemon.step(now + FULL_LISTING)  # the backstop
        assert len(listings) == 1 and daemon.jobs["a"].runs == 2
    finally:
        daemon.close()


def test_a_file_that_waits_to_be_read_again_is_retried_by_every_periodic_rescan(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (spool / "jobs" / "a.yaml").write_text("commands: 'true'\n")
    real = read_job_file
    blocked = [True]

    def read(info: FileStat, cap: int, jobs_dir: Path | None = None) -> bytes:
        if blocked[0]:  # e.g. an online-only placeholder, or no read permission yet
            raise NotReady("waiting for the sync client: the file cannot be read yet")
        return real(info, cap, jobs_dir)

    monkeypatch.setattr(reconcile_module, "read_job_file", read)
    daemon = _daemon(spool, tmp_path)
    try:
        monkeypatch.setattr(spool_module, "RACY_NS", 0)
        daemon.step(time.time())
        assert daemon.jobs["a"].runs == 0
        listings = _listings(monkeypatch)
        blocked[0] = False  # readable now; neither its folder nor an event says so
        daemon.step(time.time() + 10)
        assert len(listings) == 1 and daemon.jobs["a"].runs == 1
    finally:
        daemon.close()


@linux
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_inotify_overflow_makes_the_next_rescan_list_everything(host: Host) -> None:
    """The edit in place comes after the kernel's queue overflowed: only the overflow says
    that something was lost (no folder changed, the full listing is 10 minutes away)."""
    jobs = host.spool / "jobs"
    noise = [jobs / ".syncthing.x.tmp", jobs / ".syncthing.y.tmp"]  # never jobs
    for path in noise:
        path.write_text("")
    (jobs / "a.yaml").write_text("commands: echo one\n")
    proc = host.start()
    host.wait_state("a", "succeeded")
    changed = max(os.stat(jobs).st_ctime, os.stat(jobs).st_mtime)
    # Past the racy window and a rescan (--rescan 1) after it: the looks now trust the folder.
    wait_for(lambda: time.time() > changed + spool_module.RACY_NS / 1e9 + 2.5, timeout=15,
             what="the folder to be older than the racy window")
    proc.send_signal(signal.SIGSTOP)
    try:
        overflow_inotify(noise)
        with open(jobs / "a.yaml", "r+") as f:  # lost: the queue is full
            f.write("commands: echo two\n")
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_for(lambda: host.log_of("a") == "two\n", timeout=30, what="the edit to run")
    assert "overflow" in host.log.read_text(), "inotify lost no event: the test proves nothing"


def test_watcher_is_trusted_only_while_it_runs_with_its_overflows_reported(
        tmp_path: Path) -> None:
    from filerexec.watch import Hints, Watcher

    woken = threading.Event()
    hints = Hints(woken.set)
    watcher = Watcher(tmp_path, hints)
    assert not watcher.trusted
    watcher.ensure()
    try:
        assert watcher.trusted is sys.platform.startswith("linux")
        assert hints.take_lost()  # a (re)started watcher may have missed something
        assert not hints.take_lost()
    finally:
        watcher.stop()
    assert not watcher.trusted


@linux
def test_files_read_on_arrival_are_listed_once_soon_after_not_in_every_step(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of drops: each file is read on arrival (its hint), and the listing that
    confirms them comes once, LISTING_AFTER_ARRIVAL later, not in every step (O(n) not O(n²))."""
    from filerexec.daemon import LISTING_AFTER_ARRIVAL

    jobs = spool / "jobs"
    daemon = _daemon(spool, tmp_path)
    try:
        now = time.time()
        daemon.step(now)  # the first listing
        listings = _listings(monkeypatch)
        for i in range(5):
            tmp = jobs / f".syncthing.j{i}.yaml.tmp"
            tmp.write_text("commands: 'true'\n")
            tmp.rename(jobs / f"j{i}.yaml")
            name = f"j{i}"
            wait_for(lambda: daemon.step(now) is not None and name in daemon.jobs,  # noqa: B023
                     what=f"{name} to be read on arrival")
        assert listings == []  # the clock has not moved: none yet
        assert all(daemon.jobs[f"j{i}"].runs == 1 for i in range(5))
        daemon.step(now + LISTING_AFTER_ARRIVAL)
        assert len(listings) == 1  # one for the five
        (jobs / "j0.yaml").unlink()  # a deletion is not settled on arrival: listed at once
        wait_for(lambda: daemon.step(now + LISTING_AFTER_ARRIVAL) is not None
                 and daemon.jobs["j0"].missing_since is not None, what="j0 to be missed")
        assert len(listings) == 2
    finally:
        daemon.close()


@linux
def test_a_second_spelling_arriving_before_the_confirming_listing_is_not_run(
        spool: Path, tmp_path: Path) -> None:
    """Found by tests/test_name_clashes.py: with the listing half a second after an arrival,
    the arrival path itself must take the name's spelling, or `backup` ran beside `Backup`."""
    jobs = spool / "jobs"
    daemon = _daemon(spool, tmp_path)
    try:
        now = time.time()
        daemon.step(now)

        def drop(name: str) -> None:
            tmp = jobs / f".syncthing.{name}.yaml.tmp"
            tmp.write_text("commands: 'true'\n")
            tmp.rename(jobs / f"{name}.yaml")

        drop("Backup")
        wait_for(lambda: daemon.step(now) is not None and "Backup" in daemon.jobs,
                 what="Backup to be read on arrival")
        drop("backup")  # the clock stands still: no confirming listing has come yet
        wait_for(lambda: daemon.step(now) is not None
                 and "backup.yaml" in daemon.reconciler.refused, what="backup to be refused")
        assert daemon.jobs["Backup"].runs == 1
        assert "backup" not in daemon.jobs or daemon.jobs["backup"].runs == 0
        assert "backup.yaml" in daemon.reconciler.refused
    finally:
        daemon.close()


@linux
def test_a_file_settled_on_arrival_without_an_event_is_confirmed_by_the_listing_too(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file for another host changes no job, yet the arrival path took it as listed: the
    listing that confirms it comes as for any arrival, not only at the next rescan."""
    from filerexec.daemon import LISTING_AFTER_ARRIVAL

    jobs = spool / "jobs"
    daemon = _daemon(spool, tmp_path)
    try:
        now = time.time()
        daemon.step(now)
        listings = _listings(monkeypatch)
        tmp = jobs / ".syncthing.other.yaml.tmp"
        tmp.write_text("commands: 'true'\nhost: elsewhere\n")
        tmp.rename(jobs / "other.yaml")
        wait_for(lambda: daemon.step(now) is not None and "other" in daemon.reconciler.known,
                 what="other.yaml to be read on arrival")
        assert listings == [] and "other" not in daemon.jobs
        daemon.step(now + LISTING_AFTER_ARRIVAL)  # the rescan is 10 s away
        assert len(listings) == 1
    finally:
        daemon.close()
