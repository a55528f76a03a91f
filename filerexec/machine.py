"""The per-job state machine: states, events, actions and one transition table.

Pure: no I/O, no clock (every event carries ``now``), no process handles beyond
plain data. The daemon feeds it what the reconciler and the process module saw
and carries out the actions it returns; the ledger stores the resulting `Job`.

When a job runs (DESIGN §3): only on a *run request* — a valid ``operation:
start`` version whose digest differs from the last one started under that
name, or a stop→start change. Nothing else (restart, rescan, touch, identical
re-delivery) starts anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from typing import TypeAlias

from filerexec import kills
from filerexec.after import checked, gate
from filerexec.jobstate import (
    Action,
    AfterChecked,
    Event,
    Exited,
    FileMissing,
    FileRead,
    Held,
    Job,
    Kill,
    Launch,
    Observed,
    Readiness,
    Result,
    Run,
    Scheduled,
    Signal,
    Signalled,
    SlotCame,
    Spawned,
    SpawnFailed,
    Start,
    State,
    Sweep,
    Tick,
    Timing,
    Vanished,
    Verdict,
    Version,
    begin_kill,
    expire,
    expired,
)
from filerexec.retry import attempt_text, retry_delay
from filerexec.schedule import duration as _duration
from filerexec.slots import (
    FIRST_SLOT,
    FREE_SLOT,
    request,
    resting,
    slot_idle,
    slot_running,
    slot_waiting,
)

HELD = "waiting: "  # heads the reason of a due job the host holds back (a drain, safe mode)

__all__ = [
    "FREE_SLOT", "HELD", "TABLE", "Action", "AfterChecked", "Event", "Exited", "FileMissing",
    "FileRead",
    "Handler", "Held", "Job", "Kill", "Launch", "Observed", "Phase", "Readiness", "Result",
    "Run", "Scheduled", "Signal", "Signalled", "SpawnFailed", "Spawned", "Start", "State",
    "Sweep", "Tick",
    "Timing", "Vanished", "Verdict", "Version", "next_due", "phase", "transition",
]


# --- the table --------------------------------------------------------------


class Phase(StrEnum):
    IDLE = "idle"  # no process: a finished, refused or never-started job
    WAITING = "waiting"  # pending: for a slot, or for the file to become readable
    RUNNING = "running"
    STOPPING = "stopping"  # running, kill sent


def phase(job: Job) -> Phase:
    if job.state is State.RUNNING:
        return Phase.STOPPING if job.kill else Phase.RUNNING
    return Phase.WAITING if job.state is State.PENDING else Phase.IDLE


Handler: TypeAlias = Callable[[Job, Event, Timing], Result]


_TIMING = Timing()


def transition(job: Job, event: Event, timing: Timing = _TIMING) -> Result:
    """Apply one event to one job: the new job and the actions to carry out."""
    before = job
    handler = TABLE.get((phase(job), type(event)), _ignore)
    job, actions = handler(job, event, timing)
    if isinstance(event, Tick) and _passed(job.next_run, event.now):
        job, more = TABLE[(phase(job), SlotCame)](job, SlotCame(event.now), timing)
        actions = [*actions, *more]
    return gate(before, job), actions  # a new request of a version with after: waits


def _ignore(job: Job, event: Event, timing: Timing) -> Result:
    return job, []


def _is_request(job: Job, version: Version) -> bool:
    spec = version.spec
    if version.readiness is not Readiness.VALID or spec is None or spec.operation != "start":
        return False
    return spec.digest != job.started_digest or job.last_operation == "stop"


def _resting_state(job: Job) -> tuple[State, str]:
    """The state a job without a run request shows: its last run's outcome."""
    if job.run and job.run.outcome:
        return job.run.outcome, job.run.reason or ""
    if job.state is State.SCHEDULED:
        return State.SCHEDULED, FIRST_SLOT
    return State.STOPPED, "not started"


