"""The daemon: hints → reconcile → state machine → ledger → actions → status.

``step(now)`` does one round of work and says when the next is due; ``run()``
waits for that moment or for a wake-up (a watcher hint, a child exiting, a
signal). The order inside a step is the safety argument: every change the
machine makes is committed to the ledger *before* the actions it implies are
carried out, so a crash at any point never runs a job twice.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from filerexec import __version__, keystore, process, safemode, signing
from filerexec.config import Settings
from filerexec.ledger import FileKey, Ledger
from filerexec.machine import (
    Action,
    Event,
    Exited,
    Job,
    Launch,
    Phase,
    Readiness,
    Signal,
    Spawned,
    SpawnFailed,
    Start,
    Sweep,
    Tick,
    Timing,
    Vanished,
    phase,
    transition,
)
from filerexec.policy import policy_problem
from filerexec.reconcile import Reconciler
from filerexec.spec import JobSpec, parse_job
from filerexec.status import StatusDir, StatusWriter, counts, timestamp
from filerexec.watch import Hint, Hints, Watcher

logger = logging.getLogger(__name__)

ADOPTED_POLL = 1.0  # how often a job we did not spawn (adopted after a restart) is checked
LOG_REFRESH = 5.0  # how often a running job's log is copied into the synced folder
INDEX_DELAY = 1.0  # coalesce index.md rewrites
MAX_REFUSED = 20  # refused file names listed in host.yaml
CLEAN_STOP, READER = "clean_stop", "reader"  # ledger meta keys (see Daemon._restorable)
LEDGER_RETRY = 1.0  # after a failed commit, wait this long before trying again
# Test hook: with this set, the daemon dies right after committing "starting" and before
# the spawn, the narrowest crash window there is (tests/test_crash.py).
CRASH_BEFORE_SPAWN_VAR = "FILEREXEC_TEST_CRASH_BEFORE_SPAWN"


class AlreadyRunning(Exception):
    """Another daemon serves this spool on this host."""


class Daemon:
    """One host serving one spool."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time,
                 procs: process.Api = process) -> None:
        self.settings = settings
        self.clock = clock
        self.procs = procs  # the process API: the real module, or a test's fake
        self.timing = Timing(settings.delete_grace, settings.kill_grace)
        self.wake = threading.Event()
        self.hints = Hints(self.wake.set)
        self.watcher = Watcher(settings.jobs_dir, self.hints)
        self.status = StatusDir(settings.spool, settings.host)
        self.writer = StatusWriter(self.status, settings.log_cap)  # fsyncs off the loop
        self.runs_dir = settings.state_dir / "runs"
        self.jobs: dict[str, Job] = {}
        # Jobs that are not at rest (waiting, running, stopping, or missing): the only ones
        # a step looks at, so a step costs O(active), not O(all jobs) — 10,000 finished
        # jobs cost nothing per step. Kept in step with self.jobs by _apply/_track.
        self._active: set[str] = set()
        self._deleted: set[str] = set()  # deleted jobs whose status waits for the retention
        self._finished: dict[str, list[Path]] = {}  # raw files of ended runs, to delete
        self.reconciler = Reconciler(settings, self.jobs, self._apply, self._admit)
        self._children: dict[str, process.Started] = {}  # run id → child we spawned
        self._waiters = _Waiters(self._wait_child)
        self._changed: set[str] = set()  # jobs whose status file is out of date
        self._unsaved: set[str] = set()  # jobs whose ledger record is out of date
        self._pending_actions: list[Action] = []
        self._before_launch: dict[str, Job] = {}  # undone if "starting" cannot be committed
        self._sweeps: set[str] = set()  # run ids whose leftover processes are to be killed
        self.ledger_problem: str | None = None  # why the ledger cannot be written, if so
        self._ledger_retry = 0.0
        self.safe_mode: str | None = None  # why no new job is started, if so
        self._lock: FileLock | None = None
        self._ledger: Ledger | None = None
        self._next_scan = 0.0
        self._next_heartbeat = 0.0
        self._next_adopted_poll = 0.0
        self._index_due: float | None = 0.0  # written at once on start
        self._log_refreshed: dict[str, float] = {}
        self.started = 0.0
        self.key_dir = settings.key_dir or keystore.default_key_dir()
        self.warnings: list[str] = []  # shown in host.yaml: what the owner should fix
        self._clean_start = False  # the previous daemon stopped cleanly (see _restorable)

    # --- lifecycle ----------------------------------------------------------

    def open(self) -> None:
        """Take the per-spool lock, load the ledger, adopt what still runs, start watching."""
        state = self.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(exist_ok=True)
        lock = FileLock(state / "daemon.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise AlreadyRunning(self._already_running_message()) from None
        self._lock = lock
        # A daemon started from inside a job must not carry that job's mark.
        os.environ.pop(process.RUN_ID_VAR, None)
        (state / "daemon.pid").write_text(f"{os.getpid()}\n")
        self._ledger = Ledger(state / "ledger.sqlite")
        self.jobs.update(self._ledger.load())  # the reconciler holds this very dict
        self.reconciler.restore(self._ledger.seen, self._restorable(self._ledger))
        for name, job in self.jobs.items():
            self._track(name, job)
        self.started = self.clock()
        self._record_start(self.started)
        if not self._clean_start:  # a crash may have left status files behind the ledger
            self._republish_all()
        self._adopt(self.started)
        if not self.settings.poll:
            self.watcher.ensure()
        self._check_setup()
        logger.info("serving %s as host %s (%d jobs known, watcher: %s)",
                    self.settings.spool, self.settings.host, len(self.jobs), self.watcher.kind)

    def _check_setup(self) -> None:
        """Warn loudly, in the log and in host.yaml, about a set-up that weakens security."""
        if getattr(os, "geteuid", lambda: -1)() == 0:
            self.warnings.append("running as root: every job runs as root; run filerexec as "
                                 "an ordinary user")
        if self.settings.spool.resolve() in (self.key_dir.resolve(), *self.key_dir.resolve(
                ).parents):
            self.warnings.append(f"the key folder {self.key_dir} is inside the synced folder: "
                                 "whoever can read the spool can sign jobs; move it")
        for warning in self.warnings:
            logger.warning("SECURITY WARNING: %s", warning)

    def close(self) -> None:
        """Stop watching and release the lock; running jobs keep running."""
        self.watcher.stop()
        self._write_host(self.clock(), stopping=True)
        written = self.writer.close(timeout=10)
        if self._ledger is not None:
            # Clean only if every status file says what the ledger says, and the ledger
            # holds everything this daemon knew; else the next start re-reads everything.
            if written and self._commit(self.clock()) and not self._unsaved:
                with contextlib.suppress(sqlite3.Error, OSError):
                    self._ledger.set_meta(CLEAN_STOP, "1")
            self._ledger.close()
        if self._lock is not None:
            self._lock.release()

    def _restorable(self, ledger: Ledger) -> dict[str, FileKey]:
        """Stat keys of job files the ledger's records already reflect.

        At start-up such a file, unchanged since, is neither re-read nor re-parsed, and
        its status file not rebuilt: with 10,000 finished jobs that is most of a cold
        start. Only after a clean stop (every status file was written) and with the same
        reader (version, host name, size limit); otherwise every file is read again.
        """
        st = self.settings  # anything that changes what a file reads as
        reader = repr((__version__, st.host, st.max_job_bytes, st.require_signature, st.allow))
        self._clean_start = ledger.get_meta(CLEAN_STOP) == "1"
        ok = self._clean_start and ledger.get_meta(READER) == reader
        ledger.set_meta(CLEAN_STOP, "0")
        ledger.set_meta(READER, reader)
        return dict(ledger.files) if ok else {}

    def _already_running_message(self) -> str:
        pid_file = self.settings.state_dir / "daemon.pid"
        try:
            pid = pid_file.read_text().strip()
        except OSError:
            pid = "unknown"
        return (f"filerexec is already running for {self.settings.spool} on this host "
                f"(pid {pid}; lock {self.settings.state_dir / 'daemon.lock'})")

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
        if self.reconciler.settling or self._children:
            return False
        # In safe mode a waiting job waits for a person, not for this daemon.
        resting = (Phase.IDLE, Phase.WAITING) if self.safe_mode else (Phase.IDLE,)
        return all(phase(j) in resting and j.missing_since is None for j in self._active_jobs()
                   if not (j.version and j.version.readiness is Readiness.NOT_READY))

    def _active_jobs(self) -> list[Job]:
        return [j for n in self._active if (j := self.jobs.get(n)) is not None]

    def _track(self, name: str, job: Job) -> None:
        if phase(job) is not Phase.IDLE or job.missing_since is not None:
            self._active.add(name)
        else:
            self._active.discard(name)
        if job.deleted is not None:
            self._deleted.add(name)
        else:
            self._deleted.discard(name)

    # --- one round ----------------------------------------------------------

    def step(self, now: float) -> float:
        """Do everything that is due at ``now``; return seconds until the next round."""
        self._check_safe_mode(now)
        self._collect_exits(now)
        hints = self.hints.drain()
        if hints and self.reconciler.fast(now, hints):
            self._launch_due(now)  # the files that arrived start before jobs/ is listed
        # A file written in place is due once it has stood still: read it then (not at the
        # next rescan, and without spinning on its passed deadline until then).
        settled = self.reconciler.settle_due(now)
        if hints or settled or now >= self._next_scan:
            self._reconcile(now, hints)
            self._next_scan = now + self.settings.scan_interval
        # Only jobs with a deadline that has come: a Tick changes nothing else (the same
        # deadlines decide when the loop wakes), and a burst leaves 1,000 jobs waiting.
        for job in self._active_jobs():
            if any(t <= now for t in _job_deadlines(job, self.timing, now)):
                self._apply(job.name, Tick(now))
        self._launch_due(now)
        self._refresh_logs(now)
        self._forget_expired(now)
        self._publish(now)
        return self._next_deadline(now) - now

    def _apply(self, name: str, event: Event) -> list[Action]:
        job = self.jobs.get(name) or Job(name)
        new, actions = transition(job, event, self.timing)
        if new != job:
            self.jobs[name] = new
            self._track(name, new)
            self._changed.add(name)
            self._unsaved.add(name)
        self._pending_actions.extend(actions)
        return actions

    def _commit_and_act(self, now: float) -> None:
        """Commit every change, then carry out the actions it implies (never the reverse).

        When the commit fails (disk full, ledger unwritable) no job is started: its
        launch is undone and retried later. Kills still go out (they never run anything
        twice); the changes stay unsaved and are committed once the ledger is writable.
        """
        while self._pending_actions:
            committed = self._commit(now)
            actions, self._pending_actions = self._pending_actions, []
            for action in actions:
                if isinstance(action, Start) and not committed:
                    self._undo_launch(action.name)
                else:
                    self._act(action, now)
        self._commit(now)
        self._before_launch.clear()
        if self._sweeps:
            sweeps, self._sweeps = self._sweeps, set()
            self.procs.sweep(sweeps)

    def _commit(self, now: float) -> bool:
        assert self._ledger is not None
        if not self._unsaved:
            return True
        if self.ledger_problem is not None and now < self._ledger_retry:
            return False  # a failing commit may block for SQLite's busy timeout: not every call
        try:
            self._ledger.save((self.jobs[n] for n in self._unsaved if n in self.jobs),
                              files=self.reconciler.known)
        except (sqlite3.Error, OSError) as e:
            if self.ledger_problem != str(e):
                logger.error("cannot write the ledger (%s): no job is started until it can be",
                             e)
                self._next_heartbeat = now  # host.yaml says so at once
            self.ledger_problem = str(e)
            self._ledger_retry = now + LEDGER_RETRY
            return False
        self._unsaved.clear()
        if self.ledger_problem is not None:
            logger.warning("the ledger can be written again")
            self.ledger_problem = None
            self._next_heartbeat = now
        return True

    def _undo_launch(self, name: str) -> None:
        """"Starting" could not be committed: the job waits, as it did, and says why."""
        before = self._before_launch.get(name)
        if before is None:  # only launches start jobs; nothing else to undo
            return
        reason = f"not started yet: the ledger cannot be written ({self.ledger_problem})"
        self.jobs[name] = replace(before, reason=reason)
        self._changed.add(name)

    # --- reconcile: the listing is the truth --------------------------------

    def _reconcile(self, now: float, hints: dict[str, Hint]) -> None:
        if not self.settings.poll:
            self.watcher.ensure()
        if self.reconciler.reconcile(now, hints):
            self._next_heartbeat = now  # host.yaml must say so at once
        self._changed |= self.reconciler.changed_conflicts
        self.reconciler.changed_conflicts.clear()

    def _admit(self, name: str, data: bytes, now: float) -> JobSpec:
        """Parse a job file; authenticate it first if the host requires signed jobs."""
        s = self.settings
        if s.require_signature:
            assert self._ledger is not None
            return signing.admit(data, name, s.host, keystore.load(self.key_dir), self._ledger,
                                 now, s.totp_window, s.allow)
        spec = parse_job(data, name)
        if spec.targets(s.host) and (problem := policy_problem(spec, s.allow)):
            raise signing.Rejected(problem)
        return spec

    # --- launching and processes --------------------------------------------

    def _launch_due(self, now: float) -> None:
        active = self._active_jobs()
        running = sum(1 for j in active if j.running)
        free = self.settings.max_parallel - running
        if free > 0:
            due = heapq.nsmallest(free, (j for j in active if j.due), key=lambda j: (
                j.version.seen if j.version and j.version.seen else 0, j.name))
            for job in due if self.safe_mode is None else ():
                self._before_launch[job.name] = job
                self._apply(job.name, Launch(_run_id(now), now))
        self._commit_and_act(now)

    def _act(self, action: Action, now: float) -> None:
        if isinstance(action, Start):
            self._start(action, now)
        elif isinstance(action, Signal):
            self._signal(action)
        elif isinstance(action, Sweep):
            self._sweeps.add(action.run_id)

    def _start(self, action: Start, now: float) -> None:
        spec, run_id = action.spec, action.run_id
        env = dict(spec.env)
        env.update(FILEREXEC_JOB=action.name, FILEREXEC_HOST=self.settings.host)
        launch = process.Launch(
            run_id=run_id, commands=spec.commands, shell=spec.shell, cwd=spec.cwd, env=env,
            stdout=spec.stdout, stderr=spec.stderr,
            output_path=self._output_path(run_id), exit_path=self._exit_path(run_id),
        )
        if os.environ.get(CRASH_BEFORE_SPAWN_VAR):
            logger.error("test hook %s: dying before the spawn", CRASH_BEFORE_SPAWN_VAR)
            os._exit(70)
        try:
            child = self.procs.spawn(launch)
        except process.SpawnError as e:
            logger.warning("job %s could not start: %s", action.name, e)
            self._apply(action.name, SpawnFailed(str(e), now))
            return
        logger.info("job %s started (run %s, pid %d)", action.name, run_id, child.handle.pid)
        self._children[run_id] = child
        self._apply(action.name, Spawned(child.handle.pid, child.handle.create_time))
        self._waiters.submit(run_id, child)

    def _wait_child(self, run_id: str, child: process.Started) -> None:
        child.wait()  # only to wake the loop at once; _collect_exits reads the code
        self.wake.set()

    def _signal(self, action: Signal) -> None:
        run = action.run
        if run.pid is None or run.create_time is None:
            return
        handle = process.Handle(run.pid, run.create_time)
        logger.info("job %s: %s (run %s)", action.name,
                    "KILL after the grace period" if action.force else "TERM", run.run_id)
        if action.force:
            self.procs.kill(handle, run.run_id)
        else:
            self.procs.terminate(handle, run.run_id)

    def _collect_exits(self, now: float) -> None:
        by_run = {j.run.run_id: j.name for j in self._active_jobs() if j.running and j.run}
        for run_id, child in list(self._children.items()):
            code = child.poll()  # the waiter thread only wakes the loop: polling is the truth
            if code is None:
                continue
            del self._children[run_id]
            recorded = self.procs.read_exit(self._exit_path(run_id))
            name = by_run.get(run_id)
            if name is not None:
                self._finish_run(name, recorded if recorded is not None else code, now)
        if now >= self._next_adopted_poll:
            self._next_adopted_poll = now + ADOPTED_POLL
            for job in self._active_jobs():
                if job.running and job.run and job.run.run_id not in self._children:
                    self._check_adopted(job, now)
        # Committed now, not with this step's launches: the ledger writes a job's run
        # history from its current run, so a run that ends and a queued version that
        # starts in one commit would leave the first run without its outcome.
        self._commit(now)

    def _finish_run(self, name: str, code: int | None, now: float) -> None:
        job = self.jobs[name]
        assert job.run is not None
        self._apply(name, Exited(code, now) if code is not None else Vanished(now))
        run_id = job.run.run_id
        self.writer.log(name, self._output_path(run_id))
        # Deleted once the log and the final status are written and the ledger holds the
        # result (the job may run again before that: its new run's files are not these).
        self._finished.setdefault(name, []).extend(
            [self._output_path(run_id), self._exit_path(run_id)])
        self._log_refreshed.pop(name, None)

    def _check_adopted(self, job: Job, now: float) -> None:
        """A run this daemon did not spawn: alive (same pid and start time), exited, or lost."""
        run = job.run
        assert run is not None
        if run.pid is None:  # the daemon died between the spawn and recording the pid
            found = self.procs.find(run.run_id)
            if found is not None:
                logger.info("job %s: found run %s (pid %d) started just before the daemon "
                            "stopped", job.name, run.run_id, found.pid)
                self._apply(job.name, Spawned(found.pid, found.create_time))
                return
        elif run.create_time is not None and self.procs.alive(
                process.Handle(run.pid, run.create_time)):
            return
        code = self.procs.read_exit(self._exit_path(run.run_id))
        if code is None and run.pid is None:
            self._apply(job.name, Vanished(
                now, "the daemon stopped while starting it; it is not run again"))
            return
        self._finish_run(job.name, code, now)

    def _republish_all(self) -> None:
        """Status files and logs may lag the ledger after a crash: publish them again."""
        self._changed.update(self.jobs)
        for job in self.jobs.values():
            if job.run is not None and job.run.finished is not None and (
                    self._output_path(job.run.run_id).exists()):
                run_id = job.run.run_id
                self.writer.log(job.name, self._output_path(run_id))
                self._finished.setdefault(job.name, []).extend(
                    [self._output_path(run_id), self._exit_path(run_id)])

    def _record_start(self, now: float) -> None:
        """Remember this start in the ledger; too many recent ones mean safe mode."""
        assert self._ledger is not None
        window = self.settings.storm_window
        starts = safemode.recent_starts(self._ledger.get_meta(safemode.STARTS_KEY), now, window)
        starts.append(now)
        try:
            self._ledger.set_meta(safemode.STARTS_KEY, json.dumps(starts))
        except (sqlite3.Error, OSError) as e:
            logger.error("cannot record this start in the ledger: %s", e)
        why = safemode.storm(starts, self.settings.storm_starts, window)
        if why is not None and safemode.current(self.settings.state_dir) is None:
            try:
                safemode.enter(self.settings.state_dir, why)
            except OSError as e:
                logger.error("%s, but safe mode cannot be entered: %s", why, e)
        self._check_safe_mode(now)

    def _check_safe_mode(self, now: float) -> None:
        """Safe mode lasts while its file exists; a person ends it by deleting the file."""
        reason = safemode.current(self.settings.state_dir)
        if reason == self.safe_mode:
            return
        if reason is not None:
            logger.error("safe mode: %s", reason)
        else:
            logger.warning("safe mode ended (its file was deleted): starting jobs again")
            assert self._ledger is not None
            with contextlib.suppress(sqlite3.Error, OSError):  # a fresh count from now on
                self._ledger.set_meta(safemode.STARTS_KEY, json.dumps([now]))
        self.safe_mode = reason
        self._next_heartbeat = now

    def _adopt(self, now: float) -> None:
        """After a restart: running jobs are adopted, finished ones get their exit code."""
        for job in list(self.jobs.values()):
            if not job.running or job.run is None:
                continue
            self._check_adopted(job, now)
            job = self.jobs[job.name]
            if job.running and job.run is not None:
                logger.info("adopted job %s (pid %s)", job.name, job.run.pid)
                if job.kill is not None:  # the kill may not have been sent before the restart
                    self._pending_actions.append(Signal(job.name, job.run, job.kill.escalated))
        self._commit_and_act(now)

    def _output_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.out"

    def _exit_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.exit"

    # --- status -------------------------------------------------------------

    def _refresh_logs(self, now: float) -> None:
        """Running jobs' logs reach the phone every few seconds, not only at the end."""
        for job in self._active_jobs():
            if job.running and job.run:
                last = self._log_refreshed.get(job.name, job.run.started)
                if now - last >= LOG_REFRESH:
                    self._log_refreshed[job.name] = now
                    self.writer.log(job.name, self._output_path(job.run.run_id))

    def _publish(self, now: float) -> None:
        """Hand changed statuses to the writer thread (it retries failed writes itself)."""
        changed, self._changed = self._changed, set()
        for name in changed:
            job = self.jobs.get(name)
            if job is None:
                continue
            if name in self._unsaved:
                # Not committed (the ledger is unwritable): the run's exit file is its only
                # record, so it stays, and this status is published again after the commit.
                self._changed.add(name)
                forget = []
            else:
                forget = self._finished.pop(name, [])
            self.writer.job(job, self.reconciler.conflicts.get(name, ()), forget=forget)
        if changed and self._index_due is None:
            self._index_due = now + INDEX_DELAY
        if self._index_due is not None and now >= self._index_due:
            self.writer.index(list(self.jobs.values()), now)
            self._index_due = None
        if changed or now >= self._next_heartbeat:
            self._write_host(now)

    def _forget_expired(self, now: float) -> None:
        """Deleted jobs whose retention is over: their status and log go, then their record."""
        expired = [name for name, end in self._retention_ends().items() if now >= end]
        if not expired:
            return
        # Queued writes first (they would recreate the files), then the files, then the
        # record: a crash in between only repeats the removal.
        self.writer.flush(timeout=5)
        for name in expired:
            self.status.remove_job(name)
            del self.jobs[name]
            self._deleted.discard(name)
            self._changed.discard(name)
            self._unsaved.discard(name)
            self._log_refreshed.pop(name, None)
        assert self._ledger is not None
        self._ledger.save((), removed=expired)  # the run history stays, for audits
        logger.info("retention over, status removed: %s", ", ".join(sorted(expired)))
        self._index_due = self._next_heartbeat = now

    def _write_host(self, now: float, stopping: bool = False) -> None:
        """Queue host.yaml: the heartbeat, and what keeps this host from working normally."""
        self._next_heartbeat = now + self.settings.heartbeat_interval
        jobs = list(self.jobs.values())  # counted on the writer thread
        spool_available = self.reconciler.spool_available
        problems = [p for p in (None if spool_available else "spool unavailable",
                                self.ledger_problem and f"ledger unwritable: {self.ledger_problem}",
                                self.safe_mode and f"safe mode: {self.safe_mode}") if p]
        state = "serving"
        if stopping:
            state = "stopped"
        elif not spool_available:
            state = "spool unavailable"
        elif self.ledger_problem is not None:
            state = "ledger unwritable"
        elif self.safe_mode is not None:
            state = "safe mode"
        doc: dict[str, Any] = {
            "host": self.settings.host,
            "version": __version__,
            "pid": os.getpid(),
            "state": state,
            "started": timestamp(self.started),
            "updated": timestamp(now),
            "last_scan": timestamp(self.reconciler.last_scan),
            "watcher": "polling" if self.settings.poll else self.watcher.kind,
        }
        if problems:
            doc["reason"] = "; ".join(problems)
        if self.warnings:
            doc["warnings"] = list(self.warnings)
        if refused := self.reconciler.refused:  # names with no status file of their own
            doc["refused"] = [{"file": rel, "reason": reason}
                              for rel, reason in sorted(refused.items())[:MAX_REFUSED]]
        self.writer.host(lambda: {**doc, "jobs": counts(jobs)})

    def _retention_ends(self) -> dict[str, float]:
        """When each deleted job's status is due for removal."""
        ends = {}
        for name in self._deleted:
            job = self.jobs.get(name)
            end = None if job is None else _retention_end(job, self.settings.retention)
            if end is not None:
                ends[name] = end
        return ends


    def _next_deadline(self, now: float) -> float:
        deadlines = [self._next_scan, self._next_heartbeat]
        if self.ledger_problem is not None:
            deadlines.append(self._ledger_retry)
        if self._index_due is not None:
            deadlines.append(self._index_due)
        deadlines.extend(self.reconciler.settling)
        deadlines.extend(self._retention_ends().values())
        for job in self._active_jobs():
            deadlines.extend(_job_deadlines(job, self.timing, now))
            if job.running and job.run and job.run.run_id not in self._children:
                deadlines.append(self._next_adopted_poll)
        return min(deadlines)


class _Waiters:
    """Daemon threads that each block in one child's wait, reused for the next child.

    Starting a thread per job cost ~1 ms of the loop's time in a burst; a pool of
    reusable *daemon* threads (concurrent.futures' are joined at exit, which would
    keep a stopping daemon alive until its jobs end) grows to the number of jobs
    running at once.
    """

    def __init__(self, wait: Callable[[str, process.Started], None]) -> None:
        self._wait = wait
        self._lock = threading.Lock()
        self._idle = 0
        self._queue: queue.SimpleQueue[tuple[str, process.Started]] = queue.SimpleQueue()

    def submit(self, run_id: str, child: process.Started) -> None:
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1  # reserved: exactly one idle thread takes this item
        if reuse:
            self._queue.put((run_id, child))
        else:
            threading.Thread(target=self._work, args=(run_id, child), daemon=True,
                             name="wait-child").start()

    def _work(self, run_id: str, child: process.Started) -> None:
        while True:
            self._wait(run_id, child)
            with self._lock:
                self._idle += 1
            run_id, child = self._queue.get()


def _job_deadlines(job: Job, timing: Timing, now: float) -> Iterable[float]:
    if job.missing_since is not None:
        yield job.missing_since + timing.delete_grace
    if job.kill is not None and not job.kill.escalated:
        yield job.kill.since + timing.kill_grace
    if job.running and job.run is not None:
        yield now + LOG_REFRESH
        if job.run.timeout is not None:
            yield job.run.started + job.run.timeout
    elif job.due and job.version and job.version.spec and job.version.spec.not_after:
        yield job.version.spec.not_after.timestamp()


def _retention_end(job: Job, retention: float) -> float | None:
    """When a deleted job's status is removed; None while it has a file or a process."""
    if job.deleted is None or job.version is not None or phase(job) is not Phase.IDLE:
        return None
    return job.deleted + retention


def _run_id(now: float) -> str:
    stamp = datetime.fromtimestamp(now).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(4)}"
