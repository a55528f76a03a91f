"""The job table: every job this host knows, and the only writer of their ledger records.

Events go in through ``apply`` (the pure machine decides); the changed jobs are
committed to the ledger by ``commit`` *before* the actions they imply are carried
out — the write-ahead rule that keeps a crash from ever running a job twice — and
with them, in the same transaction, the notifications of every job that came to
rest (``notices`` builds them; notify.py decides what is news). Every
ledger error on the way (disk full, read-only, locked) is handled here, on one
path: the change stays unsaved, no job is started on it, the problem is shown in
``ledger_problem`` and the commit is retried a little later.

A step looks only at the *active* jobs (waiting, running, stopping, or missing),
so it costs O(active), not O(all jobs): 10,000 finished jobs cost nothing per step.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol

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


class JobTable:
    """The jobs, their active and deleted sets, and their write-ahead commit."""

    def __init__(self, timing: Timing, notifier: Notifier | None = None) -> None:
        self.timing = timing
        self.notifier = notifier or _Silent()
        self._committed: dict[str, tuple[State, str | None]] = {}  # what is_news compares
        self.jobs: dict[str, Job] = {}
        self.active: set[str] = set()  # not at rest: the only jobs a step looks at
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

    def running(self) -> list[tuple[str, Run]]:
        """The running jobs' names and runs."""
        return [(j.name, j.run) for j in self.active_jobs() if j.running and j.run]

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
        for job in self.active_jobs():
            due = next_due(job, self.timing, now)
            if due is not None and due <= now:
                actions.extend(self.apply(job.name, Tick(now)))
        return actions

    def check_after(self, now: float) -> None:
        """Ask after.py about every request that waits for its ``after:`` jobs (or may be
        launched): the launch that follows sees what they allow now."""
        for job in self.active_jobs():
            if (checked := after.check(job, self.jobs, now)) is not None:
                self.apply(job.name, checked)

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
            self.jobs.pop(name, None)
            self.active.discard(name)
            self.deleted.discard(name)
            self.changed.discard(name)
            self.unsaved.discard(name)
            self._removed.add(name)

    def _track(self, name: str, job: Job) -> None:
        if phase(job) is not Phase.IDLE or job.missing_since is not None \
                or job.next_run is not None \
                or job.after_wait:  # its slots come by Tick; its after: jobs may succeed
            self.active.add(name)
        else:
            self.active.discard(name)
        if job.deleted is not None:
            self.deleted.add(name)
        else:
            self.deleted.discard(name)


def retention_end(job: Job, retention: float) -> float | None:
    """When a deleted job's status is removed; None while it has a file or a process."""
    if job.deleted is None or job.version is not None or phase(job) is not Phase.IDLE:
        return None
    return job.deleted + retention
