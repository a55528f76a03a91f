"""The job table: every job this host knows, and the only writer of their ledger records.

Events go in through ``apply`` (the pure machine decides); the changed jobs are
committed to the ledger by ``commit`` *before* the actions they imply are carried
out — the write-ahead rule that keeps a crash from ever running a job twice — and
with them, in the same transaction, the notifications of every job that came to
rest (``notices`` builds them; notify.py decides what is news). Every
ledger error on the way (disk full, read-only, locked) is handled here, on one
path: the change stays unsaved, no job is started on it, the problem is shown in
``ledger_problem`` and the commit is retried a little later.

A step looks only at the jobs it has to: each job's timer, its place in the queue for a
slot, whether it runs or waits for ``after:`` jobs are kept as it changes (``_track``), so
a step costs what changed plus what is due, not O(jobs): 10,000 finished jobs cost
nothing per step, and a burst of 10,000 waiting ones is not read through at every step.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from filerexec import after
from filerexec.ledger import FileKey, Ledger
from filerexec.machine import (
    Action,
    Event,
    Held,
    Job,
    Launch,
    Phase,
    Run,
    State,
    Tick,
    Timing,
    next_due,
    phase,
    transition,
)
from filerexec.notify import Outgoing, committed_key, is_news


class Notifier(Protocol):
    """Where events come from and go: delivery.Delivery (tests may pass their own)."""

    def notices(self, job: Job, now: float) -> list[Outgoing]:
        """The events a job's new state causes."""

    def wake(self) -> None:
        """New events were committed."""

    def start(self, ledger: Path) -> None:
        """Open the outbox in the ledger and send what a crash left there."""


class _Silent:
    def notices(self, job: Job, now: float) -> list[Outgoing]:
        return []

    def wake(self) -> None:
        pass

    def start(self, ledger: Path) -> None:
        pass

logger = logging.getLogger(__name__)

LEDGER_RETRY = 1.0  # after a failed commit, wait this long before trying again
K = TypeVar("K", float, tuple[float, str])


class _Order(Generic[K]):
    """Names by a key that changes, smallest first: a heap whose stale entries are skipped
    (a change is one push; the k smallest cost O(k log n), not a pass over every name)."""

    def __init__(self) -> None:
        self._keys: dict[str, K] = {}
        self._heap: list[tuple[K, str]] = []

    def __len__(self) -> int:
        return len(self._keys)

    def set(self, name: str, key: K | None) -> None:
        if key is None:
            self._keys.pop(name, None)
        elif self._keys.get(name) != key:
            self._keys[name] = key
            heapq.heappush(self._heap, (key, name))
        if len(self._heap) > 2 * len(self._keys) + 64:  # mostly stale: rebuilt
            self._heap = [(k, n) for n, k in self._keys.items()]
            heapq.heapify(self._heap)

    def first(self) -> K | None:
        """The smallest key."""
        while self._heap and self._keys.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def smallest(self, limit: int | None = None, upto: K | None = None) -> list[str]:
        """The names of the ``limit`` smallest keys, or of every key up to ``upto``; they
        stay in the order."""
        found: dict[str, K] = {}  # a name pushed twice with one key comes out once
        while self._heap and (limit is None or len(found) < limit):
            key, name = self._heap[0]
            if upto is not None and key > upto:
                break
            heapq.heappop(self._heap)
            if self._keys.get(name) == key:
                found[name] = key
        for name, key in found.items():
            heapq.heappush(self._heap, (key, name))
        return list(found)


