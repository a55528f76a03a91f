"""``after:`` (DESIGN §10): a job runs once the jobs it names have succeeded on this host.

Pure, like machine.py. Two halves:

- ``check(job, jobs, now)``: what the job table says of a waiting job's ``after:`` jobs,
  as an ``AfterChecked`` event (ready, waiting, failed, or a cycle). Each dependency is
  judged by its *current* version: its last run of that version succeeded (ready),
  failed, was killed or was lost with nothing coming after it (failed: the job is
  ``skipped`` until a later run of it succeeds), or anything else — not there (yet),
  pending, running, invalid, stopped — keeps the job ``pending``. A circle of jobs
  naming each other makes each of them ``invalid``, with the path of the circle.
- The machine's rows for that event (``checked``), and ``gate``: every new run request
  of a version with ``after:`` waits for a check before it may launch.

The daemon asks ``check`` right before it launches, so no request is launched unchecked;
nothing here calls back into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

from filerexec.jobstate import (
    AfterChecked,
    Event,
    Job,
    Readiness,
    Result,
    State,
    Timing,
    Verdict,
    expire,
    expired,
)
from filerexec.slots import FREE_SLOT

WAITS = frozenset({State.PENDING, State.SKIPPED, State.INVALID})  # a request waits in these
ENDED_BADLY = frozenset({State.FAILED, State.KILLED, State.LOST})


def names(job: Job) -> tuple[str, ...]:
    """The jobs a job's current version runs after (none for one that is not usable)."""
    version = job.version
    spec = version.spec if version and version.readiness is Readiness.VALID else None
    return spec.after if spec is not None else ()


def _waits_for(names_: tuple[str, ...]) -> str:
    return f"waiting for {', '.join(names_)} to succeed"


def gate(before: Job, job: Job) -> Job:
    """Close the gate on every new run request of a version with ``after:``.

    New: the job was not waiting before, or waits now for another version or slot. A
    request that was waiting already keeps what the last check said.
    """
    deps = names(job)
    waiting = bool(deps) and job.state in WAITS and job.version is not None \
        and job.version.spec is not None and job.version.spec.operation == "start"
    if not waiting:
        return replace(job, after_wait=False) if job.after_wait else job
    if before.state in WAITS and before.version is not None and job.version is not None \
            and before.version.digest == job.version.digest and before.slot == job.slot:
        return job
    if job.state is not State.PENDING or job.retry_at is not None:
        return replace(job, after_wait=True)
    return replace(job, after_wait=True, reason=_waits_for(deps))


def checked(job: Job, event: Event, timing: Timing) -> Result:
    """The machine's row: the check's verdict makes a waiting request due, pending,
    skipped or invalid."""
    assert isinstance(event, AfterChecked)
    if not names(job) or job.retry_at is not None:
        return job, []
    if job.state is not State.PENDING and not job.after_wait:
        return job, []  # at rest, and no request waits: nothing to decide
    if event.verdict is Verdict.READY:
        if not job.after_wait:
            return job, []
        assert job.version is not None
        if expired(job.version, event.now):
            return expire(job, job.version), []
        return replace(job, state=State.PENDING, reason=FREE_SLOT, after_wait=False), []
    state = {Verdict.WAITING: State.PENDING, Verdict.FAILED: State.SKIPPED,
             Verdict.CYCLE: State.INVALID}[event.verdict]
    return replace(job, state=state, reason=event.reason, after_wait=True), []


# --- the check --------------------------------------------------------------------------


def check(job: Job, jobs: Mapping[str, Job], now: float) -> AfterChecked | None:
    """What ``job``'s ``after:`` jobs allow now; None if no request of it waits for them."""
    deps = names(job)
    if not deps or job.retry_at is not None or not (job.after_wait or job.due):
        return None
    circle = cycle(job.name, jobs)
    if circle is not None:
        return AfterChecked(Verdict.CYCLE, "`after:` names a circle of jobs, so none of them "
                            f"can run first: {' → '.join(circle)}", now)
    waiting: str | None = None
    for name in deps:
        verdict, reason = standing(name, jobs.get(name))
        if verdict is Verdict.FAILED:
            return AfterChecked(verdict, reason, now)
        if verdict is Verdict.WAITING and waiting is None:
            waiting = reason
    if waiting is not None:
        return AfterChecked(Verdict.WAITING, waiting, now)
    return AfterChecked(Verdict.READY, FREE_SLOT, now)


def standing(name: str, dep: Job | None) -> tuple[Verdict, str]:
    """What one dependency allows, judged by its current version's last run."""
    run = dep.run if dep is not None else None
    if dep is None or (dep.version is None and (dep.deleted is not None or run is None)):
        return Verdict.WAITING, f"waiting for {name}, which does not exist on this host (yet)"
    # No version but not deleted: after a clean restart a finished job's file, unchanged
    # since the version it ran, is not read again (reconcile.py): it is that run's version.
    digest = dep.version.digest if dep.version is not None else run.digest if run else None
    current = run is not None and run.digest == digest and not dep.running \
        and run.outcome is not None
    if current and run is not None and run.outcome is State.SUCCEEDED:
        return Verdict.READY, ""
    if current and run is not None and run.outcome in ENDED_BADLY \
            and dep.state is not State.PENDING:
        return Verdict.FAILED, (f"not run: {name} {run.outcome.value} ({run.reason}); "
                                f"it runs once {name} succeeds")
    return Verdict.WAITING, _waits_for((name,))  # its state is in its own status


def cycle(start: str, jobs: Mapping[str, Job]) -> list[str] | None:
    """A path of ``after:`` names from ``start`` back to it (``[a, b, a]``); None if none.

    Depth first, without recursion (a chain may be thousands of jobs long), each job
    visited once.
    """
    path = [start]
    stack: list[Iterator[str]] = [iter(_deps_of(start, jobs))]
    seen = {start}
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            path.pop()
        elif name == start:
            return [*path, start]
        elif name not in seen:
            seen.add(name)
            path.append(name)
            stack.append(iter(_deps_of(name, jobs)))
    return None


def _deps_of(name: str, jobs: Mapping[str, Job]) -> tuple[str, ...]:
    job = jobs.get(name)
    return names(job) if job is not None else ()
