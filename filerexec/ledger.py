"""The durable run ledger: the host's private memory, outside the synced tree.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk before it
returns. The daemon commits every changed job *before* it carries out the
actions that change implies, so "job J, digest D, starting" is durable before
the spawn and no restart ever runs a job twice. Only what a spawn returned (the
pid) is committed without its fsync (``durable=False``): a crash of the daemon
keeps it, and a power loss that loses it ends the run as well.

Two tables: ``jobs`` holds one snapshot per job name (what the state machine
needs to resume), ``runs`` the history of every run (for ``runs:`` and audits).
For signed jobs (signing.py), ``tokens`` remembers every signature and code ever
accepted (a replay is refused) and ``accepted`` the file each job was last
accepted as, until the job's deletion (a re-read of that same file is no replay).
``outbox`` holds the notifications (DESIGN §9), each written in the same transaction as
the state it reports and marked sent by the delivery worker (outbox.py).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filerexec.machine import Job, Kill, Run, State
from filerexec.notify import Outgoing

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, job TEXT NOT NULL, digest TEXT NOT NULL, started REAL NOT NULL,
    finished REAL, exit_code INTEGER, outcome TEXT, reason TEXT, slot REAL);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job, started);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, job TEXT NOT NULL, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS accepted (
    job TEXT PRIMARY KEY, token TEXT NOT NULL, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL, target TEXT NOT NULL, event TEXT NOT NULL, created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, sent REAL, gave_up REAL,
    PRIMARY KEY (id, target));
"""


class Ledger:
    """Durable job snapshots and run history in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        if "slot" not in {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}:
            self._db.execute("ALTER TABLE runs ADD COLUMN slot REAL")  # a ledger from before it
        # The last committed record of each job: a save skips unchanged ones, so a restart
        # that re-reads 10,000 unchanged job files commits nothing.
        self._saved: dict[str, str] = {}
        self.seen: dict[str, tuple[str, float]] = {}  # by load(): digest → first seen
        self.files: dict[str, FileKey] = {}  # by load(): stat key of the file last read

    def close(self) -> None:
        self._db.close()

    def load(self) -> dict[str, Job]:
        """Every job as last committed (file versions are re-read by the reconciler)."""
        jobs: dict[str, Job] = {}
        for (data,) in self._db.execute("SELECT data FROM jobs"):
            rec = json.loads(data)
            job = job_from_record(rec)
            jobs[job.name] = job
            self._saved[job.name] = data
            if rec.get("seen"):
                digest, seen = rec["seen"]
                self.seen[job.name] = (digest, seen)
            if rec.get("file") and len(rec["file"]) == 4:  # else: read again, to be sure
                size, mtime_ns, ino, ctime_ns = rec["file"]
                self.files[job.name] = (size, mtime_ns, ino, ctime_ns)
        return jobs

    def save(self, jobs: Iterable[Job], removed: Iterable[str] = (),
             files: Mapping[str, FileKey] | None = None,
             events: Iterable[Outgoing] = (), durable: bool = True) -> None:
        """Commit changed jobs (and their runs, and the events they cause) in one durable
        transaction: a notification is never lost, nor recorded for a state that was not.

        ``files`` gives the stat key of the file each job's record reflects, so that a
        restart need not re-read a file that has not changed since (see ``files``).
        Not ``durable``: without its fsync (``synchronous=NORMAL`` for it), so on disk with
        the next durable commit; a crash of the process still loses nothing.
        """
        files = files or {}
        records = [(job, _dump({**job_to_record(job), "file": files.get(job.name)}))
                   for job in jobs]
        records = [(job, data) for job, data in records if self._saved.get(job.name) != data]
        removed, events = list(removed), list(events)
        if not records and not removed and not events:
            return
        with self._transaction(durable) as db:
            db.executemany("INSERT OR IGNORE INTO outbox (id, target, event, created)"
                           " VALUES (?, ?, ?, ?)",
                           [(e.id, e.target, e.payload(), e.created) for e in events])
            for job, data in records:
                db.execute("INSERT OR REPLACE INTO jobs (name, data) VALUES (?, ?)",
                           (job.name, data))
                if job.run is not None:
                    r = job.run
                    db.execute(
                        "INSERT INTO runs (run_id, job, digest, started, finished, exit_code,"
                        " outcome, reason, slot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (run_id) DO"
                        " UPDATE SET finished=excluded.finished, exit_code=excluded.exit_code,"
                        " outcome=excluded.outcome, reason=excluded.reason",
                        (r.run_id, job.name, r.digest, r.started, r.finished, r.exit_code,
                         r.outcome, r.reason, r.slot),
                    )
                if job.deleted is not None:
                    # Deleted: dropping the same signed bytes again is a replay from now on.
                    db.execute("DELETE FROM accepted WHERE job = ?", (job.name,))
            for name in removed:
                db.execute("DELETE FROM jobs WHERE name = ?", (name,))
                db.execute("DELETE FROM accepted WHERE job = ?", (name,))
        # Only once committed: a failed transaction must not pass for saved.
        self._saved.update((job.name, data) for job, data in records)
        for name in removed:
            self._saved.pop(name, None)

    def runs(self, job: str | None = None) -> list[dict[str, Any]]:
        """Run history, oldest first (all jobs, or one)."""
        query = ("SELECT run_id, job, digest, started, finished, exit_code, outcome, reason,"
                 " slot FROM runs")
        args: tuple[str, ...] = ()
        if job is not None:
            query += " WHERE job = ?"
            args = (job,)
        cursor = self._db.execute(query + " ORDER BY started, rowid", args)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def token_used(self, token: str) -> bool:
        """True if a signature or code was ever accepted on this host."""
        return self._db.execute("SELECT 1 FROM tokens WHERE token = ?", (token,)).fetchone() \
            is not None

    def accepted(self, job: str) -> tuple[str, str] | None:
        """The token and file fingerprint ``job`` was last accepted with (None after deletion)."""
        row = self._db.execute("SELECT token, fingerprint FROM accepted WHERE job = ?",
                               (job,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def accept(self, job: str, token: str, fingerprint: str, now: float) -> None:
        """Record a token as used, durably, before the job it admits can start."""
        with self._transaction() as db:
            db.execute("INSERT INTO tokens (token, job, used) VALUES (?, ?, ?)", (token, job, now))
            db.execute("INSERT OR REPLACE INTO accepted (job, token, fingerprint) VALUES (?, ?, ?)",
                       (job, token, fingerprint))

    def _transaction(self, durable: bool = True) -> _Transaction:
        return _Transaction(self._db, durable)


FileKey = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


def _dump(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on error."""

    def __init__(self, db: sqlite3.Connection, durable: bool = True) -> None:
        self._db = db
        self._durable = durable

    def __enter__(self) -> sqlite3.Connection:
        if not self._durable:  # set outside a transaction; WAL mode: NORMAL skips the fsync
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:  # e.g. locked: no __exit__ follows, so every later commit
            self._durable_again()  # would have been without its fsync
            raise
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                try:
                    self._db.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()  # a failed COMMIT (disk full) leaves the transaction open
                    raise
            self._rollback()
        finally:
            self._durable_again()

    def _durable_again(self) -> None:
        if not self._durable:
            self._db.execute("PRAGMA synchronous=FULL")

    def _rollback(self) -> None:
        # SQLite may have rolled back already; the caller's error is what counts.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


