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
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from filerexec.machine import Job, State

try:
    from yaml import CSafeDumper as _Dumper
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".~filerexec-"
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename."""
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
        "| job | state | since | exit |",
        "|---|---|---|---|",
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
    return f"| {_cell(job.name)} | {state} | {when} | {code} |"


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
        self._index_rows: dict[str, tuple[Job, float, str]] = {}

    def job_path(self, name: str) -> Path:
        return self.root / f"{name}.yaml"

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def write_job(self, job: Job, conflicts: Iterable[str] = ()) -> bool:
        """Write the job's status unless the file already says exactly that; True if written.

        Comparing first makes a restart cheap: it rebuilds every status from the ledger and
        the job files, and rewriting (and fsyncing) 10,000 identical files would take seconds.
        """
        path = self.job_path(job.name)
        data = dump_yaml(job_status(job, self.host, conflicts))
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass
        atomic_write(path, data)
        return True

    def write_index(self, jobs: Iterable[Job], now: float) -> None:
        atomic_write(self.root / "index.md",
                     render_index(jobs, self.host, now, self._index_rows).encode())

    def write_host(self, doc: Mapping[str, Any]) -> None:
        atomic_write(self.root / "host.yaml", dump_yaml(doc))

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
            head = f"[filerexec: {size - len(tail)} earlier bytes not shown]\n".encode()
            tail = head + tail
        atomic_write(self.log_path(name), tail)

    def remove_job(self, name: str) -> None:
        for path in (self.job_path(name), self.log_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


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


class StatusWriter:
    """Writes ``status/HOST/`` on its own thread, so the daemon's loop never waits for fsync.

    The latest request per file wins: during a burst a job that went pending → running →
    succeeded before the thread got to it is written once. Order per job is kept: its log,
    then its status, then its raw run files are deleted. A failed write (disk full,
    read-only) is logged and retried after ``retry`` seconds unless a newer one replaced it.
    """

    def __init__(self, status: StatusDir, log_cap: int, retry: float = 1.0) -> None:
        self.status = status
        self.log_cap = log_cap
        self.retry = retry
        self._cond = threading.Condition()
        self._jobs: dict[str, _JobWrite] = {}
        self._other: dict[str, Callable[[], None]] = {}  # "index", "host": newest closure
        self._busy = False
        self._closed = False
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
        with self._cond:
            return self._cond.wait_for(lambda: not (self._jobs or self._other or self._busy),
                                       timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued, then stop the thread; False if not everything was written."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        return done

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
                jobs, self._jobs = self._jobs, {}
                other, self._other = self._other, {}
            failed = self._write_jobs(jobs)
            for key, write in other.items():
                try:
                    write()
                except OSError as e:
                    logger.warning("cannot write %s: %s", key, e)
                    failed = True
                    with self._cond:
                        self._other.setdefault(key, write)
            if failed:
                with self._cond:
                    self._cond.wait(self.retry)

    def _write_jobs(self, jobs: dict[str, _JobWrite]) -> bool:
        failed = False
        for name, item in jobs.items():
            try:
                if item.log is not None:
                    self.status.publish_log(name, item.log, self.log_cap)
                if item.job is not None:
                    self.status.write_job(item.job, item.conflicts)
            except OSError as e:  # full or read-only: keep it, retry later
                logger.warning("cannot write the status of %s: %s", name, e)
                failed = True
                with self._cond:
                    newer = self._jobs.pop(name, None)
                    self._jobs[name] = item
                    if newer is not None:  # a newer request came in: merge it over this one
                        self._queue_job(name, newer)  # (the condition's lock is reentrant)
                continue
            for path in item.forget:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return failed
