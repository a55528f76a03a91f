"""Spare exit files: a finished run's exit file, emptied, becomes a later run's.

Creating a file is the dearest thing a run does to a file system where ext4 runs without
a journal (the VMs this is built and tested on): each creation skips every inode freed
in the last 30 seconds, checking each one, so in a burst a creation cost ~0.5-1 ms and
every deletion made the next ones dearer (measured with perf). A rename costs ~0.07 ms.
So once a run's result is published its exit file is truncated and renamed into
``runs/spare/``, and the next run's exit file is renamed out of it. Only exit files: a
run's output file may still be held open by a process the run left behind, which would
write into a later run's output.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from pathlib import Path

KEEP = 64  # spares kept at most: about the runs that end in one burst's writer pass


class SpareFiles:
    """A pool of empty files in one folder (``put`` on the status writer's thread,
    ``take`` on the daemon's loop)."""

    def __init__(self, folder: Path, keep: int = KEEP) -> None:
        self.folder = folder
        self.keep = keep
        self._lock = threading.Lock()
        self._names: list[str] = []

    def open(self) -> None:
        """Make the folder; spares a previous daemon left are used again."""
        self.folder.mkdir(exist_ok=True)
        with os.scandir(self.folder) as entries:
            names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
        with self._lock:
            self._names = names

    def take(self, path: Path) -> bool:
        """Put an empty file at ``path`` (which must not exist) from the pool; False if
        none is left (the caller creates it)."""
        while True:
            with self._lock:
                if not self._names:
                    return False
                name = self._names.pop()
            try:
                os.rename(self.folder / name, path)
                return True
            except OSError:  # gone (someone cleaned the folder): try the next
                continue

    def put(self, path: Path) -> None:
        """Retire ``path``: emptied into the pool, or deleted when the pool is full."""
        with self._lock:
            full = len(self._names) >= self.keep
        if not full:
            name = secrets.token_hex(6)
            try:
                os.truncate(path, 0)
                os.rename(path, self.folder / name)
            except FileNotFoundError:
                return
            except OSError:
                pass  # cannot be kept: deleted below
            else:
                with self._lock:
                    self._names.append(name)
                return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
