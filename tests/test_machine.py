"""The pure state machine: scripted histories and a hypothesis stateful model."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from filerexec.machine import (
    Exited,
    FileMissing,
    FileRead,
    Job,
    Launch,
    Readiness,
    Signal,
    Signalled,
    Spawned,
    SpawnFailed,
    Start,
    State,
    Tick,
    Timing,
    Vanished,
    Version,
    transition,
)
from filerexec.spec import parse_job

T = Timing(delete_grace=2.0, kill_grace=5.0)


def version(text: str, seen: float = 0.0) -> Version:
    spec = parse_job(text, "job")
    return Version(Readiness.VALID, spec, mtime=seen, seen=seen)


def invalid(problem: str = "line 1, column 1: broken") -> Version:
    return Version(Readiness.INVALID, problem=problem)


class History:
    """Feed events to one job, keeping every action."""

    def __init__(self) -> None:
        self.job = Job("job")
        self.actions: list[object] = []
        self.runs = 0

    def __call__(self, event: object) -> list[object]:
        self.job, actions = transition(self.job, event, T)  # type: ignore[arg-type]
        self.actions.extend(actions)
        return list(actions)

    def launch(self, now: float) -> list[object]:
        self.runs += 1
        actions = self(Launch(f"run{self.runs}", now))
        if actions:
            self(Spawned(1000 + self.runs, 1.0))
        return actions

    @property
    def starts(self) -> list[Start]:
        return [a for a in self.actions if isinstance(a, Start)]


def test_new_file_is_pending_then_runs_once() -> None:
    h = History()
    h(FileRead(version("commands: ls"), 1))
    assert h.job.state is State.PENDING and h.job.due
    assert isinstance(h.launch(1)[0], Start)
    assert h.job.state is State.RUNNING  # type: ignore[comparison-overlap]
    h(Exited(0, 2))
    assert h.job.state is State.SUCCEEDED and h.job.run and h.job.run.exit_code == 0
    # Rescan, touch, identical re-delivery: the same digest never runs again.
    h(FileRead(version("commands: ls  # touched", 5), 5))
    assert h.job.state is State.SUCCEEDED and not h.job.due
    assert h.launch(6) == []
    assert len(h.starts) == 1


def test_failure_reports_exit_code() -> None:
    h = History()
    h(FileRead(version("commands: exit 3"), 1))
    h.launch(1)
    h(Exited(3, 2))
    assert h.job.state is State.FAILED and h.job.reason == "exit code 3"


def test_edit_runs_new_version_and_v1_again_after_v2() -> None:
    h = History()
    for i, text in enumerate(["commands: a", "commands: b", "commands: a"]):
        h(FileRead(version(text), i * 10))
        h.launch(i * 10)
        h(Exited(0, i * 10 + 1))
    assert [s.spec.commands for s in h.starts] == [("a",), ("b",), ("a",)]


def test_edit_while_running_is_queued_not_interrupting() -> None:
    h = History()
    h(FileRead(version("commands: a"), 1))
    h.launch(1)
    h(FileRead(version("commands: b"), 2))
    assert h.job.state is State.RUNNING and h.job.queued is not None
    assert not any(isinstance(a, Signal) for a in h.actions)
    h(Exited(0, 3))
    assert h.job.state is State.PENDING and h.job.due  # type: ignore[comparison-overlap]
    h.launch(3)
    assert [s.spec.commands for s in h.starts] == [("a",), ("b",)]


def test_edit_back_to_running_version_drops_the_queue() -> None:
    h = History()
    h(FileRead(version("commands: a"), 1))
    h.launch(1)
    h(FileRead(version("commands: b"), 2))
    h(FileRead(version("commands: a"), 3))
    assert h.job.queued is None
    h(Exited(0, 4))
    assert h.job.state is State.SUCCEEDED


def test_invalid_edit_never_kills_and_is_shown() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100"), 1))
    h.launch(1)
    h(FileRead(invalid("line 2, column 3: tab"), 2))
    assert h.job.state is State.RUNNING and "tab" in h.job.reason
    assert not any(isinstance(a, Signal) for a in h.actions)


def test_invalid_new_file_is_invalid_and_never_started() -> None:
    h = History()
    h(FileRead(invalid(), 1))
    assert h.job.state is State.INVALID and not h.job.due


def test_delete_confirmed_after_grace_kills_then_escalates() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100"), 1))
    h.launch(1)
    h(FileMissing(10))
    assert h(Tick(11.9)) == []  # inside the grace: a replace-by-rename never kills
    [term] = h(Tick(12))
    assert isinstance(term, Signal) and not term.force
    assert h.job.deleted == 12
    assert h(Tick(16.9)) == []
    [kill] = h(Tick(17))
    assert isinstance(kill, Signal) and kill.force
    h(Exited(-9, 18))
    assert h.job.state is State.KILLED and h.job.reason == "job file deleted"


def test_a_kill_that_cannot_be_made_is_shown_and_retried_with_back_off() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100"), 1))
    h.launch(1)
    h(FileMissing(10))
    h(Tick(12))  # TERM
    assert h(Signalled(12, "Access is denied")) == []
    assert h.job.state is State.RUNNING
    assert h.job.reason == ("stopping: job file deleted; could not kill it: Access is denied; "
                            "trying again in 1s")
    assert h(Tick(12.9)) == []  # the fake clock: not before its second
    [again] = h(Tick(13))
    assert isinstance(again, Signal) and again.force
    h(Signalled(13, "Access is denied"))
    assert h.job.reason.endswith("trying again in 2s") and h(Tick(14.9)) == []
    [again] = h(Tick(15))
    assert isinstance(again, Signal) and again.force
    h(Signalled(15, None))  # this one worked
    assert h.job.reason == "stopping: job file deleted" and h(Tick(100)) == []
    h(Exited(1, 16))
    assert (h.job.state, h.job.reason) == (State.KILLED, "job file deleted")


def test_the_kill_back_off_stops_growing_at_a_minute() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100\ntimeout: 1s"), 1))
    h.launch(1)
    h(Tick(2))  # the timeout: TERM
    now = 2.0
    for _ in range(10):
        h(Signalled(now, "no such luck"))
        assert h.job.kill is not None and h.job.kill.retry_at is not None
        now = h.job.kill.retry_at
        assert [type(a) for a in h(Tick(now))] == [Signal]
    assert h.job.reason.endswith("could not kill it: no such luck; trying again in 1m")
    assert h.job.kill is not None and h.job.kill.failures == 10


def test_a_job_that_ends_while_its_kill_failed_is_not_called_killed() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100"), 1))
    h.launch(1)
    h(FileRead(version("commands: sleep 100\noperation: stop"), 5))
    h(Signalled(5, "taskkill exited 1: Access is denied"))
    h(Exited(0, 6))  # it ended by itself: never claim the kill
    assert h.job.state is State.SUCCEEDED
    assert h.job.reason == ("exit code 0, by itself: it could not be killed (stopped by "
                            "operation: stop): taskkill exited 1: Access is denied")
    h2 = History()
    h2(FileRead(version("commands: sleep 100"), 1))
    h2.launch(1)
    h2(FileRead(version("commands: sleep 100\noperation: stop"), 5))
    h2(Signalled(5, "denied"))
    h2(Vanished(6))
    assert h2.job.state is State.LOST and "could not be killed" in h2.job.reason


def test_file_back_within_grace_cancels_the_delete() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100"), 1))
    h.launch(1)
    h(FileMissing(10))
    h(FileRead(version("commands: sleep 100"), 11))
    assert h(Tick(20)) == [] and h.job.state is State.RUNNING


def test_deleted_and_dropped_again_runs_again() -> None:
    h = History()
    h(FileRead(version("commands: ls"), 1))
    h.launch(1)
    h(Exited(0, 2))
    h(FileMissing(3))
    h(Tick(6))
    assert h.job.deleted == 6 and h.job.started_digest is None
    h(FileRead(version("commands: ls"), 7))
    assert h.job.due and h.job.deleted is None
    h.launch(7)
    assert len(h.starts) == 2


def test_stop_kills_and_start_again_runs_same_digest() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100"), 1))
    h.launch(1)
    h(FileRead(version("commands: sleep 100\noperation: stop"), 2))
    assert isinstance(h.actions[-1], Signal)
    h(Exited(-15, 3))
    assert h.job.state is State.KILLED and "operation: stop" in h.job.reason
    h(FileRead(version("commands: sleep 100\noperation: stop"), 4))
    assert h.job.state is State.STOPPED  # type: ignore[comparison-overlap]
    h(FileRead(version("commands: sleep 100\noperation: start"), 5))
    assert h.job.due
    h.launch(5)
    assert len(h.starts) == 2


def test_stop_file_never_starts() -> None:
    h = History()
    h(FileRead(version("commands: ls\noperation: stop"), 1))
    assert h.job.state is State.STOPPED and not h.job.due


def test_timeout_kills_with_reason() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100\ntimeout: 30s"), 1))
    h.launch(1)
    assert h(Tick(30.9)) == []
    [term] = h(Tick(31))
    assert isinstance(term, Signal)
    h(Exited(-15, 32))
    assert h.job.state is State.KILLED and "timeout" in h.job.reason


def test_not_after_passed_is_expired_never_run() -> None:
    h = History()
    deadline = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    h(FileRead(version("commands: ls\nnot_after: 2026-01-01T00:00:00Z"), deadline + 1))
    assert h.job.state is State.EXPIRED and "not_after" in h.job.reason
    assert h.launch(deadline + 2) == []


def test_pending_job_expires_while_waiting_for_a_slot() -> None:
    h = History()
    deadline = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    h(FileRead(version("commands: ls\nnot_after: 2026-01-01T00:00:00Z"), deadline - 5))
    assert h.job.due
    h(Tick(deadline + 1))
    assert h.job.state is State.EXPIRED


def test_vanished_run_is_lost_not_rerun() -> None:
    h = History()
    h(FileRead(version("commands: ls"), 1))
    h.launch(1)
    h(Vanished(5))
    assert h.job.state is State.LOST
    h(FileRead(version("commands: ls"), 6))
    assert h.job.state is State.LOST and not h.job.due


def test_spawn_failure_is_failed_with_reason() -> None:
    h = History()
    h(FileRead(version("commands: ls"), 1))
    h(Launch("r1", 1))
    h(SpawnFailed("working directory ~/nope does not exist", 1))
    assert h.job.state is State.FAILED and "nope" in h.job.reason


def test_other_host_version_of_known_job_stops_it() -> None:
    h = History()
    h(FileRead(version("commands: sleep 100"), 1))
    h.launch(1)
    spec = parse_job("commands: sleep 100\nhost: elsewhere", "job")
    h(FileRead(Version(Readiness.OTHER_HOST, spec), 2))
    assert isinstance(h.actions[-1], Signal)


def test_not_ready_is_pending_with_reason_and_not_due() -> None:
    h = History()
    h(FileRead(Version(Readiness.NOT_READY, problem="waiting for the sync client"), 1))
    assert h.job.state is State.PENDING and not h.job.due
    assert "sync client" in h.job.reason


# --- model-based: random histories keep the invariants ----------------------

TEXTS = ["commands: a", "commands: b", "commands: a\noperation: stop", "commands: b\ntimeout: 5"]


class JobModel(RuleBasedStateMachine):
    """Drive one job with arbitrary file events, time and process outcomes.

    The model keeps its own account of run requests (DESIGN §3) and checks the
    machine against it: nothing starts without a request (safety) and every
    request is due as soon as nothing runs (liveness).
    """

    def __init__(self) -> None:
        super().__init__()
        self.h = History()
        self.now = 0.0
        self.present: Version | None = None  # the valid file on disk, if any
        self.last_started: str | None = None  # forgotten when a deletion is confirmed
        self.stop_since_start = False

    @rule(text=st.sampled_from(TEXTS))
    def write(self, text: str) -> None:
        self.present = version(text, self.now)
        assert self.present.spec is not None
        if self.present.spec.operation == "stop":
            self.stop_since_start = True
        self.h(FileRead(self.present, self.now))

    @rule()
    def write_invalid(self) -> None:
        self.present = None
        self.h(FileRead(invalid(), self.now))

    @rule()
    def delete(self) -> None:
        self.present = None
        self.h(FileMissing(self.now))

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        before = self.h.job.deleted
        self.h(Tick(self.now))
        if before is None and self.h.job.deleted is not None:
            self.last_started, self.stop_since_start = None, False

    @rule()
    def launch(self) -> None:
        for action in self.h.launch(self.now):
            assert isinstance(action, Start)
            digest = action.spec.digest
            assert digest != self.last_started or self.stop_since_start, "started twice"
            self.last_started, self.stop_since_start = digest, False

    @precondition(lambda self: self.h.job.running)
    @rule(code=st.sampled_from([0, 1, -15]))
    def exit(self, code: int) -> None:
        self.h(Exited(code, self.now))

    @invariant()
    def every_request_is_due_when_nothing_runs(self) -> None:
        job, v = self.h.job, self.present
        if job.running or v is None or v.spec is None or v.spec.operation != "start":
            return
        if v.spec.digest != self.last_started or self.stop_since_start:
            assert job.due, job
        else:
            assert not job.due, job

    @invariant()
    def a_running_job_has_an_open_run(self) -> None:
        run = self.h.job.run
        if self.h.job.running:
            assert run is not None and run.finished is None
        elif run is not None:
            assert run.finished is not None

    @invariant()
    def a_running_job_whose_file_is_gone_is_being_killed(self) -> None:
        job = self.h.job
        if job.running and job.deleted is not None:
            assert job.kill is not None

    @invariant()
    def every_start_is_counted(self) -> None:
        assert len(self.h.starts) == self.h.job.runs


TestJobModel = JobModel.TestCase
TestJobModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_skipped_is_a_row_of_the_table() -> None:
    from filerexec.machine import TABLE, AfterChecked, Phase, Verdict

    spec = parse_job("commands: x\nafter: dep", "job")
    job = Job("job", State.SKIPPED, "not run: dep failed (exit code 1)",
              version=Version(Readiness.VALID, spec), after_wait=True)
    handler = TABLE[(Phase.IDLE, AfterChecked)]
    assert handler is TABLE[(Phase.WAITING, AfterChecked)]
    assert handler(job, AfterChecked(Verdict.READY, "", 1), T)[0].due
    assert handler(job, AfterChecked(Verdict.FAILED, "again", 1), T)[0].state is State.SKIPPED
    pending = Job("job", State.PENDING, version=Version(Readiness.VALID, spec), after_wait=True)
    assert transition(pending, AfterChecked(Verdict.FAILED, "no", 1), T)[0].state is State.SKIPPED