def _read_idle(job: Job, event: Event, timing: Timing) -> Result:
    """A version arrives while nothing runs: decide whether it is a run request."""
    assert isinstance(event, FileRead)
    v, now = event.version, event.now
    # A pending request stays one when the same version is read again (a touch), and
    # one waiting for its after: jobs keeps what their last check said.
    still_due = (job.due or job.after_wait) and job.version is not None \
        and job.version.digest == v.digest
    # Waiting to retry this version: a re-read (a touch, a restart) keeps it waiting.
    retrying = job.state is State.PENDING and job.attempt > 1 and job.run is not None \
        and job.run.digest == v.digest
    retry_at, next_run = job.retry_at, job.next_run
    job = replace(job, version=v, missing_since=None, deleted=None, queued=None, retry_at=None,
                  next_run=None)
    if v.readiness is Readiness.OTHER_HOST:
        return _gone(job, now, "the job is now addressed to other hosts"), []
    if v.readiness is Readiness.NOT_READY:
        return replace(job, state=State.PENDING, reason=v.problem or "not readable yet"), []
    if v.readiness is Readiness.INVALID:
        return replace(job, state=State.INVALID, reason=v.problem or "invalid"), []
    if v.readiness is Readiness.REJECTED:
        return replace(job, state=State.REJECTED, reason=v.problem or "rejected"), []
    assert v.spec is not None
    if v.spec.operation == "stop":
        job = replace(job, state=State.STOPPED, reason="operation: stop", last_operation="stop")
        return job, []
    if retrying:
        return replace(job, retry_at=retry_at, next_run=resting(job, next_run, now)), []
    if still_due or _is_request(job, v):
        # last_operation stays as it was until the launch: a stop→start request
        # must survive an invalid edit or a restart before it runs.
        if expired(v, now):
            return expire(job, v), []
        if still_due:
            if not job.after_wait:
                job = replace(job, state=State.PENDING, reason=FREE_SLOT)
            return replace(job, next_run=resting(job, next_run, now)), []
        return request(replace(job, attempt=1), v, now), []
    state, reason = _resting_state(job)
    job = replace(job, state=state, reason=reason, last_operation="start")
    return replace(job, next_run=resting(job, next_run, now)), []


def _read_running(job: Job, event: Event, timing: Timing) -> Result:
    """A version arrives while the job runs: never interrupt, except operation: stop."""
    assert isinstance(event, FileRead) and job.run is not None
    v, now, running_digest = event.version, event.now, job.run.digest
    job = replace(job, version=v, missing_since=None, deleted=None)
    if v.readiness is Readiness.OTHER_HOST:
        return begin_kill(job, now, "the job is now addressed to other hosts")
    if v.readiness is not Readiness.VALID or v.spec is None:
        # An invalid or unreadable edit never kills: show it beside the running state.
        return replace(job, reason=f"running; the edited file is not usable: {v.problem}"), []
    if v.spec.operation == "stop":
        job = replace(job, last_operation="stop", queued=None, next_run=None, slot=None)
        return begin_kill(job, now, "stopped by operation: stop")
    queued = v if _is_request(job, v) and v.digest != running_digest else None
    job = replace(job, queued=queued, last_operation="start")
    return replace(job, reason="running; an edited version waits" if queued else "running"), []


def _read_stopping(job: Job, event: Event, timing: Timing) -> Result:
    """A version arrives while a kill is under way: remember it for afterwards."""
    assert isinstance(event, FileRead)
    v = event.version
    if job.deleted is not None:
        # Dropped again after its deletion: a new job with no history.
        job = replace(job, started_digest=None, last_operation=None)
    job = replace(job, version=v, missing_since=None, deleted=None)
    if v.readiness is not Readiness.VALID or v.spec is None:
        return job, []  # an unusable edit neither kills nor cancels what is queued
    if v.spec.operation == "stop":
        return replace(job, queued=None, last_operation="stop", next_run=None, slot=None), []
    return replace(job, queued=v if _is_request(job, v) else None), []


def _missing(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, FileMissing)
    if job.deleted is not None or job.missing_since is not None:
        return job, []
    return replace(job, missing_since=event.now), []


def _tick_idle(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Tick)
    if _deletion_confirmed(job, event.now, timing):
        return _gone(job, event.now, None), _sweep(job)
    return job, []


def _tick_waiting(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Tick)
    if _deletion_confirmed(job, event.now, timing):
        return _gone(job, event.now, "job file deleted before it could start"), _sweep(job)
    if job.version and _passed(_expiry_due(job), event.now):
        return expire(job, job.version), []
    if _passed(job.retry_at, event.now):
        return replace(job, retry_at=None, reason="waiting for a free slot to retry"), []
    return job, []


def _tick_running(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Tick) and job.run is not None
    now, run = event.now, job.run
    if _deletion_confirmed(job, now, timing):
        job = replace(job, deleted=now, version=None, queued=None, missing_since=None,
                      next_run=None, slot=None)
        return begin_kill(job, now, "job file deleted")
    if run.timeout is not None and _passed(_timeout_due(job), now):
        return begin_kill(job, now, f"timeout: ran longer than {_duration(run.timeout)}")
    return job, []


