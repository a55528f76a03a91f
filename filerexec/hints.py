"""What a filesystem event means to the daemon: a hint, or nothing (the rules, written once).

Whichever watcher saw it (inotify.py on Linux, watchdog elsewhere: watch.py), an event is
translated at the boundary into a ``Change`` of a path below ``jobs/`` and judged by
``hint_for``. Hints never decide anything; they wake the reconciler and say which paths
arrived complete (moved into place or closed after writing) so those are read at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import Enum, StrEnum

from filerexec.names import Kind, classify, is_skipped_dir

_NOISE = frozenset({Kind.TEMP, Kind.META})
MAX_HINTS = 10_000  # past this, drop hints: the rescan is the truth anyway


class Hint(StrEnum):
    COMPLETE = "complete"  # renamed into place or closed after writing: read now
    CHANGED = "changed"  # written in place: read once it has stayed still


class Change(Enum):
    """What happened to a path, as any watcher reports it."""

    ARRIVED = "arrived"  # moved in (from below jobs/ or from outside), or closed after writing
    CREATED = "created"
    DELETED = "deleted"
    MODIFIED = "modified"  # written, or its attributes changed
    LEFT = "left"  # moved away (elsewhere below jobs/ or out of it)


def hint_for(change: Change, rel: str, is_dir: bool) -> Hint | None:
    """The hint an event about ``rel`` (POSIX, relative to ``jobs/``; "" for jobs/ itself)
    gives, or None: it wakes nothing.

    Temp and metadata names are never read (a sync client writing its temp file: waking for
    it only slows the job). A folder's own "modified" is no change: each change of its
    entries has its own event (a temp file's is noise), its stat change is what the periodic
    look finds, and waking for it listed jobs/ while the job file was still being written
    (the rename that follows waited for that listing: at 10,000 files, ~50 ms). Opening,
    reading or listing (as every rescan does) is no change at all: waking on it would loop.
    Folders a scan never descends into (a sync client's version store) are noise too.
    """
    if is_dir:
        if change is Change.MODIFIED or any(is_skipped_dir(p) for p in rel.split("/") if rel):
            return None
    elif classify(rel).kind in _NOISE:
        return None
    # Sync clients finish downloads by moving them into place: complete, read at once.
    return Hint.COMPLETE if change is Change.ARRIVED else Hint.CHANGED


def stronger(old: Hint | None, new: Hint) -> Hint:
    """Two hints for one path: a complete arrival is not undone by a later change."""
    return Hint.COMPLETE if old is Hint.COMPLETE else new


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
            else:
                self._paths[path] = stronger(self._paths.get(path), hint)
        self._wake()

    def drain(self) -> dict[str, Hint]:
        with self._lock:
            paths, self._paths, self.overflowed = self._paths, {}, False
        return paths
