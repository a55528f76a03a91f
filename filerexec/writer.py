"""The status writer: ``status/HOST/`` written on a thread of its own.

``StatusDir`` is the folder of one host and how each file in it is written (always
through safefile: atomic, never through a link); ``StatusWriter`` queues requests
and writes them off the daemon's loop, so the loop never waits for a write.

Only the logs are fsynced (a run's raw output is deleted once its log is written): the
status files, index.md, index.html and host.yaml are a view of the ledger that the next
daemon rewrites wherever it differs, so a power loss costs them nothing lasting.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filerexec.jobstate import State
from filerexec.machine import Job
from filerexec.names import job_name
from filerexec.page import TAIL_BYTES, PageCache, render_page
from filerexec.render import dump_yaml, job_status, log_tail
from filerexec.safefile import atomic_write, holds, read_tail, remove_below
from filerexec.textindex import Row, render_index

logger = logging.getLogger(__name__)


class StatusDir:
    """The folder ``status/HOST/`` of one host: the only place it writes to."""

    def __init__(self, spool: Path, host: str, labels: tuple[str, ...] = ()) -> None:
        self.root = spool / "status" / host
        self.host = host
        self.labels = labels
        self.spool = spool  # trusted; everything below it is synced and may hold links
        self._index_rows: dict[str, Row] = {}
        self._tails: dict[str, bytes] = {}  # each log's end as last written (for index.html)
        self._written: dict[str, bytes] = {}  # digest of each status as this process wrote it
        self._page = PageCache()

    def job_path(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.yaml"

    def log_path(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.log"

    def write_job(self, job: Job, conflicts: Iterable[str] = ()) -> bool:
        """Write the job's status unless the file already says exactly that; True if written.

        Comparing first makes a restart cheap: it rebuilds every status from the ledger and
        the job files, and rewriting 10,000 identical files would take seconds. A status
        that differs from what this process last wrote is written without reading it back.
        """
        path = self.job_path(job.name)
        data = dump_yaml(job_status(job, self.host, conflicts))
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if self._written.get(job.name, digest) == digest and holds(path, data):
            return False
        atomic_write(path, data, self.spool, durable=False)
        self._written[job.name] = digest
        return True

    def write_index(self, jobs: Iterable[Job], now: float) -> None:
        text = render_index(jobs, self.host, now, self._index_rows, self.labels)
        atomic_write(self.root / "index.md", text.encode(), self.spool, durable=False)

    def write_page(self, jobs: Iterable[Job], host_doc: Mapping[str, Any]) -> None:
        """index.html: the heartbeat and the newest jobs with their logs' last lines."""
        atomic_write(self.root / "index.html",
                     render_page(jobs, host_doc, self._tail, cache=self._page).encode(), self.spool,
                     durable=False)

    def _tail(self, name: str) -> bytes:
        """A log's end as this host last wrote it; read back once after a restart."""
        tail = self._tails.get(name)
        if tail is None:
            tail = self._tails[name] = read_tail(self.spool, self.log_path(name), TAIL_BYTES)
        return tail

    def write_host(self, doc: Mapping[str, Any]) -> None:
        atomic_write(self.root / "host.yaml", dump_yaml(doc), self.spool, durable=False)

    def publish_log(self, name: str, output: Path, cap: int) -> None:
        """Copy the last ``cap`` bytes of a run's raw output into the synced log."""
        try:
            with open(output, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - cap))
                tail = f.read(cap)
        except FileNotFoundError:
            size, tail = 0, b""
        tail = log_tail(tail, size, cap)
        # An error goes up to the writer, which keeps the run's output and retries: a log
        # lost here would be lost for good once the status is written.
        atomic_write(self.log_path(name), tail, self.spool)
        self._tails[name] = tail[-TAIL_BYTES:]

    def remove_job(self, name: str) -> bool:
        """Remove a job's status and log (its retention is over); False if either stays."""
        removed = [remove_below(self.spool, p) for p in (self.job_path(name), self.log_path(name))]
        self._tails.pop(name, None)
        self._written.pop(name, None)
        return all(removed)


