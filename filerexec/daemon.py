"""The daemon: hints → reconcile → state machine → ledger → actions → status.

``step(now)`` does one round of work and says when the next is due; ``run()``
waits for that moment or for a wake-up (a watcher hint, a child exiting, a
signal). The order inside a step is the safety argument: every change the
machine makes is committed to the ledger *before* the actions it implies are
carried out, so a crash at any point never runs a job twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from filerexec import __version__, process, safemode
from filerexec.config import Settings
from filerexec.ledger import Ledger
from filerexec.machine import (
    Action,
    Event,
    Exited,
    FileMissing,
    FileRead,
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
    Version,
    phase,
    transition,
)
from filerexec.spec import JobSpec, SpecError, parse_job
from filerexec.spool import FileStat, Listing, NotReady, Refused, read_job_file, scan
from filerexec.status import StatusDir, counts, timestamp
from filerexec.watch import Hint, Hints, Watcher

logger = logging.getLogger(__name__)

ADOPTED_POLL = 1.0  # how often a job we did not spawn (adopted after a restart) is checked
LOG_REFRESH = 5.0  # how often a running job's log is copied into the synced folder
INDEX_DELAY = 1.0  # coalesce index.md rewrites
LEDGER_RETRY = 1.0  # after a failed commit, wait this long before trying again
# Test hook: with this set, the daemon dies right after committing "starting" and before
# the spawn, the narrowest crash window there is (tests/test_crash.py).
CRASH_BEFORE_SPAWN_VAR = "FILEREXEC_TEST_CRASH_BEFORE_SPAWN"


class AlreadyRunning(Exception):
    """Another daemon serves this spool on this host."""


@dataclass(slots=True)
class _Unsettled:
    """A file written in place: read it once its stat stayed the same for a while."""

    key: tuple[int, int, int]
    since: float


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
        self.runs_dir = settings.state_dir / "runs"
        self.jobs: dict[str, Job] = {}
        self.conflicts: dict[str, list[str]] = {}
        self._known: dict[str, tuple[int, int, int]] = {}  # stat key of each file read
        self._unsettled: dict[str, _Unsettled] = {}
        self._children: dict[str, process.Started] = {}  # run id → child we spawned
        self._changed: set[str] = set()  # jobs whose status file is out of date
        self._unsaved: set[str] = set()  # jobs whose ledger record is out of date
        self._pending_actions: list[Action] = []
        self._before_launch: dict[str, Job] = {}  # undone if "starting" cannot be committed
        self._final_logs: dict[str, str] = {}  # job → finished run whose log is not published
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
        self.last_scan: float | None = None
        self.spool_available = True

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
        self.jobs = self._ledger.load()
        self.started = self.clock()
        self._record_start(self.started)
        self._republish_all()
        self._adopt(self.started)
        if not self.settings.poll:
            self.watcher.ensure()
        logger.info("serving %s as host %s (%d jobs known, watcher: %s)",
                    self.settings.spool, self.settings.host, len(self.jobs), self.watcher.kind)

    def close(self) -> None:
        """Stop watching and release the lock; running jobs keep running."""
        self.watcher.stop()
        self._write_host(self.clock(), stopping=True)
        if self._ledger is not None:
            self._ledger.close()
        if self._lock is not None:
            self._lock.release()

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
        if self._unsettled or self._children:
            return False
        # In safe mode a waiting job waits for a person, not for this daemon.
        resting = (Phase.IDLE, Phase.WAITING) if self.safe_mode else (Phase.IDLE,)
        return all(phase(j) in resting and j.missing_since is None for j in self.jobs.values()
                   if not (j.version and j.version.readiness is Readiness.NOT_READY))

    # --- one round ----------------------------------------------------------

    def step(self, now: float) -> float:
        """Do everything that is due at ``now``; return seconds until the next round."""
        self._check_safe_mode(now)
        self._collect_exits(now)
        hints = self.hints.drain()
        # A file written in place is due once it has stood still: read it then (not at the
        # next rescan, and without spinning on its passed deadline until then).
        settled = any(now >= u.since + self.settings.settle for u in self._unsettled.values())
        if hints or settled or now >= self._next_scan:
            self._reconcile(now, hints)
            self._next_scan = now + self.settings.scan_interval
        for name, job in list(self.jobs.items()):
            if phase(job) is not Phase.IDLE or job.missing_since is not None:
                self._apply(name, Tick(now))
        self._launch_due(now)
        self._refresh_logs(now)
        self._publish(now)
        return self._next_deadline(now) - now

    def _apply(self, name: str, event: Event) -> list[Action]:
        job = self.jobs.get(name) or Job(name)
        new, actions = transition(job, event, self.timing)
        if new != job:
            self.jobs[name] = new
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
            self._ledger.save(self.jobs[n] for n in self._unsaved if n in self.jobs)
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
        listing = scan(self.settings.jobs_dir)
        self.last_scan = now
        if (listing is not None) != self.spool_available:
            self.spool_available = listing is not None
            self._next_heartbeat = now  # host.yaml must say so at once
            if listing is None:
                logger.warning("spool unavailable: %s is missing; no job is touched",
                               self.settings.jobs_dir)
            else:
                logger.info("spool available again: %s", self.settings.jobs_dir)
        if listing is None:
            return
        self._update_conflicts(listing)
        for name, info in listing.jobs.items():
            if self._known.get(name) == info.key:
                continue
            if not self._settled(name, info, now, hints.get(str(info.path))):
                continue
            self._known[name] = info.key
            version = self._read(name, info, now)
            if version.readiness is Readiness.OTHER_HOST and name not in self.jobs:
                continue  # none of this host's business
            self._apply(name, FileRead(version, now))
        for name in list(self.jobs):
            if name not in listing.jobs:
                self._known.pop(name, None)
                self._unsettled.pop(name, None)
                if self.jobs[name].deleted is None:
                    self._apply(name, FileMissing(now))

    def _settled(self, name: str, info: FileStat, now: float, hint: Hint | None) -> bool:
        """Read a file that arrived complete at once; one written in place once it is still."""
        if hint is Hint.COMPLETE or now - info.mtime_ns / 1e9 >= self.settings.settle:
            self._unsettled.pop(name, None)
            return True
        seen = self._unsettled.get(name)
        if seen is None or seen.key != info.key:
            self._unsettled[name] = _Unsettled(info.key, now)
            return False
        if now - seen.since >= self.settings.settle:
            del self._unsettled[name]
            return True
        return False

    def _read(self, name: str, info: FileStat, now: float) -> Version:
        mtime = info.mtime_ns / 1e9
        try:
            data = read_job_file(info, self.settings.max_job_bytes)
        except Refused as e:
            return Version(Readiness.INVALID, problem=f"refused: {e}", mtime=mtime, seen=now)
        except (NotReady, OSError) as e:
            problem = str(e) if isinstance(e, NotReady) else f"waiting for the sync client: {e}"
            self._known.pop(name, None)  # retry on the next rescan
            return Version(Readiness.NOT_READY, problem=problem, mtime=mtime, seen=now)
        try:
            spec = parse_job(data, name)
        except SpecError as e:
            return Version(Readiness.INVALID, problem=str(e), mtime=mtime, seen=now)
        readiness = Readiness.VALID if spec.targets(self.settings.host) else Readiness.OTHER_HOST
        return Version(readiness, spec, mtime=mtime, seen=self._first_seen(name, spec, now))

    def _first_seen(self, name: str, spec: JobSpec, now: float) -> float:
        """A touch or an identical re-delivery keeps the time this version was first seen."""
        job = self.jobs.get(name)
        previous = job.version if job else None
        if previous and previous.digest == spec.digest and previous.seen is not None:
            return previous.seen
        return now

    def _update_conflicts(self, listing: Listing) -> None:
        for name in set(self.conflicts) | set(listing.conflicts):
            new = sorted(listing.conflicts.get(name, []))
            if self.conflicts.get(name, []) != new:
                if new:
                    self.conflicts[name] = new
                else:
                    self.conflicts.pop(name, None)
                if name in self.jobs:
                    self._changed.add(name)
                if new:
                    logger.info("conflicted copies of %s never run: %s", name, ", ".join(new))

    # --- launching and processes --------------------------------------------

    def _launch_due(self, now: float) -> None:
        running = sum(1 for j in self.jobs.values() if j.running)
        free = self.settings.max_parallel - running
        if free > 0:
            due = [j for j in self.jobs.values() if j.due]
            due.sort(key=lambda j: (j.version.seen if j.version and j.version.seen else 0, j.name))
            for job in due[:free] if self.safe_mode is None else ():
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
        threading.Thread(target=self._wait_child, args=(run_id, child), daemon=True,
                         name=f"wait-{run_id}").start()

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
        by_run = {j.run.run_id: j.name for j in self.jobs.values() if j.running and j.run}
        for run_id, child in list(self._children.items()):
            code = child.poll()
            if code is None:
                continue
            del self._children[run_id]
            recorded = self.procs.read_exit(self._exit_path(run_id))
            name = by_run.get(run_id)
            if name is not None:
                self._finish_run(name, recorded if recorded is not None else code, now)
        if now >= self._next_adopted_poll:
            self._next_adopted_poll = now + ADOPTED_POLL
            for job in list(self.jobs.values()):
                if job.running and job.run and job.run.run_id not in self._children:
                    self._check_adopted(job, now)
        self._commit_and_act(now)

    def _finish_run(self, name: str, code: int | None, now: float) -> None:
        job = self.jobs[name]
        assert job.run is not None
        self._apply(name, Exited(code, now) if code is not None else Vanished(now))
        self._final_logs[name] = job.run.run_id  # published with its status (_publish)
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
                self._final_logs[job.name] = job.run.run_id

    def _record_start(self, now: float) -> None:
        """Remember this start in the ledger; too many recent ones mean safe mode."""
        assert self._ledger is not None
        window = self.settings.storm_minutes * 60
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
        for job in self.jobs.values():
            if job.running and job.run:
                last = self._log_refreshed.get(job.name, job.run.started)
                if now - last >= LOG_REFRESH:
                    self._log_refreshed[job.name] = now
                    with contextlib.suppress(OSError):  # the next refresh or the end retries
                        self.status.publish_log(job.name, self._output_path(job.run.run_id),
                                                self.settings.log_cap)

    def _publish(self, now: float) -> None:
        """Write what changed into status/; whatever cannot be written stays due (never raises)."""
        changed, self._changed = self._changed, set()
        for name in changed:
            job = self.jobs.get(name)
            if job is None:
                continue
            try:
                self.status.write_job(job, self.conflicts.get(name, ()))
                self._publish_final_log(name)
            except OSError as e:  # full or read-only: keep it dirty, the next round retries
                logger.warning("cannot write the status of %s: %s", name, e)
                self._changed.add(name)
                continue
            if name in self._unsaved:  # its exit file is the only record until the commit
                self._changed.add(name)
                continue
            self._forget_run_files(job)
        if changed and self._index_due is None:
            self._index_due = now + INDEX_DELAY
        if self._index_due is not None and now >= self._index_due:
            try:
                self.status.write_index(self.jobs.values(), now)
                self._index_due = None
            except OSError as e:
                logger.warning("cannot write index.md: %s", e)
                self._index_due = now + INDEX_DELAY
        if changed or now >= self._next_heartbeat:
            self._write_host(now)

    def _publish_final_log(self, name: str) -> None:
        run_id = self._final_logs.get(name)
        if run_id is not None:
            self.status.publish_log(name, self._output_path(run_id), self.settings.log_cap)
            del self._final_logs[name]

    def _forget_run_files(self, job: Job) -> None:
        """A finished run's raw output is in the synced log now; keep the state dir small."""
        if job.run is not None and job.run.finished is not None:
            for path in (self._output_path(job.run.run_id), self._exit_path(job.run.run_id)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _write_host(self, now: float, stopping: bool = False) -> None:
        """Write host.yaml; if it cannot be written, say so in the log and retry soon."""
        problems = [p for p in (None if self.spool_available else "spool unavailable",
                                self.ledger_problem and f"ledger unwritable: {self.ledger_problem}",
                                self.safe_mode and f"safe mode: {self.safe_mode}") if p]
        state = "serving"
        if stopping:
            state = "stopped"
        elif not self.spool_available:
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
            "last_scan": timestamp(self.last_scan),
            "watcher": "polling" if self.settings.poll else self.watcher.kind,
            "jobs": counts(self.jobs.values()),
        }
        if problems:
            doc["reason"] = "; ".join(problems)
        try:
            self.status.write_host(doc)
            self._next_heartbeat = now + self.settings.heartbeat_interval
        except OSError as e:
            logger.warning("cannot write host.yaml: %s", e)
            self._next_heartbeat = now + INDEX_DELAY

    def _next_deadline(self, now: float) -> float:
        deadlines = [self._next_scan, self._next_heartbeat]
        if self.ledger_problem is not None:
            deadlines.append(self._ledger_retry)
        if self._index_due is not None:
            deadlines.append(self._index_due)
        deadlines.extend(u.since + self.settings.settle for u in self._unsettled.values())
        for job in self.jobs.values():
            deadlines.extend(_job_deadlines(job, self.timing, now))
            if job.running and job.run and job.run.run_id not in self._children:
                deadlines.append(self._next_adopted_poll)
        return min(deadlines)


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


def _run_id(now: float) -> str:
    stamp = datetime.fromtimestamp(now).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(4)}"
