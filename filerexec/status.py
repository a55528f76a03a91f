"""Everything the host writes into the synced tree: ``status/HOST/``.

Status files are a *view* of the ledger, never read back to decide anything.
Every write is atomic: a temp file named ``.~filerexec-*.tmp`` (a pattern
Dropbox and Office-aware clients skip, and Syncthing users put in .stignore),
fsync, rename over the target. The host never writes under ``jobs/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from filerexec.machine import Job, State
from filerexec.names import job_name

logger = logging.getLogger(__name__)

try:
    from yaml import CSafeDumper as _Dumper
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".~filerexec-"
TEMP_SUFFIX = ".tmp"
_CUT = "[filerexec: {} earlier bytes not shown]\n"  # heads a log whose start was cut off
_CUT_RE = re.compile(rb"\[filerexec: (\d+) earlier bytes not shown\]\n")


def atomic_write(path: Path, data: bytes, base: Path | None = None) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename.

    With ``base``, no folder between ``base`` and ``path`` may be a symbolic link: the
    synced tree is writable by others, and a link planted at ``status/HOST/nightly``
    must not make the host write (or delete) anywhere else. On POSIX the folders are
    walked with O_NOFOLLOW descriptors, so no race with the link's creation exists.
    """
    if base is not None and _DIR_FD:
        _write_below(base, path, data)
        return
    if base is not None:
        _check_no_links(base, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DIR_FD = {os.open, os.mkdir, os.rename, os.unlink} <= os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def _open_folder(base: Path, folder: Path, create: bool) -> int:
    """A descriptor of ``folder``, reached from ``base`` without following any link."""
    fd = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in folder.relative_to(base).parts:
            try:
                below = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                below = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:  # ELOOP or ENOTDIR: a link, or a file, where a folder must be
                raise OSError(e.errno, f"{folder}: {part!r} is not a plain folder "
                              "(a symbolic link?); not writing through it") from None
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_below(base: Path, path: Path, data: bytes) -> None:
    folder = _open_folder(base, path.parent, create=True)
    tmp = f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(tmp, flags, 0o600, dir_fd=folder), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)  # replaces on POSIX
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    finally:
        os.close(folder)


def _check_no_links(base: Path, folder: Path) -> None:
    """Where descriptors cannot be walked (Windows): refuse a link found on the way."""
    current = base
    for part in folder.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            raise OSError(f"{current} is a symbolic link; not writing through it")


def remove_below(base: Path, path: Path) -> None:
    """Remove ``path`` if it exists, never through a link below ``base``."""
    if not _DIR_FD:
        try:
            _check_no_links(base, path.parent)
        except OSError as e:
            logger.warning("not removing %s: %s", path, e)
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    try:
        folder = _open_folder(base, path.parent, create=False)
    except FileNotFoundError:
        return
    except OSError as e:  # a link on the way: whatever it points to is not ours to remove
        logger.warning("not removing %s: %s", path, e)
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=folder)
    finally:
        os.close(folder)


def timestamp(t: float | None) -> str | None:
    """Local time with its offset, to the second: what a person reads on a phone."""
    if t is None:
        return None
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def job_status(job: Job, host: str, conflicts: Iterable[str] = ()) -> dict[str, Any]:
    """The status document of one job (DESIGN §4); absent values are left out."""
    run, version = job.run, job.version
    digest = version.digest if version and version.digest else (run.digest if run else None)
    doc: dict[str, Any] = {
        "job": job.name,
        "host": host,
        "state": job.state.value,
        "reason": job.reason,
        "exit_code": run.exit_code if run else None,
        "pid": run.pid if run else None,
        "digest": digest[:12] if digest else None,
        "modified": timestamp(version.mtime) if version else None,
        "seen": timestamp(version.seen) if version else None,
        "started": timestamp(run.started) if run else None,
        "finished": timestamp(run.finished) if run else None,
        "runs": job.runs,
        "queued": job.queued.digest[:12] if job.queued and job.queued.digest else None,
        "deleted": timestamp(job.deleted),
        "conflicts": sorted(conflicts) or None,
        "log": log_name(job.name) if run else None,
    }
    return {k: v for k, v in doc.items() if v is not None}


