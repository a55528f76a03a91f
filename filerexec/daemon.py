"""The daemon: hints → reconcile → job table → ledger → runner → publisher.

``step(now)`` does one round of work and says when the next is due; ``run()``
waits for that moment or for a wake-up (a watcher hint, a child exiting, a
signal). The order inside a step is the safety argument: every change the
machine makes is committed to the ledger *before* the actions it implies are
carried out, so a crash at any point never runs a job twice.

The daemon only wires the parts, each the owner of one thing: the job table
(jobs and their commits), the reconciler (what is in jobs/), admission (what a
file means for this host), the runner (processes), the publisher (status/HOST/)
and the lifecycle (lock, restarts, safe mode). None of them calls back into it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from filerexec import __version__, keystore, process
from filerexec.admission import Admission
from filerexec.config import Settings
from filerexec.delivery import Delivery
from filerexec.jobtable import JobTable
from filerexec.ledger import Ledger
from filerexec.lifecycle import AlreadyRunning, Lifecycle, setup_warnings
from filerexec.machine import (
    Action,
    Exited,
    Job,
    Observed,
    Phase,
    Readiness,
    Signal,
    Signalled,
    Start,
    Sweep,
    Timing,
    Vanished,
    phase,
)
from filerexec.publisher import Publisher
from filerexec.reconcile import Reconciler
from filerexec.render import HostFacts
from filerexec.runner import Runner, runner_for
from filerexec.syncthing import Scanner
from filerexec.watch import Hints, Watcher
from filerexec.writer import StatusWriter

__all__ = ["AlreadyRunning", "Daemon"]

logger = logging.getLogger(__name__)

LISTING_AFTER_ARRIVAL = 0.5  # seconds from files read on arrival to the listing that confirms


class Daemon:
    """One host serving one spool."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time,
                 procs: process.Api = process, runner: Runner | None = None,
                 writer: StatusWriter | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.wake = threading.Event()
        self.hints = Hints(self.wake.set)
        self.watcher = Watcher(settings.jobs_dir, self.hints)
        self.runner: Runner = runner or runner_for(settings, self.wake.set, procs)
        self.delivery = Delivery(settings, self.runner.output_path, self.wake.set)
        self.table = JobTable(Timing(settings.delete_grace, settings.kill_grace), self.delivery)
        self.key_dir = settings.key_dir or keystore.default_key_dir()
        self.admission = Admission(settings, self.key_dir, store=None)
        self.reconciler = Reconciler(settings, self.table.jobs, self.admission)
        self.publisher = Publisher(settings, writer)
        self.jobs: dict[str, Job] = self.table.jobs  # the same dict, read only here
        self.writer = self.publisher.writer
        self.scanner = Scanner(settings.syncthing, self.publisher.status.root, self.wake.set)
        self.writer.written, self.writer.discard = self.scanner.request, self.runner.discard
        self.lifecycle = Lifecycle(settings)
        self.ledger: Ledger | None = None
        self.warnings: list[str] = []  # shown in host.yaml: what the owner should fix
        self.started = 0.0
        self._actions: list[Action] = []  # to carry out once their changes are committed
        self._sweeps: set[str] = set()  # run ids whose leftover processes are to be killed
        self._next_scan = 0.0

    # --- lifecycle ----------------------------------------------------------

    def open(self) -> None:
        """Take the per-spool lock, load the ledger, adopt what still runs, start watching."""
        self.lifecycle.acquire()
        self.runner.open()
        ledger = self.ledger = Ledger(self.settings.state_dir / "ledger.sqlite")
        self.admission.store = ledger
        self.table.load(ledger)  # and the notifications' outbox in it
        self.reconciler.restore(ledger.seen, self.lifecycle.restorable(ledger))
        self.started = self.clock()
        self.lifecycle.record_start(ledger, self.started)
        self.lifecycle.check_safe_mode(ledger, self.started)
        if not self.lifecycle.clean_start:  # a crash may have left status files behind
            self.table.changed.update(self.table.jobs)
            self.publisher.republish(self.table.jobs.values(), self.runner)
        self._adopt(self.started)
        if not self.settings.poll:
            self.watcher.ensure()
        self._check_setup()
        logger.info("serving %s as host %s (%d jobs known, watcher: %s)",
                    self.settings.spool, self.settings.host, len(self.jobs), self.watcher.kind)

    def _check_setup(self) -> None:
        """Warn loudly, in the log and in host.yaml, about a set-up that weakens security."""
        self.warnings = setup_warnings(self.settings, self.key_dir)
        for warning in self.warnings:
            logger.warning("SECURITY WARNING: %s", warning)

    def close(self) -> None:
        """Stop watching and release the lock; running jobs keep running."""
        self.watcher.stop()
        now = self.clock()
        committed = self.ledger is not None and self._commit(now)
        # Statuses changed since the last step (an adoption at open, a commit just now)
        # go out too: a clean stop promises the next start that every status is written.
        self.publisher.publish(self.table.take_changed(), self.reconciler.conflicts,
                               self.jobs, self._facts(stopping=True), now)
        written = self.writer.close(timeout=10)
        self.delivery.close()
        self.scanner.close()
        self.runner.close()
        if self.ledger is not None:
            # Clean only if every status file says what the ledger says, and the ledger
            # holds everything this daemon knew; else the next start re-reads everything.
            if written and committed and not self.table.unsaved and not self.table.changed:
                self.lifecycle.mark_clean_stop(self.ledger)
            self.ledger.close()
        self.lifecycle.release()

    def run(self, stop: threading.Event, once: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``once``, until nothing is left to do)."""
        while not stop.is_set():
            now = self.clock()
            delay = self.step(now)
            if once and self.idle():
                return
            self.wake.wait(max(0.0, delay))
            self.wake.clear()

    def idle(self) -> bool:
        """Nothing running, nothing due, nothing waiting to settle or to be confirmed deleted."""
        if self.reconciler.settling or self.runner.busy:
            return False
        # Held back (safe mode, a drain), a waiting job waits for a person; after_wait: its deps.
        resting = (Phase.IDLE, Phase.WAITING) if self.lifecycle.hold else (Phase.IDLE,)
        return all((phase(j) in resting or j.after_wait) and j.missing_since is None
                   for j in self.table.active_jobs()
                   if not (j.version and j.version.readiness is Readiness.NOT_READY))

    # --- one round ----------------------------------------------------------

    def step(self, now: float) -> float:
        """Do everything that is due at ``now``; return seconds until the next round."""
        assert self.ledger is not None
        self.lifecycle.check(self.ledger, now)  # safe mode, a drain
        self._collect_exits(now)
        self._read_jobs(now)
        self._actions.extend(self.table.tick(now))  # only jobs whose timer has come
        self._launch_due(now)
        self._publish(now)
        return self._next_deadline(now) - now

    def _collect_exits(self, now: float) -> None:
        self._observe(self.runner.poll(self.table.running(), now))
        # Committed now, not with this step's launches: the ledger writes a job's run
        # history from its current run, so a run that ends and a queued version that
        # starts in one commit would leave the first run without its outcome.
        self._commit(now)

    def _read_jobs(self, now: float) -> None:
        """Arrived files first, then the listing (the truth): now for hints they left, else soon."""
        hints = self.hints.drain()
        if hints:
            arrived, left = self.reconciler.fast(now, hints)
            if len(left) < len(hints):  # settled on arrival: a listing confirms them soon
                self._next_scan = min(self._next_scan, now + LISTING_AFTER_ARRIVAL)
            hints = left
            if arrived:
                self._observe(arrived)
                self._launch_due(now)  # the files that arrived start before jobs/ is listed
        # A file written in place is read once it has stood still, not at the next rescan.
        settled = self.reconciler.settle_due(now)
        lost = self.hints.take_lost()  # e.g. an overflow: list jobs/, whatever its folders say
        if hints or settled or lost or now >= self._next_scan:
            if not self.settings.poll:
                self.watcher.ensure()
            seen = self.reconciler.reconcile(now, hints, self.watcher.trusted and not lost)
            self.table.changed |= seen.restatus
            self._observe(seen.events)
            self._next_scan = now + self.settings.scan_interval

    def _launch_due(self, now: float) -> None:
        self.table.check_after(now)  # what each job's after: jobs allow, right before launching
        hold = self.lifecycle.hold
        self._actions.extend(self.table.hold(hold))
        free = self.settings.max_parallel - len(self.table.running_jobs())
        if free > 0 and hold is None:
            due = self.table.first_due(free)
            self._observe(self.reconciler.recheck([j.name for j in due], now))  # signatures
            for job in due:
                self._actions.extend(self.table.launch(job.name, self.runner.new_run_id(now), now))
        self._commit_and_act(now)

    def _publish(self, now: float) -> None:
        running = [(j, self.runner.output_path(r.run_id)) for j in self.table.running_jobs()
                   if (r := j.run) is not None]
        self.publisher.refresh_logs(running, now)
        self._forget_expired(now)
        self.publisher.publish(self.table.take_changed(), self.reconciler.conflicts,
                               self.jobs, self._facts(), now)

    # --- carrying out -------------------------------------------------------

    def _observe(self, observed: Iterable[Observed]) -> None:
        """Apply what a part saw; a run that ended has its log published."""
        for seen in observed:
            before = self.jobs.get(seen.name)
            self._actions.extend(self.table.apply(seen.name, seen.event))
            run = before.run if before is not None and before.running else None
            if run is not None and isinstance(seen.event, Exited | Vanished):
                self.publisher.run_ended(seen.name, self.runner.output_path(run.run_id),
                                         self.runner.run_files(run.run_id))

    def _commit_and_act(self, now: float) -> None:
        """Commit every change, then carry out the actions it implies (never the reverse).

        When the commit fails (disk full, ledger unwritable) no job is started: its launch
        is undone and retried later. Kills still go out (they never run anything twice).
        """
        while self._actions:
            committed = self._commit(now)
            actions, self._actions = self._actions, []
            starts = []
            for act in actions:
                if isinstance(act, Start):
                    if committed:
                        starts.append(act)
                    else:
                        self.table.undo_launch(act.name)
                elif isinstance(act, Signal):  # a kill that could not be made is shown, retried
                    self._observe([Observed(act.name, Signalled(now, self.runner.signal(act)))])
                elif isinstance(act, Sweep):
                    self._sweeps.add(act.run_id)
            self._observe(self.runner.launch(starts, now))
        # The pid a spawn returned: no fsync beside the job's start (ledger.py says why not).
        self._commit(now, durable=False)
        self.table.launches_done()
        if self._sweeps:
            sweeps, self._sweeps = self._sweeps, set()
            self.runner.sweep(sweeps)

    def _commit(self, now: float, durable: bool = True) -> bool:
        return self.table.commit(now, self.reconciler.known, durable)

    def _adopt(self, now: float) -> None:
        """After a restart: running jobs are adopted, finished ones get their exit code."""
        running = [(j.name, j.run) for j in self.jobs.values() if j.running and j.run]
        self._observe(self.runner.adopt(running, now))
        for name, _ in running:
            job = self.jobs[name]
            if job.running and job.run is not None:
                logger.info("adopted job %s (pid %s)", job.name, job.run.pid)
                if job.kill is not None:  # the kill may not have been sent before the restart
                    self._actions.append(Signal(job.name, job.run, job.kill.escalated))
        self._commit_and_act(now)

    def _forget_expired(self, now: float) -> None:
        """Deleted jobs whose retention is over: their status and log go, then their record
        (a crash in between only repeats the removal; a failed removal is retried)."""
        expired = [name for name, end in self._retention_ends().items() if now >= end]
        if expired and (removed := self.publisher.remove(expired, now)):
            self.table.forget(removed, now)
            self._commit(now)
            logger.info("retention over, status removed: %s", ", ".join(sorted(removed)))

    def _retention_ends(self) -> dict[str, float]:
        retry = self.publisher.removal_retry
        ends = self.table.retention_ends(self.settings.retention)
        return {name: max(end, retry) for name, end in ends.items()}

    # --- what the loop and host.yaml need to know ----------------------------

    def _facts(self, stopping: bool = False) -> HostFacts:
        rec = self.reconciler
        return HostFacts(
            host=self.settings.host, version=__version__, pid=os.getpid(), started=self.started,
            watcher="polling" if self.settings.poll else self.watcher.kind,
            last_scan=rec.last_scan, spool_problem=rec.spool_problem, shell=self.settings.job_shell,
            ledger_problem=self.table.ledger_problem, safe_mode=self.lifecycle.safe_mode,
            stopping=stopping, warnings=tuple(self.warnings), refused=dict(rec.refused),
            labels=self.settings.labels, notify=self.delivery.problems(),
            drain=self.lifecycle.drain_state(bool(self.table.running())),
            syncthing=self.scanner.report())

    def _next_deadline(self, now: float) -> float:
        running = self.table.running()
        deadlines = [self._next_scan, self.publisher.next_due(now, bool(running))]
        if self.table.ledger_problem is not None:
            deadlines.append(self.table.ledger_retry)
        deadlines.extend(self.reconciler.settling)
        deadlines.extend(self._retention_ends().values())
        if (timer := self.table.next_timer()) is not None:
            deadlines.append(timer)
        if (polled := self.runner.next_due(running)) is not None:
            deadlines.append(polled)
        return min(deadlines)