def job_to_record(job: Job) -> dict[str, Any]:
    """The durable part of a job: everything but the file version, which is re-read."""
    run, version = job.run, job.version
    return {
        "name": job.name,
        # When this host first saw the current version: a restart must not reset it.
        "seen": [version.digest, version.seen] if version and version.digest and version.seen
        else None,
        "state": job.state.value,
        "reason": job.reason,
        "started_digest": job.started_digest,
        "last_operation": job.last_operation,
        "deleted": job.deleted,
        "missing_since": job.missing_since,
        "runs": job.runs,
        "attempt": job.attempt,
        "retry_at": job.retry_at,
        "next_run": job.next_run,
        "slot": job.slot,
        "after_wait": job.after_wait,
        "kill": None if job.kill is None else [job.kill.reason, job.kill.since, job.kill.escalated,
                                               job.kill.failed, job.kill.failures,
                                               job.kill.retry_at],
        "run": None if run is None else {
            "run_id": run.run_id, "digest": run.digest, "started": run.started,
            "timeout": run.timeout, "pid": run.pid, "create_time": run.create_time,
            "finished": run.finished, "exit_code": run.exit_code,
            "outcome": None if run.outcome is None else run.outcome.value, "reason": run.reason,
            "external": run.external, "waiting": run.waiting, "began": run.began,
            "slot": run.slot, "notify": run.notify, "notify_on": run.notify_on,
        },
    }


def job_from_record(rec: dict[str, Any]) -> Job:
    r = rec.get("run")
    run = None
    if r is not None:
        outcome = r.pop("outcome")
        for key in ("notify", "notify_on"):  # JSON gave lists
            r[key] = None if r.get(key) is None else tuple(r[key])
        run = Run(**r, outcome=None if outcome is None else State(outcome))
    kill = rec.get("kill")
    return Job(
        name=rec["name"],
        state=State(rec["state"]),
        reason=rec["reason"],
        run=run,
        started_digest=rec["started_digest"],
        last_operation=rec["last_operation"],
        kill=None if kill is None else Kill(*kill),  # 3 items before kill failures were kept
        missing_since=rec.get("missing_since"),
        deleted=rec["deleted"],
        runs=rec["runs"],
        attempt=rec.get("attempt", 1),
        retry_at=rec.get("retry_at"),
        next_run=rec.get("next_run"),
        slot=rec.get("slot"),
        after_wait=rec.get("after_wait", False),
    )
