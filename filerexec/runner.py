"""The executor seam: how runs are started, signalled, watched and found again.

A `Runner` turns the machine's actions into processes (or, later, cluster jobs) and
reports what it sees as events (`Observed`): ``Spawned``, ``SpawnFailed``,
``Exited``, ``Vanished``. It never touches the job table; the daemon applies what it
reports. `LocalRunner` runs jobs on this host through process.py (or a test's fake
process API): each run's raw output and exit code live in ``STATE/runs/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from filerexec import process
from filerexec.config import DEFAULTS, Settings
from filerexec.machine import (
    Exited,
    Observed,
    Run,
    Signal,
    Spawned,
    SpawnFailed,
    Start,
    Vanished,
)
from filerexec.output import Trimmer
from filerexec.spares import SpareFiles

logger = logging.getLogger(__name__)

ADOPTED_POLL = 1.0  # how often a run this daemon did not spawn (adopted) is checked
PARENT_AGE = 60.0  # a waiting parent started ahead is replaced this often: its run id says when
VANISHED_WHILE_STARTING = "the daemon stopped while starting it; it is not run again"


class Runner(Protocol):
    """What the daemon needs of an executor (local processes, a cluster scheduler)."""

    def open(self) -> None:
        """Prepare (folders, environment) before the first launch or adoption."""

    def new_run_id(self, now: float) -> str:
        """The id of the next run to launch (``new_run_id``, or one prepared for it)."""

    def close(self) -> None:
        """The daemon stops: end what was started ahead (runs keep running)."""

    def launch(self, starts: Sequence[Start], now: float) -> list[Observed]:
        """Start each run; never raises: a run that cannot start is a ``SpawnFailed``."""

    def signal(self, action: Signal) -> str | None:
        """TERM (or, with ``action.force``, KILL) the run's whole tree; None when that was
        done, else why it could not be (the daemon shows it and tries again)."""

    def poll(self, running: Iterable[tuple[str, Run]], now: float) -> list[Observed]:
        """What became of the running runs (``name``, ``run``): exits, vanishings, finds."""

    def adopt(self, running: Iterable[tuple[str, Run]], now: float) -> list[Observed]:
        """After a restart: each run found alive, or what became of it."""

    def sweep(self, run_ids: Collection[str]) -> None:
        """Kill whatever still carries one of these finished runs' marks."""

    def output_path(self, run_id: str) -> Path:
        """The run's raw output (what its synced log is copied from)."""

    def run_files(self, run_id: str) -> list[Path]:
        """Every file the run left, to delete once its result is published."""

    def discard(self, path: Path) -> None:
        """Delete one of ``run_files`` (its result is published), or keep it for reuse."""

    @property
    def busy(self) -> bool:
        """True while a run this runner started is still being waited for."""

    def next_due(self, running: Iterable[tuple[str, Run]]) -> float | None:
        """When ``poll`` must run again for runs that no event will announce."""


RUNS_DIR = "runs"  # each run's raw output and exit file, in the state directory
EXIT_SUFFIX = ".exit"  # an exit file's: the one kind of run file kept as a spare (spares.py)


def runner_for(settings: Settings, wake: Callable[[], None], procs: process.Api) -> Runner:
    """The executor the host's config names: local processes, or Slurm (slurm.py)."""
    if settings.executor == "slurm":
        from filerexec.slurm import SlurmRunner  # its own module; runner.py stays the seam

        return SlurmRunner(settings.state_dir / RUNS_DIR, settings.host, wake, settings.slurm)
    return LocalRunner.serving(settings, wake, procs)


def new_run_id(now: float) -> str:
    """A run id unique per run, readable: when it started, plus randomness."""
    stamp = datetime.fromtimestamp(now).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(4)}"


class RunFiles:
    """Where a run's raw output and exit code live in the runs folder: one naming for every
    executor (the daemon publishes and removes these files whichever runner made them)."""

    runs_dir: Path

    def output_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.out"

    def exit_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}{EXIT_SUFFIX}"

    def run_files(self, run_id: str) -> list[Path]:
        return [self.output_path(run_id), self.exit_path(run_id)]

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)


