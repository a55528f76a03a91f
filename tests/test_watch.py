"""Issue 12, item 3: filerexec's own inotify reader (Linux), on real files and a real inotify.

Most tests open a reader without its thread, act, then read what the kernel queued in one
go (``read_pending``): what did *not* come is then known without waiting. The Watcher tests
run the thread, as the daemon does.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from filerexec.hints import Hint, Hints
from filerexec.inotify import IN_MOVED_TO, IN_Q_OVERFLOW, Reader, parse
from filerexec.watch import Watcher, _Handler
from tests.util import overflow_inotify, wait_for

ROOT = Path(__file__).resolve().parent.parent
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


class _Spy:
    """A Hints whose wake-ups are counted."""

    def __init__(self) -> None:
        self.wakes = 0
        self.hints = Hints(self._wake)

    def _wake(self) -> None:
        self.wakes += 1


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    (tmp_path / "jobs" / ".stversions").mkdir(parents=True)  # a sync client's version store
    (tmp_path / "outside").mkdir()
    return tmp_path / "jobs"


@pytest.fixture
def spy() -> _Spy:
    return _Spy()


@pytest.fixture
def reader(jobs: Path, spy: _Spy) -> Iterator[Reader]:
    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux's")
    r = Reader(jobs, spy.hints)
    r.open()
    try:
        yield r
    finally:
        r.close()


def _read(reader: Reader, spy: _Spy) -> tuple[dict[str, Hint], bool]:
    """What the events queued until now made: the hints, and whether events were lost."""
    reader.read_pending()
    return spy.hints.drain(), spy.hints.take_lost()


def _p(path: Path) -> str:
    return str(path)


def test_moves_in_and_out_and_renames_into_place(jobs: Path, reader: Reader, spy: _Spy) -> None:
    outside = jobs.parent / "outside"
    (outside / "a.yaml").write_text("commands: 'true'\n")
    _read(reader, spy)
    (outside / "a.yaml").rename(jobs / "a.yaml")  # a download finished elsewhere
    assert _read(reader, spy) == ({_p(jobs / "a.yaml"): Hint.COMPLETE}, False)
    (jobs / "a.yaml").rename(outside / "gone.yaml")  # into a sync client's trash
    assert _read(reader, spy) == ({_p(jobs / "a.yaml"): Hint.CHANGED}, False)
    (jobs / ".syncthing.b.yaml.tmp").write_text("commands: 'true'\n")
    (jobs / ".syncthing.b.yaml.tmp").rename(jobs / "b.yaml")
    assert _read(reader, spy) == ({_p(jobs / "b.yaml"): Hint.COMPLETE}, False)
    (jobs / "b.yaml").rename(outside / "b.yaml")
    (outside / "c.yaml").write_text("commands: 'true'\n")
    (outside / "c.yaml").rename(jobs / "c.yaml")
    # No move-out is held back to be paired with a move-in (watchdog's grouper held them
    # for up to 0.5 s, and every event behind them): every hint of one batch is there.
    assert _read(reader, spy) == ({_p(jobs / "b.yaml"): Hint.CHANGED,
                                   _p(jobs / "c.yaml"): Hint.COMPLETE}, False)
    (jobs / "c.yaml").rename(jobs / "d.yaml")  # renamed in place: the old name is gone
    assert _read(reader, spy) == ({_p(jobs / "c.yaml"): Hint.CHANGED,
                                   _p(jobs / "d.yaml"): Hint.COMPLETE}, False)


def test_written_in_place_is_changed_until_closed_after_writing(
        jobs: Path, reader: Reader, spy: _Spy) -> None:
    with open(jobs / "a.yaml", "w") as f:
        f.write("commands: 'true'\n")
        f.flush()
        assert _read(reader, spy)[0] == {_p(jobs / "a.yaml"): Hint.CHANGED}  # still open
    assert _read(reader, spy)[0] == {_p(jobs / "a.yaml"): Hint.COMPLETE}  # closed
    wakes = spy.wakes
    (jobs / "b.yaml").write_text("commands: 'true'\n")  # created, written, closed: 3 events
    assert _read(reader, spy)[0] == {_p(jobs / "b.yaml"): Hint.COMPLETE}
    assert spy.wakes == wakes + 1  # one hint per path and batch: one wake
    with open(jobs / "a.yaml", "r+") as f:  # an edit in place
        f.write("commands: 'false'\n")
        f.flush()
        assert _read(reader, spy)[0] == {_p(jobs / "a.yaml"): Hint.CHANGED}
    assert _read(reader, spy)[0] == {_p(jobs / "a.yaml"): Hint.COMPLETE}  # closed
    (jobs / "a.yaml").chmod(0o600)  # e.g. readable now
    os.utime(jobs / "a.yaml", (1, 1))
    assert _read(reader, spy)[0] == {_p(jobs / "a.yaml"): Hint.CHANGED}
    (jobs / "a.yaml").unlink()
    assert _read(reader, spy)[0] == {_p(jobs / "a.yaml"): Hint.CHANGED}


def test_temp_and_metadata_names_and_folder_stats_wake_nothing(
        jobs: Path, reader: Reader, spy: _Spy) -> None:
    (jobs / "sub").mkdir()
    (jobs / "@eaDir").mkdir()  # a NAS's thumbnails, made later: never listed either
    _read(reader, spy)
    wakes = spy.wakes
    (jobs / ".syncthing.a.yaml.tmp").write_text("commands: 'true'\n")
    (jobs / ".syncthing.a.yaml.tmp").rename(jobs / "~syncthing~b.yaml.tmp")
    (jobs / "~syncthing~b.yaml.tmp").unlink()
    (jobs / ".DS_Store").write_bytes(b"\0")
    (jobs / "sub" / ".syncthing.c.yaml.tmp").write_text("x")
    (jobs / ".stversions" / "a~20261203.yaml").write_text("commands: 'true'\n")
    (jobs / ".stversions" / "deeper").mkdir()  # were it watched: a folder came
    (jobs / "@eaDir" / "deeper").mkdir()
    (jobs / "sub").chmod(0o700)  # a folder's own "modified": nothing to read
    os.utime(jobs, (1, 1))
    os.utime(jobs / "sub", (1, 1))
    assert _read(reader, spy) == ({}, False)
    assert spy.wakes == wakes


def test_the_daemons_own_reads_make_no_event_at_all(
        jobs: Path, reader: Reader, spy: _Spy) -> None:
    from filerexec.spool import list_jobs

    (jobs / "sub").mkdir()
    (jobs / "a.yaml").write_text("commands: 'true'\n")
    (jobs / "sub" / "b.yaml").write_text("commands: 'true'\n")
    _read(reader, spy)
    list_jobs(jobs)  # a rescan: every folder opened and listed
    for path in (jobs / "a.yaml", jobs / "sub" / "b.yaml"):
        path.read_bytes()
        os.stat(path)
    assert reader.pending() == b""  # not even an event to throw away (the mask)


def test_a_folder_created_later_is_watched_and_lost_events_are_reported(
        jobs: Path, reader: Reader, spy: _Spy) -> None:
    (jobs / "sub").mkdir()
    (jobs / "sub" / "early.yaml").write_text("commands: 'true'\n")  # before its watch
    hints, lost = _read(reader, spy)
    assert hints == {_p(jobs / "sub"): Hint.CHANGED}
    assert lost  # the listing finds what was created before the watch was there
    (jobs / "sub" / "later.yaml").write_text("commands: 'true'\n")
    (jobs / "sub" / "deep").mkdir()
    assert _read(reader, spy) == ({_p(jobs / "sub" / "later.yaml"): Hint.COMPLETE,
                                   _p(jobs / "sub" / "deep"): Hint.CHANGED}, True)
    (jobs / "sub" / "deep" / "c.yaml").write_text("commands: 'true'\n")
    assert _read(reader, spy)[0] == {_p(jobs / "sub" / "deep" / "c.yaml"): Hint.COMPLETE}
    shutil.rmtree(jobs / "sub")
    hints, lost = _read(reader, spy)
    assert hints[_p(jobs / "sub")] is Hint.CHANGED and not lost


def test_a_folder_moved_in_is_watched_with_its_subtree_and_forgotten_when_it_leaves(
        jobs: Path, reader: Reader, spy: _Spy) -> None:
    outside = jobs.parent / "outside"
    (outside / "d" / "e" / "f").mkdir(parents=True)
    (outside / "d" / "e" / "f" / "x.yaml").write_text("commands: 'true'\n")
    (outside / "d").rename(jobs / "d")
    assert _read(reader, spy) == ({_p(jobs / "d"): Hint.COMPLETE}, True)
    (jobs / "d" / "e" / "f" / "y.yaml").write_text("commands: 'true'\n")
    assert _read(reader, spy)[0] == {_p(jobs / "d" / "e" / "f" / "y.yaml"): Hint.COMPLETE}
    (jobs / "d").rename(jobs / "g")  # renamed below jobs/: its files have new paths
    assert _read(reader, spy) == ({_p(jobs / "d"): Hint.CHANGED,
                                   _p(jobs / "g"): Hint.COMPLETE}, True)
    (jobs / "g" / "e" / "f" / "z.yaml").write_text("commands: 'true'\n")
    assert _read(reader, spy)[0] == {_p(jobs / "g" / "e" / "f" / "z.yaml"): Hint.COMPLETE}
    (jobs / "g").rename(outside / "g")  # moved out: no longer watched
    assert _read(reader, spy) == ({_p(jobs / "g"): Hint.CHANGED}, False)
    (outside / "g" / "e" / "f" / "w.yaml").write_text("commands: 'true'\n")
    (outside / "g" / "w.yaml").write_text("commands: 'true'\n")
    assert _read(reader, spy) == ({}, False)


@linux
def test_links_are_never_followed(jobs: Path, spy: _Spy, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir()
    (jobs / "link").symlink_to(outside)  # there before the watch
    watcher = Watcher(jobs, spy.hints)
    watcher.ensure()
    try:
        (jobs / "later").symlink_to(outside / "sub")
        wait_for(lambda: _p(jobs / "later") in spy.hints.drain(), what="the new link's hint")
        (outside / "a.yaml").write_text("commands: 'true'\n")
        (outside / "sub" / "b.yaml").write_text("commands: 'true'\n")
        (jobs / "sentinel.yaml").write_text("commands: 'true'\n")  # events come in order
        got: dict[str, Hint] = {}
        wait_for(lambda: got.update(spy.hints.drain()) or _p(jobs / "sentinel.yaml") in got,
                 what="the sentinel's hint")
        assert set(got) == {_p(jobs / "sentinel.yaml")}
    finally:
        watcher.stop()


def _watched_inodes(reader: Reader) -> set[int]:
    """The inodes the kernel watches for ``reader`` (its inotify descriptor's fdinfo)."""
    info = Path(f"/proc/self/fdinfo/{reader._fd}").read_text()
    return {int(word[4:], 16) for line in info.splitlines() if line.startswith("inotify ")
            for word in line.split() if word.startswith("ino:")}


@linux
def test_a_link_swapped_in_mid_walk_is_not_followed(
        jobs: Path, spy: _Spy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    (outside / "b").mkdir()
    (jobs / "a" / "b").mkdir(parents=True)
    real, swapped = os.scandir, list[bool]()

    def scandir(path: int) -> Iterator[os.DirEntry[str]]:
        if isinstance(path, int) and not swapped and os.path.samestat(
                os.fstat(path), os.stat(jobs / "a")):
            # a/ is listed, a/b not watched yet: a/ becomes a link to a folder with a b/
            (jobs / "a").rename(jobs / "a.real")
            (jobs / "a").symlink_to(outside)
            swapped.append(True)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    reader = Reader(jobs, spy.hints)
    reader.open()
    try:
        assert swapped
        # What the kernel watches (before the swap's own events are read): the real a/b.
        watched = _watched_inodes(reader)
        assert (jobs / "a.real" / "b").stat().st_ino in watched
        assert (outside / "b").stat().st_ino not in watched
        (outside / "b" / "x.yaml").write_text("commands: 'true'\n")
        hints, _ = _read(reader, spy)
        assert _p(jobs / "a" / "b" / "x.yaml") not in hints
        (jobs / "a.real" / "b" / "y.yaml").write_text("commands: 'true'\n")
        assert _p(jobs / "a.real" / "b" / "y.yaml") in _read(reader, spy)[0]
    finally:
        reader.close()


def _record(wd: int, mask: int, name: bytes = b"") -> bytes:
    padded = name + b"\0" * (-len(name) % 16 or (16 if name else 0))
    return struct.pack("iIII", wd, mask, 0, len(padded)) + padded


@linux
def test_an_overflow_record_reports_lost_events_and_the_reader_stays_trusted(
        jobs: Path, spy: _Spy) -> None:
    assert list(parse(_record(1, IN_MOVED_TO, b"a.yaml") + _record(-1, IN_Q_OVERFLOW))) == [
        (1, IN_MOVED_TO, "a.yaml"), (-1, IN_Q_OVERFLOW, "")]
    watcher = Watcher(jobs, spy.hints)
    watcher.ensure()
    try:
        assert spy.hints.take_lost()  # armed: whatever came before is not known
        reader = watcher._reader
        assert reader is not None
        reader.handle(_record(-1, IN_Q_OVERFLOW))
        assert spy.hints.take_lost()
        assert watcher.trusted  # its lost events are reported: rescans may look at stats only
    finally:
        watcher.stop()


def test_a_real_overflow_is_reported_and_the_folders_are_watched_anew(
        jobs: Path, reader: Reader, spy: _Spy, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    for name in ("d", "g"):
        (jobs / name).mkdir()
    _read(reader, spy)
    overflow_inotify([jobs / "a.yaml", jobs / "b.yaml"])
    # Lost with the queue full: a folder created, one renamed, one moved out.
    (jobs / "late").mkdir()
    (jobs / "d").rename(jobs / "e")
    (jobs / "g").rename(outside / "g")
    found, lost = False, False
    while data := reader.pending():  # in batches, as the thread reads them
        reader.handle(data)
        found |= bool(spy.hints.drain())
        lost |= spy.hints.take_lost()
    assert found and lost
    assert (outside / "g").stat().st_ino not in _watched_inodes(reader)  # its watch let go
    for path in (jobs / "late" / "x.yaml", jobs / "e" / "y.yaml", outside / "g" / "z.yaml"):
        path.write_text("commands: 'true'\n")
    # Trusted still, so complete: every folder watched, under its path of now.
    assert _read(reader, spy) == ({_p(jobs / "late" / "x.yaml"): Hint.COMPLETE,
                                   _p(jobs / "e" / "y.yaml"): Hint.COMPLETE}, False)


@linux
def test_jobs_replaced_or_removed_is_watched_again(jobs: Path, spy: _Spy) -> None:
    watcher = Watcher(jobs, spy.hints)
    watcher.ensure()
    try:
        assert watcher.kind == "inotify" and watcher.trusted and spy.hints.take_lost()
        jobs.rename(jobs.parent / "jobs.old")  # e.g. a restore from a backup
        jobs.mkdir()
        wait_for(spy.hints.take_lost, what="the reader to see jobs/ go")  # wakes the daemon
        assert not watcher.trusted
        watcher.ensure()
        assert watcher.trusted and spy.hints.take_lost()
        (jobs / "a.yaml").write_text("commands: 'true'\n")
        wait_for(lambda: _p(jobs / "a.yaml") in spy.hints.drain(), what="a hint in the new jobs/")
        shutil.rmtree(jobs)
        wait_for(spy.hints.take_lost, what="the reader to see jobs/ removed")
        watcher.ensure()
        assert watcher.kind == "none (rescan only)" and not watcher.trusted
        jobs.mkdir()
        watcher.ensure()
        assert watcher.trusted
        # Replaced between two looks, before the reader said so: ensure sees its new inode.
        jobs.rename(jobs.parent / "jobs.older")
        jobs.mkdir()
        watcher.ensure()
        assert watcher.trusted
        (jobs / "b.yaml").write_text("commands: 'true'\n")
        wait_for(lambda: _p(jobs / "b.yaml") in spy.hints.drain(), what="a hint in jobs/ again")
    finally:
        watcher.stop()


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@linux
def test_stop_joins_the_thread_and_closes_every_descriptor(jobs: Path, spy: _Spy) -> None:
    (jobs / "sub").mkdir()
    watcher = Watcher(jobs, spy.hints)
    threads, fds = threading.active_count(), _fds()
    for _ in range(50):
        watcher.ensure()
        assert watcher.trusted and threading.active_count() == threads + 1
        watcher.stop()
        assert not watcher.trusted and threading.active_count() == threads
    assert _fds() == fds


_LIMITED = """
import json, logging, sys, threading
from pathlib import Path
logging.basicConfig(stream=sys.stdout, format="%(message)s")
from filerexec.hints import Hints
from filerexec.watch import Watcher
hints = Hints(lambda: None)
watcher = Watcher(Path(sys.argv[1]), hints)
watcher.ensure()
print(json.dumps({"kind": watcher.kind, "trusted": watcher.trusted,
                  "threads": threading.active_count()}))
watcher.stop()
"""


def _limited(jobs: Path, setting: str, value: int) -> tuple[dict[str, object], str]:
    """The watcher in a user namespace whose inotify limit ``setting`` is ``value``."""
    script = (f"echo {value} > /proc/sys/user/{setting} && "
              f"exec {sys.executable} -c '{_LIMITED}' {jobs}")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    *log, last = done.stdout.splitlines()
    return json.loads(last), "\n".join(log)


@linux
def test_the_watch_limit_or_no_inotify_falls_back_to_the_rescan(jobs: Path) -> None:
    for name in ("b", "c", "d"):
        (jobs / "a" / name).mkdir(parents=True)
    found, log = _limited(jobs, "max_inotify_watches", 2)  # jobs/ and a/, not a/b/ and so on
    assert found == {"kind": "inotify", "trusted": False, "threads": 2}, log
    assert "in full" in log and log.count("cannot watch") == 1, log  # said once
    found, log = _limited(jobs, "max_inotify_watches", 0)
    assert found == {"kind": "none (rescan only)", "trusted": False, "threads": 1}, log
    assert "cannot watch" in log and "periodic rescan" in log
    found, log = _limited(jobs, "max_inotify_instances", 0)
    assert found == {"kind": "none (rescan only)", "trusted": False, "threads": 1}, log
    assert "inotify_init1" in log


def test_watchdogs_events_mean_what_inotifys_do(tmp_path: Path, spy: _Spy) -> None:
    """The handler where watchdog is still used (macOS, Windows): the same rules."""
    handler = _Handler(tmp_path, spy.hints)
    tmp, job = _p(tmp_path / ".syncthing.a.yaml.tmp"), _p(tmp_path / "a.yaml")
    handler.on_any_event(FileCreatedEvent(tmp))
    handler.on_any_event(DirModifiedEvent(_p(tmp_path)))  # its folder's entries changed
    handler.on_any_event(FileOpenedEvent(job))  # a read
    handler.on_any_event(FileCreatedEvent(_p(tmp_path / ".stversions" / "a.yaml")))
    assert not spy.wakes and spy.hints.drain() == {}
    handler.on_any_event(FileMovedEvent(tmp, job))
    assert spy.wakes and spy.hints.drain() == {job: Hint.COMPLETE}
    handler.on_any_event(FileMovedEvent(job, ""))  # moved out
    handler.on_any_event(FileClosedEvent(_p(tmp_path / "b.yaml")))
    assert spy.hints.drain() == {job: Hint.CHANGED, _p(tmp_path / "b.yaml"): Hint.COMPLETE}
