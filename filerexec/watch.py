"""Filesystem events as hints: the only module that imports watchdog.

Events never decide anything; they wake the reconciler and say which paths
arrived complete (moved into place or closed after writing) so those are read
at once. Events are lost on overflow, on network shares and with some editors,
so the daemon also rescans periodically; ``--poll`` relies on the rescan alone.
A watcher whose lost events are reported (``Hints.lost``: the kernel's queue
overflowed, the watcher restarted) is ``trusted``: its periodic rescan may look
at the folders' stats only (reconcile.py).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from filerexec.names import Kind, classify

logger = logging.getLogger(__name__)

_NOISE = frozenset({Kind.TEMP, Kind.META})
MAX_HINTS = 10_000  # past this, drop hints: the rescan is the truth anyway
# Opening or listing a folder (as every rescan does) is no change: waking on it would loop.
_CHANGES = frozenset({"created", "modified", "deleted"})


class Hint(StrEnum):
    COMPLETE = "complete"  # renamed into place or closed after writing: read now
    CHANGED = "changed"  # written in place: read once it has stayed still


class Hints:
    """Paths touched since the last drain; thread-safe, bounded."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, Hint] = {}
        self._wake = wake
        self.overflowed = False
        self._lost = False  # events the watcher never saw: the next look lists jobs/

    def lost(self) -> None:
        """Events were lost (the kernel's queue overflowed, the watcher restarted)."""
        with self._lock:
            self._lost = True
        self._wake()

    def take_lost(self) -> bool:
        """Whether events were lost since the last call."""
        with self._lock:
            lost, self._lost = self._lost, False
        return lost

    def add(self, path: str, hint: Hint) -> None:
        with self._lock:
            if len(self._paths) >= MAX_HINTS and path not in self._paths:
                self.overflowed = True
            elif self._paths.get(path) is not Hint.COMPLETE:
                self._paths[path] = hint
        self._wake()

    def drain(self) -> dict[str, Hint]:
        with self._lock:
            paths, self._paths, self.overflowed = self._paths, {}, False
        return paths


class _Handler(FileSystemEventHandler):
    def __init__(self, hints: Hints) -> None:
        self._hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory and _noise(event):
            return  # e.g. a sync client writing its temp file: waking for it only slows the job
        if event.is_directory and event.event_type == "modified":
            # A folder's entries changed: each change has its own event (a temp file's is
            # noise), and a folder's stat change is what the periodic look finds. Waking
            # for it listed jobs/ while the job file was still being written, and the
            # rename that follows waited for that listing (at 10,000 files, ~50 ms).
            return
        if event.event_type == "moved":
            # Files and folders moved into place are complete (sync clients finish downloads
            # that way). With full events a move from outside has no source and a move out
            # no destination.
            if event.dest_path:
                self._hints.add(_text(event.dest_path), Hint.COMPLETE)
            else:
                self._hints.add(_text(event.src_path), Hint.CHANGED)
        elif isinstance(event, FileClosedEvent):
            self._hints.add(_text(event.src_path), Hint.COMPLETE)
        elif event.event_type in _CHANGES:
            self._hints.add(_text(event.src_path), Hint.CHANGED)


def _observer() -> BaseObserver:
    """watchdog's native observer; on Linux with full events, so that a file moved in from
    outside ``jobs/`` arrives as a move (complete: read at once) rather than as a creation
    (read only once it has stood still for ``settle``)."""
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        _shorten_move_pairing()
        return InotifyObserver(generate_full_events=True)
    return Observer()


MOVE_PAIRING = 0.005  # seconds; watchdog's default is 0.5


def _shorten_move_pairing() -> None:
    """Hold an unpaired IN_MOVED_FROM for 5 ms instead of watchdog 7's 500 ms.

    watchdog keeps a move-out (a sync client moving a deleted job into its trash or
    versions folder) in a delay queue to pair it with a move-in, and that queue blocks
    every event behind it: a job dropped just after a deletion waited half a second.
    The two halves of a rename arrive in one inotify read, and with full events an
    unpaired half is still a move (in: complete; out: changed), so little is lost.
    """
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # other watchdog versions: keep their behaviour
        return
    InotifyMoveEventGrouper.delay = MOVE_PAIRING


def _report_overflow(observer: BaseObserver, lost: Callable[[], None]) -> bool:
    """Call ``lost`` when the kernel's inotify queue overflows; whether that could be set up.

    watchdog 7 handles an overflow itself (it logs it and re-adds its watches) but tells
    no handler, so its reader's ``handle_event`` is wrapped. Where that reader is not
    there (other watchdog versions, other systems), overflows go unseen: the watcher is
    not trusted, and every periodic rescan lists all of jobs/.
    """
    reader = getattr(observer, "_inotify_fd", None)
    handle = getattr(reader, "handle_event", None)
    if reader is None or handle is None:
        return False

    def handle_event(event: object) -> None:
        if getattr(event, "is_queue_overflow", False):
            lost()
        handle(event)

    reader.handle_event = handle_event
    return True


def _noise(event: FileSystemEvent) -> bool:
    """A file event about names that are never read (temp files, metadata) on both ends."""
    paths = [event.src_path, event.dest_path] if isinstance(event, FileMovedEvent) else [
        event.src_path]
    paths = [p for p in paths if p]
    return all(classify(os.path.basename(_text(p))).kind in _NOISE for p in paths)


def _text(path: bytes | str) -> str:
    return path.decode(errors="surrogateescape") if isinstance(path, bytes) else path


class Watcher:
    """watchdog's native observer on ``jobs/``, re-armed when the folder comes back."""

    def __init__(self, jobs_dir: Path, hints: Hints) -> None:
        self.jobs_dir = jobs_dir
        self._hints = hints
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None
        self.trusted = False  # its lost events are known (an overflow reaches ``Hints.lost``)

    @property
    def kind(self) -> str:
        if self._observer is None:
            return "none (rescan only)"
        return type(self._observer).__name__.replace("Observer", "").lower() or "native"

    def ensure(self) -> None:
        """Watch ``jobs/`` if it is a folder (not a link) and is not already watched (it may
        have been replaced)."""
        try:
            st = os.lstat(self.jobs_dir)  # never a link: jobs -> / would watch every folder
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            self.stop()
            return
        same = self._watched == (st.st_dev, st.st_ino)
        if self._observer is not None and same and self._observer.is_alive():
            return
        self.stop()
        observer = _observer()
        try:
            observer.schedule(_Handler(self._hints), str(self.jobs_dir), recursive=True)
            observer.start()
        except OSError as e:  # e.g. inotify watch limit reached: the rescan still works
            logger.warning("cannot watch %s (%s); relying on the periodic rescan", self.jobs_dir, e)
            return
        self._observer, self._watched = observer, (st.st_dev, st.st_ino)
        self.trusted = _report_overflow(observer, self._hints.lost)
        self._hints.lost()  # whatever happened while nothing watched: list jobs/ once more

    def stop(self) -> None:
        self.trusted = False
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
            self._watched = None
