"""Linux's inotify, read directly: the watcher on Linux (watch.py chooses it).

One thread blocks in ``poll`` on the inotify descriptor and a stop pipe, reads every
pending event at once and adds one hint per path (hints.py says what each event means):
one hop to the daemon's main loop, where watchdog took three (its reader thread, its
emitter queue, its dispatcher thread). The mask holds only what a hint needs, so the
daemon's own reads of job files (open, access, close without writing) make no event.

Recursive like the listing: every folder a scan descends into is watched, never through a
link; a folder that comes (created or moved in) is watched with its whole subtree, then
``Hints.lost`` makes the next look list jobs/ for what was created in it before its watch.
An overflow of the kernel's queue is reported (``Hints.lost``) and every folder is watched
anew (one created or moved while events were lost), so the watcher stays trusted; a folder
that could not be watched (the watch limit) makes it untrusted.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import select
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from filerexec.hints import Change, Hint, Hints, hint_for, stronger
from filerexec.names import is_skipped_dir
from filerexec.spool import MAX_DEPTH

logger = logging.getLogger(__name__)

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_DONT_FOLLOW = 0x2000000
IN_EXCL_UNLINK = 0x4000000
IN_ISDIR = 0x40000000

_CHANGES = {IN_MOVED_TO: Change.ARRIVED, IN_CLOSE_WRITE: Change.ARRIVED,
            IN_CREATE: Change.CREATED, IN_DELETE: Change.DELETED, IN_MODIFY: Change.MODIFIED,
            IN_ATTRIB: Change.MODIFIED, IN_MOVED_FROM: Change.LEFT}
_SELF = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # a watched folder went away
# Links are never followed (jobs -> / would watch every folder); a watch on a file that
# is still open after its unlink would report its writes.
MASK = (IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM
        | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
        | IN_EXCL_UNLINK)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ = 65536  # bytes per read(); a read returns whole events only
_READS = 16  # reads per batch: a flood is handled in batches, not read for ever
# Gone, or replaced by a file or a link: its parent's event says so.
_FAINT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) \
    | getattr(os, "O_CLOEXEC", 0)
_PROC = os.path.isdir("/proc/self/fd")  # a folder opened, watched through its descriptor


def parse(data: bytes) -> Iterator[tuple[int, int, str]]:
    """The events in what one or more reads returned: (watch, mask, name)."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        name = data[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        yield wd, mask, os.fsdecode(name)


@functools.cache
def _libc() -> _Libc:
    return _Libc()


def _descended(rel: str) -> bool:
    """Whether a scan of jobs/ descends into the folder ``rel`` (so it is watched)."""
    return not is_skipped_dir(os.path.basename(rel)) and rel.count("/") < MAX_DEPTH