def _checked(name: str) -> str:
    """A job name that is safe below status/HOST/ (names.py decides), or ValueError.

    The reconciler only ever makes jobs of such names; checking again where the path is
    built means no other way in (an old ledger, a future caller) can write elsewhere.
    """
    if job_name(f"{name}.yaml") != name:
        raise ValueError(f"{name!r} is not a safe job name")
    return name


@dataclass(slots=True)
class _JobWrite:
    job: Job | None = None  # the status to write (None: only the log)
    conflicts: tuple[str, ...] = ()
    log: Path | None = None  # a run's raw output to copy into the synced log first
    forget: list[Path] = field(default_factory=list)  # run files to delete once written
    due: float = 0.0  # monotonic time before which it is not written (PASSING_DELAY)


MAX_RETRY = 30.0  # seconds between attempts to write into a folder that stays broken
GATHER = 0.005  # seconds from the first change queued to the pass that writes it (_gather)
SHARE = 4  # under load the writer waits SHARE times as long as its last pass took (_gather)
MAX_GATHER = 1.0  # seconds: the most a status lags behind the ledger under load
PASSING_DELAY = 1.0  # seconds a pending or running status waits: most short jobs end meanwhile
_PASSING = frozenset({State.PENDING, State.RUNNING})  # states a job of a burst passes through
MAX_FAILING = 20  # failing writes listed in host.yaml
_JOB = "job "  # _failing's keys: "job NAME", or "index", "page", "host" (a job may be "index")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _why(e: OSError) -> str:
    """An error without its file name: a temp file's name is new at every try, and a log
    line that changes at every retry would be logged at every retry."""
    return e.strerror or str(e)


