"""The publisher: what the job table says, shown in ``status/HOST/``.

It decides *what* to write and *when* — changed statuses, a running job's log every
few seconds, a finished run's log before its status, ``index.md`` coalesced,
``index.html`` with it and with every heartbeat (the page shows it), ``host.yaml`` on
every change of the host's facts and as a heartbeat — and hands it
to the status writer's thread (writer.py). A finished run's raw files are deleted
only once its log and its committed status are written. Status files are a view:
nothing here is read back to decide anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from filerexec.config import Settings
from filerexec.machine import Job
from filerexec.render import HostFacts, counts, host_document
from filerexec.runner import Runner
from filerexec.writer import StatusDir, StatusWriter

logger = logging.getLogger(__name__)

LOG_REFRESH = 5.0  # how often a running job's log is copied into the synced folder
INDEX_DELAY = 1.0  # coalesce index.md rewrites
REMOVAL_RETRY = 5.0  # a status removal that failed (retention) is tried again this much later


class Publisher:
    """Queues ``status/HOST/`` writes for the writer thread, at the right moments."""

    def __init__(self, settings: Settings, writer: StatusWriter | None = None) -> None:
        self.settings = settings
        self.status = writer.status if writer is not None else StatusDir(
            settings.spool, settings.host, settings.labels)
        self.writer = writer or StatusWriter(self.status, settings.log_cap)  # fsyncs off the loop
        self._finished: dict[str, list[Path]] = {}  # raw files of ended runs, to delete
        self._log_refreshed: dict[str, float] = {}
        self._index_due: float | None = 0.0  # written at once on start
        self._next_heartbeat = 0.0
        self._facts: HostFacts | None = None  # as last published
        self.removal_retry = 0.0  # no retention removal before this (one failed)

    def run_ended(self, name: str, output: Path, files: Sequence[Path]) -> None:
        """A run is over: its log goes out first; its raw files once its status is written."""
        self.writer.log(name, output)
        # Deleted once the log and the final status are written and the ledger holds the
        # result (the job may run again before that: its new run's files are not these).
        self._finished.setdefault(name, []).extend(files)
        self._log_refreshed.pop(name, None)

    def refresh_logs(self, running: Iterable[tuple[Job, Path]], now: float) -> None:
        """Running jobs' logs reach the phone every few seconds, not only at the end."""
        for job, output in running:
            assert job.run is not None
            last = self._log_refreshed.get(job.name, job.run.started)
            if now - last >= LOG_REFRESH:
                self._log_refreshed[job.name] = now
                self.writer.log(job.name, output)

    def publish(self, changed: Sequence[tuple[Job, bool]], conflicts: Mapping[str, list[str]],
                jobs: Mapping[str, Job], facts: HostFacts, now: float) -> None:
        """Queue changed statuses (each with whether its record is committed), the index
        when due, and host.yaml when due or when the host's facts changed."""
        for job, saved in changed:
            # Not committed (the ledger is unwritable): the run's exit file is its only
            # record, so it stays until the status is published again after the commit.
            forget = self._finished.pop(job.name, []) if saved else []
            self.writer.job(job, conflicts.get(job.name, ()), forget=forget)
        if changed and self._index_due is None:
            self._index_due = now + INDEX_DELAY
        host_news = now >= self._next_heartbeat or not self._same_facts(facts)
        index_due = self._index_due is not None and now >= self._index_due
        if index_due:
            self.writer.index(list(jobs.values()), now)
            self._index_due = None
        if index_due or host_news:  # index.html carries the heartbeat: rewritten with it
            self.writer.page(list(jobs.values()), host_document(facts, now))
        if changed or host_news:
            self.write_host(facts, jobs, now)

    def write_host(self, facts: HostFacts, jobs: Mapping[str, Job], now: float) -> None:
        """Queue host.yaml: the heartbeat, and what keeps this host from working normally."""
        self._next_heartbeat = now + self.settings.heartbeat_interval
        self._facts = facts
        doc = host_document(facts, now)
        listed = list(jobs.values())  # counted on the writer thread
        self.writer.host(lambda: {**doc, "jobs": counts(listed)})

    def _same_facts(self, facts: HostFacts) -> bool:
        """Whether host.yaml already says this (the time of the last scan is no news)."""
        return self._facts is not None and replace(self._facts, last_scan=None) == replace(
            facts, last_scan=None)

    def republish(self, jobs: Iterable[Job], runner: Runner) -> None:
        """After a crash: finished runs' logs again (their raw output is still there)."""
        for job in jobs:
            run = job.run
            if run is not None and run.finished is not None and (
                    runner.output_path(run.run_id).exists()):
                self.run_ended(job.name, runner.output_path(run.run_id),
                               runner.run_files(run.run_id))

    def remove(self, names: Iterable[str], now: float) -> list[str]:
        """Retention is over: remove the jobs' status files and logs; the names removed.

        Queued writes go first (they would recreate the files). What cannot be removed
        now (a folder that fails, a queue that does not drain) is tried again after
        ``REMOVAL_RETRY``; until then ``removal_retry`` holds the retention back.
        """
        names = list(names)
        removed = []
        if self.writer.flush(timeout=5):
            for name in names:
                if self.status.remove_job(name):
                    removed.append(name)
                    self._log_refreshed.pop(name, None)
                    self._finished.pop(name, None)
        if len(removed) < len(names):
            self.removal_retry = now + REMOVAL_RETRY
        self._index_due = self._next_heartbeat = now
        return removed

    def next_due(self, now: float, logs_running: bool) -> float:
        """When the loop must next come back for this: heartbeat, index, running logs."""
        due = [self._next_heartbeat]
        if self._index_due is not None:
            due.append(self._index_due)
        if logs_running:
            due.append(now + LOG_REFRESH)
        return min(due)