def _tick_stopping(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Tick) and job.kill is not None and job.run is not None
    now, kill, run = event.now, job.kill, job.run
    if _deletion_confirmed(job, now, timing):
        job = replace(job, deleted=now, version=None, queued=None, missing_since=None,
                      next_run=None, slot=None)
    if _passed(_escalation_due(job, timing), now):
        job = replace(job, kill=replace(kill, escalated=True))
        return job, [Signal(job.name, run, force=True)]
    return kills.retry(job, event)


# --- timers: when a Tick changes a job (the only copy of these rules) -----------


def _deletion_due(job: Job, timing: Timing) -> float | None:
    """A missing file counts as deleted once it stayed absent for the grace."""
    return None if job.missing_since is None else job.missing_since + timing.delete_grace


def _escalation_due(job: Job, timing: Timing) -> float | None:
    """TERM was sent: KILL once the kill grace has passed."""
    kill = job.kill
    return None if kill is None or kill.escalated else kill.since + timing.kill_grace


def _timeout_due(job: Job) -> float | None:
    run = job.run
    if not job.running or run is None or run.timeout is None or run.waiting is not None:
        return None  # a run a scheduler holds in its queue has not begun to use its time
    return (run.began or run.started) + run.timeout


def _expiry_due(job: Job) -> float | None:
    """A job waiting for a slot expires at its not_after time."""
    spec = job.version.spec if job.version else None
    waits = job.due or (job.after_wait and job.state is State.PENDING and job.retry_at is None)
    if job.running or not waits or spec is None or spec.not_after is None:
        return None
    return spec.not_after.timestamp()


def next_due(job: Job, timing: Timing) -> float | None:
    """When the loop must next give ``job`` a Tick; None if no timer of its is set.

    The daemon asks this rather than knowing the rules: a timer added here wakes the
    loop with no change elsewhere. A time already past means "tick it now". It depends on
    the job alone, so the job table keeps it with the job (jobtable.py).
    """
    times = (_deletion_due(job, timing), _escalation_due(job, timing), kills.retry_due(job),
             _timeout_due(job),
             _expiry_due(job), job.retry_at if job.state is State.PENDING else None,
             job.next_run)
    return min((t for t in times if t is not None), default=None)


def _passed(due: float | None, now: float) -> bool:
    return due is not None and now >= due


def _deletion_confirmed(job: Job, now: float, timing: Timing) -> bool:
    return _passed(_deletion_due(job, timing), now)


def _gone(job: Job, now: float, reason: str | None) -> Job:
    """The job's file is gone for this host: forget its history so a re-drop runs."""
    return replace(
        job,
        state=State.STOPPED if job.state is State.PENDING else job.state,
        reason=reason or job.reason,
        version=None,
        queued=None,
        missing_since=None,
        deleted=now,
        started_digest=None,
        last_operation=None,
        retry_at=None,
        next_run=None,
    )


def _sweep(job: Job) -> list[Action]:
    return [Sweep(job.name, job.run.run_id)] if job.run is not None else []


def _held(job: Job, event: Event, timing: Timing) -> Result:
    """A due job says why it waits: the host holds it back, or only a slot is missing."""
    assert isinstance(event, Held)
    if not job.due:
        return job, []
    if event.reason is not None:
        return replace(job, reason=HELD + event.reason), []
    return (replace(job, reason=FREE_SLOT) if job.reason.startswith(HELD) else job), []


def _launch(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Launch)
    if not job.due or job.version is None or job.version.spec is None:
        return job, []
    spec = job.version.spec
    run = Run(event.run_id, spec.digest, started=event.now, timeout=spec.timeout,
              slot=job.slot if spec.schedule else None,
              notify=None if spec.notify is None else spec.notify.names,
              notify_on=spec.notify_on)
    job = replace(
        job,
        state=State.RUNNING,
        reason="running",
        run=run,
        started_digest=spec.digest,
        last_operation="start",
        runs=job.runs + 1,
        slot=None,
    )
    return job, [Start(job.name, event.run_id, spec)]


def _spawned(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Spawned) and job.run is not None
    return replace(job, run=replace(job.run, pid=event.pid, create_time=event.create_time)), []


def _scheduled(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Scheduled) and job.run is not None
    run = job.run
    began = run.began if run.began is not None or event.waiting else event.now
    external = event.external or run.external
    return replace(job, run=replace(run, external=external, waiting=event.waiting,
                                    began=began)), []


def _spawn_failed(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, SpawnFailed)
    return _finish(job, event.now, None, State.FAILED, f"could not start: {event.message}")