def log_name(name: str) -> str:
    return name.rsplit("/", 1)[-1] + ".log"


def since(job: Job) -> float:
    """When the job last changed state: what ``index.md`` sorts by."""
    run, version = job.run, job.version
    times = [job.deleted, run.finished if run else None, run.started if run else None,
             version.seen if version else None]
    return max((t for t in times if t is not None), default=0.0)


def render_index(jobs: Iterable[Job], host: str, now: float,
                 rows: dict[str, tuple[Job, float, str]] | None = None) -> str:
    """A Markdown table of every job, newest first, that phones render.

    ``rows`` caches each job's row between calls (reused while the job is unchanged):
    formatting 10,000 timestamps every time one job changed cost ~0.2 s of the GIL.
    """
    cache = {} if rows is None else rows
    entries = []
    for job in jobs:
        hit = cache.get(job.name)
        if hit is None or hit[0] is not job:
            hit = cache[job.name] = (job, since(job), _row(job))
        entries.append(hit)
    lines = [
        f"# filerexec on {host}",
        "",
        f"Updated {timestamp(now)}.",
        "",
        "| job | state | since | exit | sync → start |",
        "|---|---|---|---|---|",
    ]
    if len(cache) > len(entries):  # forget jobs that are gone
        names = {e[0].name for e in entries}
        for name in [n for n in cache if n not in names]:
            del cache[name]
    entries.sort(key=lambda e: e[1], reverse=True)
    lines.extend(row for _, _, row in entries)
    return "\n".join(lines) + "\n"


def _row(job: Job) -> str:
    code = job.run.exit_code if job.run and job.run.exit_code is not None else ""
    state = job.state.value + (" (deleted)" if job.deleted else "")
    when = (timestamp(since(job)) or "").replace("T", " ")
    return f"| {_cell(job.name)} | {state} | {when} | {code} | {delays(job)} |"


def delays(job: Job) -> str:
    """Sync delay (file mtime → first seen here) and host delay (seen → started), compactly.

    "4s → 0s": the file reached this host 4 s after it was saved, and started at once;
    "4s → …": still waiting to start. A negative sync delay means the clocks disagree.
    """
    version, run = job.version, job.run
    if version is None or version.seen is None or version.mtime is None:
        return ""
    text = _seconds(version.seen - version.mtime)
    if run is not None and run.digest == version.digest and run.started >= version.seen:
        return f"{text} → {_seconds(run.started - version.seen)}"
    return f"{text} → …" if job.state is State.PENDING else text