class JobTable:
    """The jobs, their active and deleted sets, and their write-ahead commit."""

    def __init__(self, timing: Timing, notifier: Notifier | None = None) -> None:
        self.timing = timing
        self.notifier = notifier or _Silent()
        self._committed: dict[str, tuple[State, str | None]] = {}  # what is_news compares
        self.jobs: dict[str, Job] = {}
        self.active: set[str] = set()  # not at rest: the only jobs a step may look at
        self._timers: _Order[float] = _Order()  # active jobs by when they need a Tick
        self._queue: _Order[tuple[float, str]] = _Order()  # due jobs, first come first
        self._running: set[str] = set()
        self._after: set[str] = set()  # active jobs whose version names after: jobs
        self.deleted: set[str] = set()  # deleted jobs whose status waits for the retention
        self.changed: set[str] = set()  # jobs whose status file is out of date
        self.unsaved: set[str] = set()  # jobs whose ledger record is out of date
        self.ledger_problem: str | None = None  # why the ledger cannot be written, if so
        self.ledger_retry = 0.0  # when a failed commit is tried again
        self._removed: set[str] = set()  # forgotten jobs whose records are still to delete
        self._before_launch: dict[str, Job] = {}  # undone if "starting" cannot be committed
        self._ledger: Ledger | None = None
        self._held = True  # a reason of the last hold may be left in waiting jobs: clear it

    def load(self, ledger: Ledger) -> None:
        """Every job as the ledger last committed it; later commits go there.

        The notifier starts sending from the ledger's outbox: what a crash left there first.
        """
        self._ledger = ledger
        self.jobs.update(ledger.load())
        for name, job in self.jobs.items():
            self._track(name, job)
            self._committed[name] = committed_key(job)
        self.notifier.start(ledger.path)

    def active_jobs(self) -> list[Job]:
        return [j for n in self.active if (j := self.jobs.get(n)) is not None]

    def running_jobs(self) -> list[Job]:
        return [self.jobs[n] for n in self._running]

    def running(self) -> list[tuple[str, Run]]:
        """The running jobs' names and runs."""
        return [(j.name, j.run) for j in self.running_jobs() if j.run]

    def first_due(self, limit: int) -> list[Job]:
        """Up to ``limit`` due jobs, the longest seen first (by name among equals)."""
        return [self.jobs[n] for n in self._queue.smallest(limit)]

    def next_timer(self) -> float | None:
        """When the earliest active job's timer comes (``tick`` feeds it)."""
        return self._timers.first()

    def apply(self, name: str, event: Event) -> list[Action]:
        """Feed one event to one job; the actions to carry out once committed."""
        job = self.jobs.get(name) or Job(name)
        self._removed.discard(name)  # dropped again before its removal was committed
        new, actions = transition(job, event, self.timing)
        if new != job:
            self.jobs[name] = new
            self._track(name, new)
            self.changed.add(name)
            self.unsaved.add(name)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Feed ``Tick`` to the jobs whose timer has come (the machine says when: ``next_due``)."""
        actions = []
        for name in self._timers.smallest(upto=now):
            actions.extend(self.apply(name, Tick(now)))
        return actions

    def check_after(self, now: float) -> None:
        """Ask after.py about every request that waits for its ``after:`` jobs (or may be
        launched): the launch that follows sees what they allow now."""
        for name in list(self._after):
            job = self.jobs[name]
            if (checked := after.check(job, self.jobs, now)) is not None:
                self.apply(name, checked)

    def launch(self, name: str, run_id: str, now: float) -> list[Action]:
        """Grant a due job a slot; undone by ``undo_launch`` if it cannot be committed."""
        self._before_launch[name] = self.jobs[name]
        return self.apply(name, Launch(run_id, now))

    def hold(self, reason: str | None) -> list[Action]:
        """The host starts nothing new (``reason``), or starts again (None): due jobs say so."""
        actions = []
        if reason is not None or self._held:
            for job in self.active_jobs():
                if job.due:
                    actions.extend(self.apply(job.name, Held(reason)))
            self._held = reason is not None
        return actions

    def undo_launch(self, name: str) -> None:
        """"Starting" could not be committed: the job waits, as it did, and says why."""
        before = self._before_launch.pop(name, None)
        if before is None:  # only launches start jobs; nothing else to undo
            return
        reason = f"not started yet: the ledger cannot be written ({self.ledger_problem})"
        self.jobs[name] = replace(before, reason=reason)
        self._track(name, self.jobs[name])
        self.changed.add(name)

    def launches_done(self) -> None:
        self._before_launch.clear()

    def commit(self, now: float, files: Mapping[str, FileKey], durable: bool = True) -> bool:
        """Write every changed record (and forgotten one); False if it failed.

        ``files`` holds the stat key of the file each record reflects (see Ledger.save).
        Not ``durable``: on disk with the next durable commit (a crash of the daemon loses
        nothing; a power loss may lose it). A commit with notifications is always durable.
        """
        assert self._ledger is not None
        if not self.unsaved and not self._removed:
            return True
        if self.ledger_problem is not None and now < self.ledger_retry:
            return False  # a failing commit may block for SQLite's busy timeout: not every call
        saving = [self.jobs[n] for n in self.unsaved if n in self.jobs]
        # A job that came to rest is news: its events go in the same transaction.
        events = [e for job in saving if is_news(self._committed.get(job.name), job)
                  for e in self.notifier.notices(job, now)]
        try:
            self._ledger.save(saving, removed=self._removed, files=files, events=events,
                              durable=durable or bool(events))
        except (sqlite3.Error, OSError) as e:
            if self.ledger_problem != str(e):
                logger.error("cannot write the ledger (%s): no job is started until it can be",
                             e)
            self.ledger_problem = str(e)
            self.ledger_retry = now + LEDGER_RETRY
            return False
        self._committed.update((job.name, committed_key(job)) for job in saving)
        if events:
            self.notifier.wake()
        for name in self._removed:
            self._committed.pop(name, None)
        self.unsaved.clear()
        self._removed.clear()
        if self.ledger_problem is not None:
            logger.warning("the ledger can be written again")
            self.ledger_problem = None
        return True

    def take_changed(self) -> list[tuple[Job, bool]]:
        """Jobs whose status is out of date, each with whether its record is committed.

        An uncommitted one stays out of date: it is published again after the commit.
        """
        changed, self.changed = self.changed, set()
        result = []
        for name in changed:
            job = self.jobs.get(name)
            if job is None:
                continue
            saved = name not in self.unsaved
            if not saved:
                self.changed.add(name)
            result.append((job, saved))
        return result

    def retention_ends(self, retention: float) -> dict[str, float]:
        """When each deleted job's status is due for removal."""
        ends = {}
        for name in self.deleted:
            job = self.jobs.get(name)
            end = None if job is None else retention_end(job, retention)
            if end is not None:
                ends[name] = end
        return ends

    def forget(self, names: Iterable[str], now: float) -> None:
        """Drop jobs whose retention is over; their records go with the next commit.

        The run history stays, for audits. A commit that fails leaves the records in
        the ledger (they are retried, and after a restart the retention ends again).
        """
        for name in names:
            if (job := self.jobs.pop(name, None)) is not None:
                self._track(name, job, gone=True)
            self.changed.discard(name)
            self.unsaved.discard(name)
            self._removed.add(name)

    def _track(self, name: str, job: Job, gone: bool = False) -> None:
        """Keep the job's place in every set and order a step reads (``gone``: in none)."""
        active = not gone and (
            phase(job) is not Phase.IDLE or job.missing_since is not None
            or job.next_run is not None
            or job.after_wait)  # its slots come by Tick; its after: jobs may succeed
        _put(self.active, name, active)
        _put(self.deleted, name, not gone and job.deleted is not None)
        _put(self._running, name, active and job.running and job.run is not None)
        _put(self._after, name, active and bool(after.names(job)))
        self._timers.set(name, next_due(job, self.timing) if active else None)
        seen = job.version.seen if job.version and job.version.seen else 0.0
        self._queue.set(name, (seen, name) if active and job.due else None)


def _put(names: set[str], name: str, member: bool) -> None:
    if member:
        names.add(name)
    else:
        names.discard(name)


def retention_end(job: Job, retention: float) -> float | None:
    """When a deleted job's status is removed; None while it has a file or a process."""
    if job.deleted is None or job.version is not None or phase(job) is not Phase.IDLE:
        return None
    return job.deleted + retention
