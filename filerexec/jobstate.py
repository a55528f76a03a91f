"""The per-job state machine's data: states, the job record, events and actions.

Plain frozen records, no behaviour beyond reading themselves: machine.py holds the
one transition table over them, the ledger stores them, the renderers show them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeAlias

from filerexec.config import DEFAULTS
from filerexec.spec import JobSpec


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    STOPPED = "stopped"
    EXPIRED = "expired"
    INVALID = "invalid"
    REJECTED = "rejected"
    LOST = "lost"
    SCHEDULED = "scheduled"  # a scheduled job waiting for its first slot
    SKIPPED = "skipped"  # not run: a job it runs ``after:`` failed or was killed


class Readiness(StrEnum):
    """What the reconciler made of the file under the job's name."""

    VALID = "valid"
    INVALID = "invalid"  # unreadable or fails validation
    REJECTED = "rejected"  # signature or policy refused it
    NOT_READY = "not_ready"  # cannot be read yet (permissions, placeholder, still growing)
    OTHER_HOST = "other_host"  # valid, but addressed to other hosts


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a job file as read by the reconciler."""

    readiness: Readiness
    spec: JobSpec | None = None  # set when VALID
    problem: str | None = None  # the error, rejection or not-ready reason
    mtime: float | None = None  # the file's mtime as synced
    seen: float | None = None  # when this host first saw this version

    @property
    def digest(self) -> str | None:
        return self.spec.digest if self.spec else None


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a job: created when the machine launches it."""

    run_id: str
    digest: str
    started: float
    timeout: float | None = None
    pid: int | None = None
    create_time: float | None = None  # the process start time, so a reused pid is never adopted
    finished: float | None = None
    exit_code: int | None = None
    outcome: State | None = None  # SUCCEEDED / FAILED / KILLED / LOST once finished
    reason: str | None = None
    external: str | None = None  # a scheduler's id of the run (the Slurm job id)
    waiting: str | None = None  # why the scheduler has not started it yet (shown as pending)
    began: float | None = None  # when the scheduler started it (its timeout counts from then)
    slot: float | None = None  # the schedule's slot this run is (every:, cron:)
    # Whom its end is told: the job file's `notify:` names and `notify_on:` at launch, kept
    # for when the file is gone (deleting it kills the run). None: the host's defaults.
    notify: tuple[str, ...] | None = None
    notify_on: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Kill:
    """A kill in progress: TERM sent at ``since``; KILL once the grace has passed.

    ``failed`` is why the last attempt could not kill the job (every mechanism failed); it is
    tried again at ``retry_at``, the delay doubling with each of its ``failures``.
    """

    reason: str
    since: float
    escalated: bool = False
    failed: str | None = None
    failures: int = 0
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    state: State = State.PENDING
    reason: str = ""
    version: Version | None = None  # the file as last read; None while absent
    run: Run | None = None  # the running or the last run
    queued: Version | None = None  # a run request waiting behind the running version
    started_digest: str | None = None  # last digest started under this name
    last_operation: str | None = None  # last operation seen (stop→start is a request)
    kill: Kill | None = None
    missing_since: float | None = None
    deleted: float | None = None
    runs: int = 0
    attempt: int = 1  # which attempt of its version the running or last run is (retry:)
    retry_at: float | None = None  # when the next attempt is due, after a failed one
    next_run: float | None = None  # a scheduled job's next slot
    slot: float | None = None  # the slot a pending run is for; while one runs, the one behind it
    after_wait: bool = False  # its run request waits for its ``after:`` jobs (after.py)

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    @property
    def due(self) -> bool:
        """Waiting only for a free slot: the daemon may launch it."""
        return (
            self.state is State.PENDING
            and self.version is not None
            and self.version.readiness is Readiness.VALID
            and self.retry_at is None
            and not self.after_wait
        )


@dataclass(frozen=True, slots=True)
class Timing:
    """Grace periods, in seconds (configurable by the host's owner)."""

    delete_grace: float = DEFAULTS["delete_grace"]
    kill_grace: float = DEFAULTS["kill_grace"]


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRead:
    """The file under the job's name was (re)read: it is new or its stat changed."""

    version: Version
    now: float