class LocalRunner(RunFiles):
    """Runs on this host: a process group per run, its output straight into a file."""

    def __init__(self, runs_dir: Path, host: str, wake: Callable[[], None],
                 procs: process.Api = process, keep: int = DEFAULTS["log_cap"],
                 shell: str | None = None) -> None:
        self.runs_dir = runs_dir
        self.shell = shell  # of jobs that name none (None: process.default_shell())
        self.host = host
        self._trimmer = Trimmer(keep)  # a job printing without end must not fill the disk
        self._spares = SpareFiles(runs_dir / "spare")  # finished runs' exit files, emptied
        self.procs = procs  # the process API: the real module, or a test's fake
        self._wake = wake
        self._children: dict[str, process.Started] = {}  # run id → child we spawned
        self._waiters = _Waiters(self._wait_child)
        self._next_adopted_poll = 0.0
        self._parent: process.Parent | None = None  # the next run's, started ahead
        self._parent_since = 0.0
        self._next_prepare = 0.0
        self._parent_given = False  # its run id was handed out since the last launch
        self._retired: list[process.Parent] = []  # unused parents, until they have ended

    @classmethod
    def serving(cls, settings: Settings, wake: Callable[[], None],
                procs: process.Api = process) -> LocalRunner:
        """The runner of a daemon with these settings: raw output in STATE/runs/."""
        return cls(settings.state_dir / RUNS_DIR, settings.host, wake, procs, settings.log_cap,
                   settings.shell)

    def open(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._spares.open()
        # A daemon started from inside a job must not carry that job's mark.
        os.environ.pop(process.RUN_ID_VAR, None)

    def close(self) -> None:
        if self._parent is not None:
            self._retire(self._parent)
            self._parent = None
        self._retired = [p for p in self._retired if not p.retire(wait=1.0)]

    @property
    def busy(self) -> bool:
        return bool(self._children)

    # --- starting and signalling ----------------------------------------------------

    def new_run_id(self, now: float) -> str:
        if self._parent is None or self._parent_given:
            return new_run_id(now)
        self._parent_given = True
        return self._parent.run_id

    def launch(self, starts: Sequence[Start], now: float) -> list[Observed]:
        seen = [self._start(start, now) for start in starts]
        self._parent_given = False  # an id handed out and not launched was never committed
        return seen

    def _get_ready(self, now: float) -> None:
        """The next run's waiting parent and output file, made in the step after a launch
        (its poll), not beside the job's own start; none older than ``PARENT_AGE``."""
        if self._parent is not None and now >= self._parent_since + PARENT_AGE:
            self._retire(self._parent)
            self._parent = None
        self._retired = [p for p in self._retired if not p.retire()]
        if self._parent is None and now >= self._next_prepare:
            run_id = new_run_id(now)
            self._spares.take(self.exit_path(run_id))  # else prepare creates it
            self._parent = self.procs.prepare(run_id, self.exit_path(run_id))
            self._parent_since = now
            if self._parent is None:  # none can be (Windows, a test's processes): not each step
                self._next_prepare = now + PARENT_AGE
                self.discard(self.exit_path(run_id))
                return
            # Creating a file took ~0.9 ms here (ext4 in a VM, measured): not on the job's path.
            with contextlib.suppress(OSError):  # else its parent creates it (or says why not)
                os.close(os.open(self.output_path(run_id), os.O_WRONLY | os.O_CREAT, 0o600))

    def discard(self, path: Path) -> None:
        if path.suffix == EXIT_SUFFIX:
            self._spares.put(path)
        else:
            path.unlink(missing_ok=True)

    def _retire(self, parent: process.Parent) -> None:
        """An unused waiting parent ends; so do the files made for its run."""
        self._retired.append(parent)
        parent.retire()
        self.output_path(parent.run_id).unlink(missing_ok=True)

    def _start(self, action: Start, now: float) -> Observed:
        spec, run_id = action.spec, action.run_id
        env = {**dict(spec.env), "FILEREXEC_JOB": action.name, "FILEREXEC_HOST": self.host}
        launch = process.Launch(
            run_id=run_id, commands=spec.commands, shell=spec.shell or self.shell, cwd=spec.cwd,
            env=env,
            stdout=spec.stdout, stderr=spec.stderr,
            output_path=self.output_path(run_id), exit_path=self.exit_path(run_id),
            parent=self._parent if self._parent and self._parent.run_id == run_id else None,
        )
        if launch.parent is not None:
            self._parent = None  # used, or retired by spawn if it could not be
        else:
            self._spares.take(launch.exit_path)  # else the waiting parent creates it
        try:
            child = self.procs.spawn(launch)
        except Exception as e:
            # SpawnError says it in words; anything else (a NUL in a command is a
            # ValueError) is still this one run's failure, never the loop's.
            message = str(e) if isinstance(e, process.SpawnError) else f"{type(e).__name__}: {e}"
            logger.warning("job %s could not start: %s", action.name, message)
            if launch.parent is not None:
                self._retire(launch.parent)  # its script (in the exit file) goes with it
            self.discard(launch.exit_path)
            return Observed(action.name, SpawnFailed(message, now))
        logger.info("job %s started (run %s, pid %d)", action.name, run_id, child.handle.pid)
        self._children[run_id] = child
        self._waiters.submit(run_id, child)
        self._trimmer.watch(launch.output_path)
        return Observed(action.name, Spawned(child.handle.pid, child.handle.create_time))

    def _wait_child(self, run_id: str, child: process.Started) -> None:
        child.wait()  # only to wake the loop at once; poll reads the code
        self._wake()

    def signal(self, action: Signal) -> str | None:
        run = action.run
        if run.pid is None or run.create_time is None:
            return None
        handle = process.Handle(run.pid, run.create_time)
        logger.info("job %s: %s (run %s)", action.name,
                    "KILL after the grace period" if action.force else "TERM", run.run_id)
        if action.force:
            return self.procs.kill(handle, run.run_id)
        return self.procs.terminate(handle, run.run_id)

    def sweep(self, run_ids: Collection[str]) -> None:
        if run_ids:
            self.procs.sweep(run_ids)

    # --- exits and adoption ---------------------------------------------------------

    def poll(self, running: Iterable[tuple[str, Run]], now: float) -> list[Observed]:
        self._get_ready(now)
        runs = list(running)
        by_run = {run.run_id: name for name, run in runs}
        seen: list[Observed] = []
        ended = set()
        for run_id, child in list(self._children.items()):
            code = child.poll()  # the waiter thread only wakes the loop: polling is the truth
            if code is None:
                continue
            del self._children[run_id]
            ended.add(run_id)
            recorded = self.procs.read_exit(self.exit_path(run_id))
            name = by_run.get(run_id)
            if name is not None:
                seen.append(Observed(name, Exited(recorded if recorded is not None else code,
                                                  now)))
        if now >= self._next_adopted_poll:
            self._next_adopted_poll = now + ADOPTED_POLL
            others = [(n, r) for n, r in runs
                      if r.run_id not in self._children and r.run_id not in ended]
            seen.extend(self.adopt(others, now))
        self._trimmer.only(self.output_path(r.run_id) for _, r in runs if r.run_id not in ended)
        return seen

    def adopt(self, running: Iterable[tuple[str, Run]], now: float) -> list[Observed]:
        seen = []
        for name, run in running:
            event = self._check_adopted(name, run, now)
            if event is not None:
                seen.append(event)
        return seen

    def _check_adopted(self, name: str, run: Run, now: float) -> Observed | None:
        """A run this daemon did not spawn: alive (same pid and start time), exited, or lost."""
        if run.pid is None:  # the daemon died between the spawn and recording the pid
            found = self.procs.find(run.run_id)
            if found is not None:
                logger.info("job %s: found run %s (pid %d) started just before the daemon "
                            "stopped", name, run.run_id, found.pid)
                return Observed(name, Spawned(found.pid, found.create_time))
        elif run.create_time is not None and self.procs.alive(
                process.Handle(run.pid, run.create_time)):
            return None
        code = self.procs.read_exit(self.exit_path(run.run_id))
        if code is None and run.pid is None:
            return Observed(name, Vanished(now, VANISHED_WHILE_STARTING))
        return Observed(name, Exited(code, now) if code is not None else Vanished(now))

    def next_due(self, running: Iterable[tuple[str, Run]]) -> float | None:
        adopted = any(run.run_id not in self._children for _, run in running)
        due = [self._next_adopted_poll] if adopted else []
        if self._parent is not None:
            due.append(self._parent_since + PARENT_AGE)
        return min(due, default=None)


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