class _Libc:
    """The three calls, through ctypes; errors as OSError."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._init1, self._add, self._rm = (
                libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch)
        except (OSError, AttributeError) as e:
            raise OSError(errno.ENOSYS, f"no inotify in the C library ({e})") from None
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

    @staticmethod
    def _check(result: int, what: str) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")
        return result

    def init(self) -> int:
        return self._check(self._init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")

    def add_watch(self, fd: int, target: str, path: str) -> int:
        return self._check(self._add(fd, os.fsencode(target), MASK),
                           f"inotify_add_watch {path}")

    def rm_watch(self, fd: int, wd: int) -> None:
        self._rm(fd, wd)  # already gone (IN_IGNORED is on its way): nothing to do


class Reader:
    """inotify on ``root`` and every folder below it that a scan descends into."""

    def __init__(self, root: Path, hints: Hints) -> None:
        self.root = str(root)
        self._hints = hints
        self._libc = _libc()
        self._fd = self._stop_r = self._stop_w = -1
        self._wds: dict[int, str] = {}  # watch → its folder, relative to root ("" for root)
        self._root_wd = -1
        self._thread: threading.Thread | None = None
        self.complete = True  # every folder below root is watched
        self.gone = False  # root was removed or moved away: watch.py arms a new reader

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.gone

    def open(self) -> None:
        """Watch root and the folders below it; OSError when inotify or root's watch is not
        to be had (no inotify, the limit of instances or watches reached)."""
        self._fd = self._libc.init()
        try:
            self._stop_r, self._stop_w = os.pipe()
            top = os.open(self.root, _DIR)
            try:
                self._root_wd = self._add(top, "")
                self._watch_below("", top)
            finally:
                os.close(top)
        except OSError:
            self.close()
            raise

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="filerexec-inotify", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close every descriptor (which drops every watch)."""
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                logger.warning("the inotify reader of %s did not stop", self.root)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1
        self._wds.clear()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while not self.gone:
            if any(fd == self._stop_r for fd, _ in poller.poll()):
                return
            self.read_pending()

    def pending(self) -> bytes:
        """What the kernel holds for this reader now, up to one batch."""
        chunks = []
        for _ in range(_READS):
            try:
                chunk = os.read(self._fd, _READ)
            except BlockingIOError:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def read_pending(self) -> None:
        """Read what is pending and hand it on: the thread's work, callable by tests."""
        self.handle(self.pending())

    def handle(self, data: bytes) -> None:
        """Turn events into hints: one ``Hints.add`` per path, then ``Hints.lost``."""
        found: dict[str, Hint] = {}
        lost = False
        for wd, mask, name in parse(data):
            if mask & IN_Q_OVERFLOW:
                logger.warning("inotify queue overflow on %s: events were lost; listing it",
                               self.root)
                self._resync()
                lost = True
            elif (rel := self._wds.get(wd)) is None:
                continue  # a folder no longer watched (moved away, removed)
            elif mask & _SELF:
                lost |= self._went(wd, mask)
            elif name and (change := _CHANGES.get(mask & ~IN_ISDIR)) is not None:
                path, is_dir = f"{rel}/{name}" if rel else name, bool(mask & IN_ISDIR)
                if is_dir and self._folder(change, path):
                    lost = True
                if (hint := hint_for(change, path, is_dir)) is not None:
                    where = os.path.join(self.root, path)
                    found[where] = stronger(found.get(where), hint)
        for where, hint in found.items():
            self._hints.add(where, hint)
        if lost:
            self._hints.lost()

    def _resync(self) -> None:
        """After an overflow, watch every folder anew: one created meanwhile gets its watch,
        one moved meanwhile its new path (a folder already watched keeps its watch), one
        moved away is forgotten. Without this the watcher would not be complete, and so
        not to be trusted, after the events that made its watches were lost."""
        before, self._wds = self._wds, {self._root_wd: ""}
        try:
            top = os.open(self.root, _DIR)
        except OSError:
            top = -1
        try:
            if top < 0 or self._add(top, "") != self._root_wd:
                self._wds, self.gone = before, True  # removed or replaced: watch.py re-arms
                return
            self._watch_below("", top)
        except OSError as e:
            self._cannot("", e)
        finally:
            if top >= 0:
                os.close(top)
        for wd in before.keys() - self._wds.keys():
            self._libc.rm_watch(self._fd, wd)

    def _went(self, wd: int, mask: int) -> bool:
        """A watched folder was removed or moved; whether that is root (watch it anew)."""
        if mask & IN_IGNORED:
            del self._wds[wd]
        if wd != self._root_wd or self.gone:
            return False  # below root, its parent's event says so
        logger.info("%s was removed or replaced; watching it again once it is back", self.root)
        self.gone = True
        return True

    def _folder(self, change: Change, rel: str) -> bool:
        """Watch a folder that came, forget one that left; whether events may be lost."""
        if change is Change.LEFT:
            self._unwatch(rel)
        elif change in (Change.CREATED, Change.ARRIVED) and _descended(rel):
            self._watch_tree(rel)
            return True  # what was created in it before its watch: the listing finds it
        return False

    def _add(self, fd: int, rel: str) -> int:
        """Watch the folder open as ``fd`` (reached without following a link)."""
        path = os.path.join(self.root, rel)
        wd = self._libc.add_watch(self._fd, f"/proc/self/fd/{fd}/." if _PROC else path, path)
        self._wds[wd] = rel
        return wd

    def _cannot(self, rel: str, e: OSError) -> None:
        """A folder that is not watched: the rescan lists jobs/ in full (said once: past
        the watch limit, every other folder fails too)."""
        if e.errno not in _FAINT:
            log = logger.warning if self.complete else logger.debug
            log("cannot watch %s (%s); the periodic rescan lists jobs/ in full",
                os.path.join(self.root, rel), e.strerror)
            self.complete = False

    def _watch_tree(self, rel: str) -> None:
        """Watch the folder ``rel`` and every one below it, reached from root's descriptor
        folder by folder (no link is followed, not even one swapped in mid-walk)."""
        try:
            fd = os.open(self.root, _DIR)
        except OSError as e:
            self._cannot(rel, e)
            return
        try:
            for part in rel.split("/"):
                below = os.open(part, _DIR, dir_fd=fd)
                os.close(fd)
                fd = below
            self._add(fd, rel)
            self._watch_below(rel, fd)
        except OSError as e:
            self._cannot(rel, e)
        finally:
            os.close(fd)

    def _watch_below(self, rel: str, fd: int) -> None:
        """Watch every folder below ``rel`` (open as ``fd``) that a scan descends into, each
        opened from the one above and watched before it is listed (what comes later has
        its event; what came before, the listing finds)."""
        try:
            with os.scandir(fd) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError as e:
            self._cannot(rel, e)  # unreadable: the listing says so
            return
        for name in names:
            child = f"{rel}/{name}" if rel else name
            if not _descended(child):
                continue
            try:
                below = os.open(name, _DIR, dir_fd=fd)
            except OSError as e:
                self._cannot(child, e)
                continue
            try:
                self._add(below, child)
                self._watch_below(child, below)
            except OSError as e:
                self._cannot(child, e)
            finally:
                os.close(below)

    def _unwatch(self, rel: str) -> None:
        """Forget a folder moved away and everything below it (their paths are no more)."""
        below = rel + "/"
        for wd, folder in list(self._wds.items()):
            if folder == rel or folder.startswith(below):
                del self._wds[wd]
                self._libc.rm_watch(self._fd, wd)