@dataclass(frozen=True, slots=True)
class FileMissing:
    """A listing did not find the job's file (confirmed only after a grace)."""

    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: grace periods, timeouts and deadlines are checked."""

    now: float


@dataclass(frozen=True, slots=True)
class Launch:
    """The daemon grants a due job a slot."""

    run_id: str
    now: float


@dataclass(frozen=True, slots=True)
class Spawned:
    pid: int
    create_time: float


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    message: str
    now: float


@dataclass(frozen=True, slots=True)
class Exited:
    code: int
    now: float
    killed: str | None = None  # the executor ended it (a scheduler's time limit, a cancel)


@dataclass(frozen=True, slots=True)
class Scheduled:
    """What a scheduler says of a run: its id (None: not known yet), why it waits (None: it
    runs)."""

    external: str | None
    waiting: str | None
    now: float


@dataclass(frozen=True, slots=True)
class Vanished:
    """The process is gone and no exit code survived."""

    now: float
    reason: str = "its process vanished while no daemon was watching; it is not run again"


@dataclass(frozen=True, slots=True)
class Signalled:
    """A TERM or KILL was carried out (``problem`` None) or could not be (why not)."""

    now: float
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """The host starts nothing new for now (``reason``: a drain, safe mode), or again (None)."""

    reason: str | None


@dataclass(frozen=True, slots=True)
class SlotCame:
    """A scheduled job's next slot has come (the machine raises it on a Tick)."""

    now: float


class Verdict(StrEnum):
    """What a job's ``after:`` jobs allow (after.py decides, from the job table)."""

    READY = "ready"  # each has succeeded in its current version: it may run
    WAITING = "waiting"  # one has not succeeded yet, or does not exist (yet): pending
    FAILED = "failed"  # one failed or was killed: skipped, until it succeeds
    CYCLE = "cycle"  # the jobs name each other in a circle: invalid


@dataclass(frozen=True, slots=True)
class AfterChecked:
    """What the job's ``after:`` jobs allow now, and the sentence that says why."""

    verdict: Verdict
    reason: str
    now: float


Event: TypeAlias = (
    FileRead | FileMissing | Tick | Launch | Spawned | SpawnFailed | Exited | Vanished | Held
    | Scheduled
    | SlotCame
    | AfterChecked
    | Signalled
)


@dataclass(frozen=True, slots=True)
class Observed:
    """An event for one job, as the reconciler or a runner saw it (the job table applies it)."""

    name: str
    event: Event


# --- actions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Spawn ``spec`` as run ``run_id`` (the ledger has committed it first)."""

    name: str
    run_id: str
    spec: JobSpec


@dataclass(frozen=True, slots=True)
class Signal:
    """Signal the run's whole process tree: TERM first, KILL after the grace."""

    name: str
    run: Run
    force: bool


@dataclass(frozen=True, slots=True)
class Sweep:
    """Kill whatever still carries a finished run's mark (escapees) once its file is gone."""

    name: str
    run_id: str


Action: TypeAlias = Start | Signal | Sweep
Result: TypeAlias = tuple[Job, list[Action]]


def expired(version: Version, now: float) -> bool:
    """Its ``not_after`` time has passed: it is never started."""
    deadline = version.spec.not_after if version.spec else None
    return deadline is not None and deadline.timestamp() < now


def expire(job: Job, v: Version) -> Job:
    assert v.spec is not None and v.spec.not_after is not None
    when = v.spec.not_after.isoformat()
    reason = f"not run: its not_after time {when} had passed"
    return replace(job, state=State.EXPIRED, reason=reason, after_wait=False)


def begin_kill(job: Job, now: float, reason: str) -> Result:
    """TERM the running job's process tree, for ``reason``; KILL follows after the grace."""
    assert job.run is not None
    run = job.run
    job = replace(job, kill=Kill(reason, since=now), reason=f"stopping: {reason}")
    return job, [Signal(job.name, run, force=False)]
