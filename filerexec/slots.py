"""A scheduled job's slots in the state machine (DESIGN §10): the ``SlotCame`` rows.

Pure, like machine.py, whose table holds these handlers: a slot that comes while
nothing runs makes the job due (its slot recorded with the run, so the ledger's
"starting" is per slot and no restart runs a slot twice); one that comes while
the job runs follows ``overlap:`` (a slot that queues behind the run, or replaces it, is
kept in the job's ``slot``); missed slots follow ``catch_up:``.
"""

from __future__ import annotations

from dataclasses import replace

from filerexec.jobstate import Event, Job, Result, SlotCame, State, Timing, Version, begin_kill
from filerexec.schedule import Schedule

FREE_SLOT = "waiting for a free slot"  # a due job's reason
FIRST_SLOT = "waiting for its first slot"


def _schedule(job: Job) -> Schedule | None:
    spec = job.version.spec if job.version else None
    return spec.schedule if spec is not None and spec.operation == "start" else None


def request(job: Job, v: Version, now: float) -> Job:
    """A new version (or stop→start) of a scheduled job: ``every`` runs at once, ``cron`` waits."""
    sched = v.spec.schedule if v.spec else None
    if sched is None:
        return replace(job, state=State.PENDING, reason=FREE_SLOT, next_run=None, slot=None)
    if sched.every is not None:
        return replace(job, state=State.PENDING, reason=FREE_SLOT, slot=now,
                       next_run=now + sched.every)
    # Counted as started, so that a re-read (a touch, a restart) keeps its slots.
    return replace(job, state=State.SCHEDULED, reason=FIRST_SLOT, slot=None,
                   next_run=sched.next_after(now, now), started_digest=v.digest,
                   last_operation="start")


def resting(job: Job, next_run: float | None, now: float) -> float | None:
    """The next slot of a job re-read unchanged: as it was, or from now if it had none."""
    sched = _schedule(job)
    if sched is None:
        return None
    return next_run if next_run is not None else sched.next_after(now, now)


def _came(job: Job, event: Event) -> tuple[Schedule | None, float, float | None]:
    assert isinstance(event, SlotCame)
    sched, now = _schedule(job), event.now
    nxt = None if sched is None or job.next_run is None else sched.next_after(now, job.next_run)
    return sched, now, nxt


def slot_idle(job: Job, event: Event, timing: Timing) -> Result:
    """Nothing runs: the slot makes the job due, unless it was missed and catch_up is none."""
    sched, now, nxt = _came(job, event)
    if sched is None or job.next_run is None:
        return replace(job, next_run=None), []
    slot = sched.due_slot(job.next_run, now, job.next_run)
    if slot is None:
        reason = "catch_up: none passed the slots missed while the host was down"
        return replace(job, next_run=nxt, reason=reason), []
    return replace(job, state=State.PENDING, reason=FREE_SLOT, slot=slot, next_run=nxt,
                   attempt=1, retry_at=None), []


def slot_waiting(job: Job, event: Event, timing: Timing) -> Result:
    """Still waiting to run: later slots fold into the run that waits."""
    _, _, nxt = _came(job, event)
    return replace(job, next_run=nxt), []


def slot_running(job: Job, event: Event, timing: Timing) -> Result:
    """The last run still runs: ``overlap:`` skip passes the slot, queue waits, kill replaces."""
    sched, now, nxt = _came(job, event)
    came, job = job.next_run, replace(job, next_run=nxt)
    if sched is None:
        return job, []
    if sched.overlap == "skip":
        return replace(job, reason="running; overlap: skip passed a slot"), []
    # The slot that came waits in the job's record, committed before anything is signalled:
    # a crash or a restart neither loses it nor runs it twice.
    job = replace(job, slot=came)
    if sched.overlap == "kill":
        return begin_kill(job, now, "overlap: kill: the next slot came")
    return replace(job, reason="running; the next slot waits (overlap: queue)"), []
