"""Watching ``jobs/``: filerexec's own inotify reader on Linux (inotify.py), watchdog's native
observer elsewhere (macOS, Windows); the only module that imports watchdog.

Events never decide anything (hints.py says what each means); they wake the reconciler.
Events are lost on overflow, on network shares and with some editors, so the daemon also
rescans periodically; ``--poll`` relies on the rescan alone. A watcher whose lost events
are reported (``Hints.lost``: the kernel's queue overflowed, the watcher restarted) is
``trusted``: its periodic rescan may look at the folders' stats only (reconcile.py). Only
the inotify reader is: watchdog tells no handler about its overflows.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from filerexec.hints import Change, Hint, Hints, hint_for
from filerexec.inotify import Reader

__all__ = ["Hint", "Hints", "Watcher"]

logger = logging.getLogger(__name__)

LINUX = sys.platform.startswith("linux")
# watchdog's events as Changes; opening, reading and listing (as every rescan does) none.
_CHANGES = {"created": Change.CREATED, "deleted": Change.DELETED,
            "modified": Change.MODIFIED, "closed": Change.ARRIVED}


class _Handler(FileSystemEventHandler):
    """watchdog's events translated into hints (where watchdog is used)."""

    def __init__(self, jobs_dir: Path, hints: Hints) -> None:
        self._root = str(jobs_dir)
        self._hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "moved":
            # A move from outside jobs/ may have no source, a move out no destination.
            ends = [(Change.LEFT, event.src_path), (Change.ARRIVED, event.dest_path)]
        elif (change := _CHANGES.get(event.event_type)) is not None:
            ends = [(change, event.src_path)]
        else:
            return
        for change, path in ends:
            if not path:
                continue
            where = path.decode(errors="surrogateescape") if isinstance(path, bytes) else path
            rel = os.path.relpath(where, self._root).replace(os.sep, "/")
            hint = hint_for(change, "" if rel == "." else rel, event.is_directory)
            if hint is not None:
                self._hints.add(where, hint)


class Watcher:
    """The watcher on ``jobs/``, re-armed when the folder comes back or was replaced."""

    def __init__(self, jobs_dir: Path, hints: Hints) -> None:
        self.jobs_dir = jobs_dir
        self._hints = hints
        self._reader: Reader | None = None  # Linux
        self._observer: BaseObserver | None = None  # elsewhere
        self._watched: tuple[int, int] | None = None

    @property
    def trusted(self) -> bool:
        """Its lost events are known: an overflow reaches ``Hints.lost``, every folder is
        watched, and it runs."""
        return self._reader is not None and self._reader.running and self._reader.complete

    @property
    def kind(self) -> str:
        if self._reader is not None:
            return "inotify"
        if self._observer is None:
            return "none (rescan only)"
        return type(self._observer).__name__.replace("Observer", "").lower() or "native"

    def _running(self) -> bool:
        if self._reader is not None:
            return self._reader.running
        return self._observer is not None and self._observer.is_alive()

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
        if self._watched == (st.st_dev, st.st_ino) and self._running():
            return
        self.stop()
        try:
            self._start()
        except OSError as e:  # e.g. no inotify, its limits reached: the rescan still works
            logger.warning("cannot watch %s (%s); relying on the periodic rescan", self.jobs_dir, e)
            return
        self._watched = (st.st_dev, st.st_ino)
        self._hints.lost()  # whatever happened while nothing watched: list jobs/ once more

    def _start(self) -> None:
        if LINUX:
            reader = Reader(self.jobs_dir, self._hints)
            reader.open()
            reader.start()
            self._reader = reader
            return
        from watchdog.observers import Observer

        observer = Observer()
        observer.schedule(_Handler(self.jobs_dir, self._hints), str(self.jobs_dir),
                          recursive=True)
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self._watched = None