def _seconds(delta: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if abs(delta) >= size:
            return f"{round(delta / size)}{unit}"
    return f"{round(delta)}s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def dump_yaml(doc: Mapping[str, Any]) -> bytes:
    # libyaml's dumper: the pure-Python one costs ~0.2 ms a document, 2 s for 10,000 jobs.
    text = yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    return text.encode()


class StatusDir:
    """The folder ``status/HOST/`` of one host: the only place it writes to."""

    def __init__(self, spool: Path, host: str) -> None:
        self.root = spool / "status" / host
        self.host = host
        self.spool = spool  # trusted; everything below it is synced and may hold links
        self._index_rows: dict[str, tuple[Job, float, str]] = {}

    def job_path(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.yaml"

    def log_path(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.log"

    def write_job(self, job: Job, conflicts: Iterable[str] = ()) -> bool:
        """Write the job's status unless the file already says exactly that; True if written.

        Comparing first makes a restart cheap: it rebuilds every status from the ledger and
        the job files, and rewriting (and fsyncing) 10,000 identical files would take seconds.
        """
        path = self.job_path(job.name)
        data = dump_yaml(job_status(job, self.host, conflicts))
        if _holds(path, data):
            return False
        atomic_write(path, data, self.spool)
        return True

    def write_index(self, jobs: Iterable[Job], now: float) -> None:
        atomic_write(self.root / "index.md",
                     render_index(jobs, self.host, now, self._index_rows).encode(), self.spool)

    def write_host(self, doc: Mapping[str, Any]) -> None:
        atomic_write(self.root / "host.yaml", dump_yaml(doc), self.spool)

    def publish_log(self, name: str, output: Path, cap: int) -> None:
        """Copy the last ``cap`` bytes of a run's raw output into the synced log."""
        try:
            with open(output, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - cap))
                tail = f.read(cap)
        except FileNotFoundError:
            size, tail = 0, b""
        if size > cap:
            cut = tail.find(b"\n")  # start the tail at a line boundary when one is near
            if 0 <= cut < 4096:
                tail = tail[cut + 1:]
            head = _CUT.format(size - len(tail)).encode()
            tail = head + tail
        # An error goes up to the writer, which keeps the run's output and retries: a log
        # lost here would be lost for good once the status is written.
        atomic_write(self.log_path(name), tail, self.spool)

    def remove_job(self, name: str) -> None:
        """Remove a job's status and log (the retention period of a deleted job is over)."""
        for path in (self.job_path(name), self.log_path(name)):
            remove_below(self.spool, path)


def _holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a plain file holding exactly ``data``.

    Never follows a link nor opens a FIFO planted in the synced folder (it would block).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        return os.read(fd, len(data) + 1) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def _checked(name: str) -> str:
    """A job name that is safe below status/HOST/ (names.py decides), or ValueError.

    The reconciler only ever makes jobs of such names; checking again where the path is
    built means no other way in (an old ledger, a future caller) can write elsewhere.
    """
    if job_name(f"{name}.yaml") != name:
        raise ValueError(f"{name!r} is not a safe job name")
    return name


def split_log(data: bytes) -> tuple[int, bytes]:
    """A synced log's output and the offset it starts at in the run's whole output."""
    match = _CUT_RE.match(data)
    return (int(match[1]), data[match.end():]) if match else (0, data)


def counts(jobs: Iterable[Job]) -> dict[str, int]:
    """How many jobs are in each state, for ``host.yaml``."""
    result = {state.value: 0 for state in State}
    for job in jobs:
        result[job.state.value] += 1
    return {k: v for k, v in result.items() if v}


@dataclass(slots=True)
class _JobWrite:
    job: Job | None = None  # the status to write (None: only the log)
    conflicts: tuple[str, ...] = ()
    log: Path | None = None  # a run's raw output to copy into the synced log first
    forget: list[Path] = field(default_factory=list)  # run files to delete once written


MAX_RETRY = 30.0  # seconds between attempts to write into a folder that stays broken


class StatusWriter:
    """Writes ``status/HOST/`` on its own thread, so the daemon's loop never waits for fsync.

    The latest request per file wins: during a burst a job that went pending → running →
    succeeded before the thread got to it is written once. Order per job is kept: its log,
    then its status, then its raw run files are deleted. A failed write (disk full,
    read-only) is logged and retried after ``retry`` seconds unless a newer one replaced it.
    ``inline`` writes on the caller's thread instead (tests that crash the daemon mid-write).
    """

    def __init__(self, status: StatusDir, log_cap: int, retry: float = 1.0,
                 inline: bool = False) -> None:
        self.status = status
        self.inline = inline
        self.log_cap = log_cap
        self.retry = retry
        self._cond = threading.Condition()
        self._jobs: dict[str, _JobWrite] = {}
        self._other: dict[str, Callable[[], None]] = {}  # "index", "host": newest closure
        self._busy = False
        self._closed = False
        self._clean = True  # the last pass wrote everything it had
        self._delay = retry
        self._failing: dict[str, str] = {}  # what failed, and how, as last logged
        self._thread: threading.Thread | None = None

    def job(self, job: Job, conflicts: Iterable[str] = (), log: Path | None = None,
            forget: Iterable[Path] = ()) -> None:
        """Queue the job's status (with its log copied first, and run files deleted after)."""
        self._queue_job(job.name, _JobWrite(job, tuple(sorted(conflicts)), log, list(forget)))

    def log(self, name: str, output: Path) -> None:
        """Queue a copy of a running job's output into its synced log."""
        self._queue_job(name, _JobWrite(log=output))

    def index(self, jobs: list[Job], now: float) -> None:
        self._queue_other("index", lambda: self.status.write_index(jobs, now))

    def host(self, doc: Callable[[], Mapping[str, Any]]) -> None:
        """Queue host.yaml; ``doc`` is built on the writer thread (counts are O(jobs))."""
        self._queue_other("host", lambda: self.status.write_host(doc()))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued is written; False on timeout."""
        if self.inline:
            return not self._pass()
        with self._cond:
            return self._cond.wait_for(lambda: not (self._jobs or self._other or self._busy),
                                       timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Try once more to write what is queued, then stop; False if not everything was written."""
        if self.inline:
            return not self._pass()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        with self._cond:
            return self._clean and not (self._jobs or self._other)

    def _queue_job(self, name: str, new: _JobWrite) -> None:
        with self._cond:
            old = self._jobs.pop(name, None)
            if old is not None:  # merge: nothing the older request promised may be lost
                new.job = new.job or old.job
                new.conflicts = new.conflicts if new.job is not old.job else old.conflicts
                new.log = new.log or old.log
                new.forget = old.forget + new.forget
            self._jobs[name] = new
            self._wake()

    def _queue_other(self, key: str, write: Callable[[], None]) -> None:
        with self._cond:
            self._other.pop(key, None)
            self._other[key] = write  # host.yaml last: its counts cover the jobs before it
            self._wake()

    def _wake(self) -> None:
        if self.inline:
            self._pass()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._jobs or self._other or self._closed)
                if self._closed and not (self._jobs or self._other):
                    return
                self._busy = True
            failed = self._pass()
            with self._cond:
                if not failed:
                    self._delay = self.retry
                elif self._closed:
                    return  # stopping: one last try is all a broken folder gets
                else:  # back off: a folder that stays broken must not cost a write a second
                    self._cond.wait(self._delay)
                    self._delay = min(self._delay * 2, MAX_RETRY)

    def _pass(self) -> bool:
        """Write everything queued once; True if something failed (it stays queued)."""
        with self._cond:
            jobs, self._jobs = self._jobs, {}
            other, self._other = self._other, {}
        failed = self._write_jobs(jobs)
        for key, write in other.items():
            try:
                write()
                self._failing.pop(key, None)
            except OSError as e:
                self._warn(key, f"cannot write {key}: {e}")
                failed = True
                with self._cond:
                    self._other.setdefault(key, write)
        with self._cond:
            self._clean = not failed
        return failed

    def _warn(self, key: str, message: str) -> None:
        """Log a failure once, not at every retry (a broken folder would flood the log)."""
        if self._failing.get(key) != message:
            self._failing[key] = message
            logger.warning("%s", message)

    def _write_jobs(self, jobs: dict[str, _JobWrite]) -> bool:
        failed = False
        for name, item in jobs.items():
            try:
                if item.log is not None:
                    self.status.publish_log(name, item.log, self.log_cap)
                if item.job is not None:
                    self.status.write_job(item.job, item.conflicts)
            except ValueError as e:  # not a safe name (an old ledger): never written anywhere
                logger.warning("no status file for %r: %s", name, e)
                continue
            except OSError as e:  # full or read-only: keep it, retry later
                self._warn(name, f"cannot write the status of {name}: {e}")
                failed = True
                with self._cond:
                    newer = self._jobs.pop(name, None)
                    self._jobs[name] = item
                    if newer is not None:  # a newer request came in: merge it over this one
                        self._queue_job(name, newer)  # (the condition's lock is reentrant)
                continue
            self._failing.pop(name, None)
            for path in item.forget:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return failed