def _exited(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Exited)
    code = event.code
    if job.kill and job.kill.failed is None:
        return _finish(job, event.now, code, State.KILLED, job.kill.reason)
    if event.killed is not None:
        return _finish(job, event.now, code, State.KILLED, event.killed)
    if code == 0:
        outcome, reason = State.SUCCEEDED, "exit code 0"
    else:
        outcome = State.FAILED
        reason = f"ended by signal {-code}" if code < 0 else f"exit code {code}"
    return _finish(job, event.now, code, outcome, kills.unkilled(job.kill, reason) or reason)


def _vanished(job: Job, event: Event, timing: Timing) -> Result:
    assert isinstance(event, Vanished)
    if job.kill and job.kill.failed is None:
        return _finish(job, event.now, None, State.KILLED, job.kill.reason)
    return _finish(job, event.now, None, State.LOST,
                   kills.unkilled(job.kill, event.reason) or event.reason)


def _finish(job: Job, now: float, code: int | None, outcome: State, reason: str) -> Result:
    """The run is over: record it, then start what queued behind it, or forget a deleted job."""
    assert job.run is not None
    run = replace(job.run, finished=now, exit_code=code, outcome=outcome, reason=reason,
                  waiting=None)
    job = replace(job, run=run, state=outcome, reason=reason, kill=None)
    if job.deleted is not None:
        return replace(job, started_digest=None, last_operation=None, queued=None), _sweep(job)
    if job.queued is not None:
        queued = job.queued
        job = replace(job, version=queued, queued=None, attempt=1)
        if expired(queued, now):
            return expire(job, queued), []
        return request(job, queued, now), []
    v = job.version
    if job.slot is not None and v is not None and v.readiness is Readiness.VALID \
            and v.digest == run.digest:  # overlap: queue or kill: the slot that came runs now
        return replace(job, state=State.PENDING, reason=FREE_SLOT, attempt=1), []
    return _retry(job, now, code, outcome), []


def _retry(job: Job, now: float, code: int | None, outcome: State) -> Job:
    """A failed run of the current version runs again after its delay, if ``retry:`` says so."""
    spec, run = job.version.spec if job.version else None, job.run
    if spec is None or run is None or spec.digest != run.digest or job.last_operation == "stop":
        return job
    timed_out = outcome is State.KILLED and (run.reason or "").startswith("timeout")
    if outcome is not State.FAILED and not timed_out:
        return job
    delay = retry_delay(spec.retry, job.attempt, code, timed_out)
    if delay is None:
        return job
    attempt = job.attempt + 1
    reason = f"{run.reason}; attempt {attempt_text(spec.retry, attempt)} in {_duration(delay)}"
    return replace(job, state=State.PENDING, reason=reason, attempt=attempt, retry_at=now + delay)


_P = Phase
TABLE: dict[tuple[Phase, type], Handler] = {
    (_P.IDLE, FileRead): _read_idle,
    (_P.WAITING, FileRead): _read_idle,
    (_P.RUNNING, FileRead): _read_running,
    (_P.STOPPING, FileRead): _read_stopping,
    (_P.IDLE, FileMissing): _missing,
    (_P.WAITING, FileMissing): _missing,
    (_P.RUNNING, FileMissing): _missing,
    (_P.STOPPING, FileMissing): _missing,
    (_P.IDLE, Tick): _tick_idle,
    (_P.WAITING, Tick): _tick_waiting,
    (_P.RUNNING, Tick): _tick_running,
    (_P.STOPPING, Tick): _tick_stopping,
    (_P.WAITING, Launch): _launch,
    (_P.WAITING, Held): _held,
    (_P.IDLE, SlotCame): slot_idle,
    (_P.WAITING, SlotCame): slot_waiting,
    (_P.RUNNING, SlotCame): slot_running,
    (_P.STOPPING, SlotCame): slot_waiting,
    (_P.RUNNING, Spawned): _spawned,
    (_P.STOPPING, Spawned): _spawned,
    (_P.RUNNING, Scheduled): _scheduled,
    (_P.STOPPING, Scheduled): _scheduled,
    (_P.RUNNING, SpawnFailed): _spawn_failed,
    (_P.STOPPING, SpawnFailed): _spawn_failed,
    (_P.RUNNING, Exited): _exited,
    (_P.STOPPING, Exited): _exited,
    (_P.RUNNING, Vanished): _vanished,
    (_P.STOPPING, Vanished): _vanished,
    (_P.IDLE, AfterChecked): checked,  # skipped, or invalid by a cycle: may run now
    (_P.WAITING, AfterChecked): checked,
    (_P.STOPPING, Signalled): kills.signalled,
}
