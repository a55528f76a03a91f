"""A kill that could not be made: said in the status, tried again with back-off (pure).

The executor says after every TERM or KILL whether it was carried out (``Signalled``). When
every mechanism failed (Windows: the Job Object, taskkill and the process table; POSIX: the
signal itself), the job's reason says "could not kill it: WHY" and a KILL is tried again after
1 s, 2 s, 4 s … up to a minute, until one works or the job ends. A job that ends while its kill
had failed is never recorded as killed: it ended by itself, and its status says what it exited
with and that the kill had failed.
"""

from __future__ import annotations

from dataclasses import replace

from filerexec.jobstate import Job, Kill, Result, Signal, Signalled, Tick, Timing
from filerexec.schedule import duration

FIRST_RETRY = 1.0  # seconds after the first failure
LAST_RETRY = 60.0  # the longest wait between two attempts


def retry_delay(failures: int) -> float:
    """How long after its ``failures``-th failed attempt a kill is tried again."""
    return float(min(FIRST_RETRY * 2 ** (failures - 1), LAST_RETRY))


def stopping_reason(kill: Kill) -> str:
    """The reason a job being killed shows."""
    if kill.failed is None:
        return f"stopping: {kill.reason}"
    return (f"stopping: {kill.reason}; could not kill it: {kill.failed}; trying again in "
            f"{duration(retry_delay(kill.failures))}")


def signalled(job: Job, event: object, timing: Timing) -> Result:
    """The outcome of a TERM or KILL: a failure is shown and retried, a success clears it."""
    assert isinstance(event, Signalled) and job.kill is not None
    kill = job.kill
    if event.problem is None:
        if kill.failed is None:
            return job, []
        kill = replace(kill, failed=None, failures=0, retry_at=None)
    else:
        failures = kill.failures + 1
        kill = replace(kill, failed=event.problem, failures=failures,
                       retry_at=event.now + retry_delay(failures))
    return replace(job, kill=kill, reason=stopping_reason(kill)), []


def retry_due(job: Job) -> float | None:
    """When the failed kill of ``job`` is tried again; None if none failed."""
    return None if job.kill is None else job.kill.retry_at


def retry(job: Job, event: Tick) -> Result:
    """A Tick of a stopping job: KILL again if its failed kill's time has come."""
    kill, run, due = job.kill, job.run, retry_due(job)
    if kill is None or run is None or due is None or event.now < due:
        return job, []
    job = replace(job, kill=replace(kill, retry_at=None, escalated=True))
    return job, [Signal(job.name, run, force=True)]


def unkilled(kill: Kill | None, outcome: str) -> str | None:
    """The reason of a run that ended while its kill had failed (None: it was killed)."""
    if kill is None or kill.failed is None:
        return None
    return f"{outcome}, by itself: it could not be killed ({kill.reason}): {kill.failed}"
