"""The Slurm executor (DESIGN §11): each run is one ``sbatch`` submission.

`SlurmRunner` has the runner's interface (runner.py) and never blocks the daemon's
loop: every Slurm command runs on its worker thread (slurmcmd.py, each with a
timeout), which reports what it learnt as events the loop collects at ``poll``.

- **Never twice**: the ledger holds "starting" before the submission. A run is
  submitted once; if sbatch could not reach the controller (it may still have taken
  the job), the worker first asks for the run's name (``filerexec-RUNID``) and
  submits again only when Slurm answers that it has no such job. After a restart, a
  run with no recorded Slurm id is looked up by that name: found → adopted, not found
  → ``lost`` (it is never submitted again).
- **Output and exit code**: ``--output`` is the run's raw output file in the state
  directory (which the compute nodes must share, as a home directory is); the batch
  script writes the exit code beside it. While Slurm still knows the job its state
  and ``ExitCode`` come from ``scontrol``; after that, from that file.
- **Kills**: as for a local job: TERM to every process of the job (``scancel --full
  --signal=TERM``; the batch script outlives it, so the commands have the grace to clean
  up), then KILL after the grace; a job still queued is cancelled (slurmcmd.cancel).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from filerexec import process, slurmcmd
from filerexec.machine import Exited, Observed, Run, Scheduled, Signal, SpawnFailed, Start, Vanished
from filerexec.runner import VANISHED_WHILE_STARTING, RunFiles, new_run_id
from filerexec.slurmspec import (
    NAME_PREFIX,
    JobInfo,
    SlurmConfig,
    batch_script,
    ended_reason,
    sbatch_args,
    waiting_reason,
)

logger = logging.getLogger(__name__)

UNREACHABLE = "waiting for Slurm ({})"  # its controller down, or its commands not found
SUBMITTING = "being submitted to Slurm"


@dataclass
class _Tracked:
    """One run the worker looks after."""

    name: str  # the filerexec job
    run_id: str
    start: Start | None = None  # still to submit
    job_id: str | None = None  # Slurm's id, once known
    maybe_submitted: bool = False  # an sbatch may have reached the controller: look first
    cancel: bool | None = None  # a cancel to send: False TERM, True KILL
    waiting: str | None = None  # as last reported
    listed: bool = True  # Slurm listed it once: no longer listed means it forgot it


class SlurmRunner(RunFiles):
    """Runs jobs as Slurm batch jobs through a worker thread."""

    def __init__(self, runs_dir: Path, host: str, wake: Callable[[], None],
                 config: SlurmConfig) -> None:
        self.runs_dir = runs_dir
        self.host = host
        self.config = config
        self._wake = wake
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}  # run id → what the worker does for it
        self._events: list[Observed] = []
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the runner's interface (called on the daemon's loop) ----------------------

    def open(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._work, daemon=True, name="slurm")
        self._thread.start()

    def new_run_id(self, now: float) -> str:
        return new_run_id(now)

    def close(self) -> None:
        pass  # nothing is started ahead: a submission is one sbatch

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._tracked)

    def launch(self, starts: Sequence[Start], now: float) -> list[Observed]:
        with self._lock:
            for start in starts:
                self._tracked[start.run_id] = _Tracked(start.name, start.run_id, start=start,
                                                       waiting=SUBMITTING)
        self._kick.set()  # pending until Slurm has it: its timeout has not begun
        return [Observed(s.name, Scheduled(None, SUBMITTING, now)) for s in starts]

    def signal(self, action: Signal) -> None:
        with self._lock:
            tracked = self._tracked.get(action.run.run_id)
            if tracked is None:
                return
            if tracked.start is not None and not tracked.maybe_submitted:
                # Not submitted yet: it never will be.
                del self._tracked[action.run.run_id]
                self._events.append(Observed(tracked.name, Vanished(0.0, "cancelled")))
                self._wake()
                return
            tracked.cancel = action.force or bool(tracked.cancel)
        self._kick.set()

    def poll(self, running: Iterable[tuple[str, Run]], now: float) -> list[Observed]:
        with self._lock:
            events, self._events = self._events, []
        return [Observed(e.name, _at(e.event, now)) for e in events]

    def adopt(self, running: Iterable[tuple[str, Run]], now: float) -> list[Observed]:
        with self._lock:
            for name, run in running:
                self._tracked[run.run_id] = _Tracked(name, run.run_id, job_id=run.external,
                                                     maybe_submitted=run.external is None,
                                                     waiting=run.waiting)
        self._kick.set()
        return []

    def sweep(self, run_ids: Collection[str]) -> None:
        """Nothing to do: Slurm's process tracking ends a job's whole tree."""

    def next_due(self, running: Iterable[tuple[str, Run]]) -> float | None:
        return None  # the worker wakes the loop when it has news

    # --- the worker thread ---------------------------------------------------------

    def _work(self) -> None:
        while True:
            self._kick.wait(self.config.poll)
            self._kick.clear()
            try:
                self._round()
            except Exception:  # a bug here must not stop every Slurm job for good
                logger.exception("Slurm worker round failed; trying again")

    def _round(self) -> None:
        with self._lock:
            tracked = list(self._tracked.values())
        if not tracked:
            return
        try:
            known = slurmcmd.jobs()
        except slurmcmd.Unreachable as e:
            self._unreachable(tracked, str(e))
            return
        except slurmcmd.Refused as e:
            logger.warning("scontrol: %s", e)
            return
        by_name = {info.name: info for info in known.values()}
        for t in tracked:
            if t.job_id is None and (found := by_name.get(NAME_PREFIX + t.run_id)):
                self._found(t, found)
            if t.job_id is None:
                self._no_job_id(t)  # submitted now: followed from the next round on
            elif (info := known.get(t.job_id)) is not None or t.listed:
                t.listed = True
                self._cancel(t, info)
                self._follow(t, info)

    def _found(self, t: _Tracked, info: JobInfo) -> None:
        """A submission whose id was never recorded (sbatch's answer lost, or the daemon
        died before recording it): it is this run; its id goes into the ledger now."""
        logger.info("job %s: found Slurm job %s by its name", t.name, info.job_id)
        t.job_id, t.start = info.job_id, None
        t.waiting = waiting_reason(info) if info.queued else None
        self._push(Observed(t.name, Scheduled(t.job_id, t.waiting, 0.0)))

    def _unreachable(self, tracked: list[_Tracked], why: str) -> None:
        for t in tracked:
            if t.job_id is None:
                self._report(t, UNREACHABLE.format(why))

    def _no_job_id(self, t: _Tracked) -> None:
        """Slurm has no job of this run's name: submit it, or (after a restart) it ran and
        Slurm has forgotten it (its exit file says how it ended), or it is lost."""
        if t.start is None:
            code = process.read_exit(self.exit_path(t.run_id))
            self._end(t, Exited(code, 0.0) if code is not None
                      else Vanished(0.0, VANISHED_WHILE_STARTING))
            return
        if t.cancel is not None:
            self._end(t, Vanished(0.0, "cancelled before Slurm had it"))
            return
        self._submit(t, t.start)

    def _submit(self, t: _Tracked, start: Start) -> None:
        spec = start.spec
        env = {**dict(spec.env), "FILEREXEC_JOB": start.name, "FILEREXEC_HOST": self.host,
               process.RUN_ID_VAR: start.run_id}
        cwd = str(Path(spec.cwd or "~").expanduser())
        script = batch_script(process.script(spec.commands, spec.shell),
                              str(self.exit_path(start.run_id)), env, spec.stdout, spec.stderr)
        args = sbatch_args(NAME_PREFIX + start.run_id, str(self.output_path(start.run_id)), cwd,
                           self.config, dict(spec.slurm), spec.timeout)
        with self._lock:  # the loop may have cancelled it meanwhile (signal): then never
            if self._tracked.get(t.run_id) is not t:
                return
            t.maybe_submitted = True  # from here a cancel is an scancel, once Slurm has it
        try:
            job_id = slurmcmd.submit(args, script)
        except slurmcmd.Unreachable as e:
            logger.warning("job %s: sbatch: %s (asking for it by name before trying again)",
                           start.name, e)
            self._report(t, UNREACHABLE.format(e))
            return
        except slurmcmd.Refused as e:
            logger.warning("job %s: sbatch refused it: %s", start.name, e)
            self._end(t, SpawnFailed(f"sbatch: {e}", 0.0))
            return
        logger.info("job %s submitted as Slurm job %s (run %s)", start.name, job_id, t.run_id)
        t.job_id, t.start, t.listed = job_id, None, False
        self._report(t, waiting_reason(JobInfo(job_id, "", "PENDING")))

    def _cancel(self, t: _Tracked, info: JobInfo | None) -> None:
        if t.cancel is None or t.job_id is None:
            return
        try:
            slurmcmd.cancel(t.job_id, force=t.cancel, queued=info is not None and info.queued)
        except (slurmcmd.Unreachable, slurmcmd.Refused) as e:
            logger.warning("job %s: scancel %s: %s (trying again)", t.name, t.job_id, e)
            return
        t.cancel = None

    def _follow(self, t: _Tracked, info: JobInfo | None) -> None:
        assert t.job_id is not None
        if info is None:  # Slurm forgot it (MinJobAge): the batch script's exit file
            code = process.read_exit(self.exit_path(t.run_id))
            self._end(t, Exited(code, 0.0) if code is not None else Vanished(0.0))
        elif info.ended:
            self._end(t, Exited(info.code, 0.0, ended_reason(info.state)))
        else:
            self._report(t, waiting_reason(info) if info.queued else None)

    def _report(self, t: _Tracked, waiting: str | None) -> None:
        if waiting == t.waiting and t.job_id is not None:
            return
        t.waiting = waiting
        self._push(Observed(t.name, Scheduled(t.job_id, waiting, 0.0)))

    def _end(self, t: _Tracked, event: Exited | Vanished | SpawnFailed) -> None:
        with self._lock:
            self._tracked.pop(t.run_id, None)
        self._push(Observed(t.name, event))

    def _push(self, seen: Observed) -> None:
        with self._lock:
            self._events.append(seen)
        self._wake()


def _at(event: object, now: float) -> Exited | Vanished | SpawnFailed | Scheduled:
    """The worker's events carry no time: they happen when the loop applies them."""
    if isinstance(event, Exited):
        return Exited(event.code, now, event.killed)
    if isinstance(event, Vanished):
        return Vanished(now, event.reason)
    if isinstance(event, SpawnFailed):
        return SpawnFailed(event.message, now)
    assert isinstance(event, Scheduled)
    return Scheduled(event.external, event.waiting, now)