class StatusWriter:
    """Writes ``status/HOST/`` on its own thread, so the daemon's loop never waits for fsync.

    The latest request per file wins: during a burst a job that went pending → running →
    succeeded before the thread got to it is written once. A pending or running status waits
    ``PASSING_DELAY`` from the first such request: a job that ends sooner is written once,
    finished (in a burst of 1,000, 2.7 → 2.0 status files a job; the rest is mostly the
    ``pending`` of jobs that waited longer for a free slot).
    Order per job is kept: its log, then its status, then its raw run files are deleted. A
    failed write (disk full, read-only) is logged and retried after ``retry`` seconds unless
    a newer one replaced it.
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
        self._flushing = 0  # callers waiting in flush(): everything is written at once
        self._soonest = float("inf")  # the earliest ``due`` of the jobs queued
        self._last_pass = 0.0  # seconds the last pass took
        self._clean = True  # the last pass wrote everything it had
        self._delay = retry
        self._failing: dict[str, str] = {}  # what failed (see _JOB), and how, as last logged
        self._thread: threading.Thread | None = None
        self.written: Callable[[], None] = lambda: None  # after a pass (syncthing.Scanner)
        self.discard: Callable[[Path], None] = _unlink  # a forgotten run file (Runner.discard)

    def job(self, job: Job, conflicts: Iterable[str] = (), log: Path | None = None,
            forget: Iterable[Path] = ()) -> None:
        """Queue the job's status (with its log copied first, and run files deleted after)."""
        self._queue_job(job.name, _JobWrite(job, tuple(sorted(conflicts)), log, list(forget)))

    def log(self, name: str, output: Path) -> None:
        """Queue a copy of a running job's output into its synced log."""
        self._queue_job(name, _JobWrite(log=output))

    def index(self, jobs: list[Job], now: float) -> None:
        self._queue_other("index", lambda: self.status.write_index(jobs, now))

    def page(self, jobs: list[Job], host_doc: Mapping[str, Any]) -> None:
        self._queue_other("page", lambda: self.status.write_page(jobs, host_doc))

    def host(self, doc: Callable[[], Mapping[str, Any]]) -> None:
        """Queue host.yaml; ``doc`` is built on the writer thread (counts are O(jobs))."""
        self._queue_other("host", lambda: self.status.write_host({**doc(), **self._failures()}))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued is written; False on timeout."""
        if self.inline:
            return not self._pass()
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(
                    lambda: not (self._jobs or self._other or self._busy), timeout)
            finally:
                self._flushing -= 1

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
            if new.job is not None and new.job.state in _PASSING:  # from the first such request
                new.due = old.due if old is not None and old.due else (
                    time.monotonic() + PASSING_DELAY)
            self._soonest = min(self._soonest, new.due)
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
                while not (self._closed or self._other or (self._flushing and self._jobs)):
                    if (left := self._soonest - time.monotonic()) <= 0:
                        break
                    self._cond.wait(None if left == float("inf") else left)
                if self._closed and not (self._jobs or self._other):
                    return
                self._busy = True
                self._gather()
            started = time.monotonic()
            failed = self._pass()
            self._last_pass = time.monotonic() - started
            with self._cond:
                if not failed:
                    self._delay = self.retry
                elif self._closed:
                    return  # stopping: one last try is all a broken folder gets
                else:  # back off: a folder that stays broken must not cost a write a second
                    self._cond.wait(self._delay)
                    self._delay = min(self._delay * 2, MAX_RETRY)

    def _gather(self) -> None:
        """Wait before a pass (unless closing or flushed), the lock released meanwhile: what
        changes in the next moments goes in the same pass, and a job just started gets the
        CPU first (on 2 cores, writing beside its start delayed it by ~1 ms, measured).

        ``GATHER`` at least; under load ``SHARE`` times the last pass, so the writer takes
        at most a fifth of the time from starting jobs, and a burst's jobs are written
        about once each (finished), not once per state (up to ``MAX_GATHER``)."""
        wait = min(MAX_GATHER, max(GATHER, SHARE * self._last_pass))
        deadline = time.monotonic() + wait
        while not (self._closed or self._flushing) and (left := deadline - time.monotonic()) > 0:
            self._cond.wait(left)

    def _pass(self) -> bool:
        """Write what is queued and due (all of it when closing or flushed) once; True if
        something failed (it stays queued)."""
        with self._cond:
            now = None if self.inline or self._closed or self._flushing else time.monotonic()
            jobs = {n: item for n, item in self._jobs.items() if now is None or item.due <= now}
            for name in jobs:
                del self._jobs[name]
            self._soonest = min((item.due for item in self._jobs.values()), default=float("inf"))
            other, self._other = self._other, {}
        failed = self._write_jobs(jobs)
        for key, write in other.items():
            try:
                write()
                self._cleared(key)
            except OSError as e:
                self._warn(key, f"cannot write {key}: {_why(e)}")
                failed = True
                with self._cond:
                    self._other.setdefault(key, write)
        with self._cond:
            self._clean = not failed
        if jobs or other:
            self.written()
        return failed

    def _warn(self, key: str, message: str) -> None:
        """Log a failure once, not at every retry (a broken folder would flood the log);
        again when it changes."""
        if self._failing.get(key) != message:
            self._failing[key] = message
            logger.warning("%s (retrying; logged again only if this changes)", message)

    def _cleared(self, key: str) -> None:
        if self._failing.pop(key, None) is not None:
            what = f"the status of {key[len(_JOB):]}" if key.startswith(_JOB) else key
            logger.info("writing %s works again", what)

    def _failures(self) -> dict[str, list[str]]:
        """What keeps failing, for host.yaml (read on the writer thread, which keeps it)."""
        return {"failing": sorted(self._failing.values())[:MAX_FAILING]} if self._failing else {}

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
                self._warn(_JOB + name, f"cannot write the status of {name}: {_why(e)}")
                failed = True
                with self._cond:
                    newer = self._jobs.pop(name, None)
                    self._jobs[name] = item
                    self._soonest = min(self._soonest, item.due)  # retried after the back-off
                    if newer is not None:  # a newer request came in: merge it over this one
                        self._queue_job(name, newer)  # (the condition's lock is reentrant)
                continue
            self._cleared(_JOB + name)
            for path in item.forget:
                self.discard(path)
        return failed
