"""A running job's raw output in the state dir, kept from filling the host's disk.

A job appends to its output file (opened ``O_APPEND``) for as long as it runs, and
the synced log only ever shows its last ``log_cap`` bytes. So while jobs run, a
trimmer thread looks at each one's output every ``TICK`` seconds and, once more than
``keep`` + ``SLACK`` bytes are allocated, frees the head: on Linux it punches a hole
(``fallocate(PUNCH_HOLE | KEEP_SIZE)``) over everything but the last ``keep`` bytes.
The file keeps its size — the job's next write still lands at the end, and the
synced log's "N earlier bytes not shown" stays true — while the blocks go back to the
file system. Where holes cannot be punched (other systems, file systems without
support) nothing is freed and ``timeout:`` remains the guard.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

TICK = 0.05  # seconds between looks at the running outputs (a stat each)
SLACK = 512 * 1024  # allocated beyond ``keep`` before a hole is punched
_BLOCK = 4096
_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


Fallocate = Callable[[int, int, int, int], int]


def _fallocate() -> Fallocate | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    func.restype = ctypes.c_int
    result: Fallocate = func
    return result


_FALLOCATE = _fallocate()


def free_head(path: Path, keep: int) -> bool:
    """Free the blocks of ``path`` before its last ``keep`` bytes; True if some were freed."""
    if _FALLOCATE is None:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False  # not there yet, or already deleted
    try:
        st = os.fstat(fd)
        if st.st_blocks * 512 <= keep + SLACK:
            return False
        end = max(0, st.st_size - keep) // _BLOCK * _BLOCK
        return end > 0 and _FALLOCATE(fd, _PUNCH_HOLE_KEEP_SIZE, 0, end) == 0
    finally:
        os.close(fd)


class Trimmer:
    """One daemon thread that keeps every running job's raw output near ``keep`` bytes."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._paths: set[Path] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._sleeping = False  # waiting for an output to watch (else it looks every TICK)

    def watch(self, path: Path) -> None:
        with self._cond:
            self._paths.add(path)
            self._start()

    def only(self, paths: Iterable[Path]) -> None:
        """Watch exactly these (the outputs of the runs still running)."""
        with self._cond:
            self._paths = set(paths)
            if self._paths:
                self._start()

    def _start(self) -> None:
        """Start the thread, or wake it if it sleeps for want of outputs; one that looks
        every TICK is left alone: a wake per launch and per step cost ~0.3 ms of the
        daemon's CPU a job in a burst, and came as the job started (strace)."""
        if _FALLOCATE is None:
            if not self._warned:
                self._warned = True
                logger.info("raw job output is not trimmed on this system (no hole punching)")
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trim-output", daemon=True)
            self._thread.start()
        elif self._sleeping:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._sleeping = True
                self._cond.wait_for(lambda: bool(self._paths))
                self._sleeping = False
                self._cond.wait(TICK)  # a new output is empty: its first look is a TICK on
                paths = list(self._paths)
            for path in paths:
                with contextlib.suppress(OSError):
                    free_head(path, self.keep)
