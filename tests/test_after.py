"""`after:` (DESIGN §10): the key, the pure check, the machine's rows, the table, a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from filerexec.after import check, cycle, standing
from filerexec.jobtable import JobTable
from filerexec.ledger import job_from_record, job_to_record
from filerexec.machine import (
    AfterChecked,
    Exited,
    FileMissing,
    FileRead,
    Job,
    Launch,
    Readiness,
    Run,
    Spawned,
    Start,
    State,
    Tick,
    Verdict,
    Version,
    transition,
)
from filerexec.page import COLOURS
from filerexec.spec import SpecError, parse_job
from tests.conftest import Host
from tests.test_machine import History, T
from tests.util import index_states, wait_for

# ---- the key --------------------------------------------------------------------------------


def spec_error(text: str, name: str = "j") -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(text, name)
    return caught.value


def test_the_key() -> None:
    assert parse_job("commands: x\nafter: nightly/db\n", "j").after == ("nightly/db",)
    spec = parse_job("commands: x\nafter: [a, nightly/db.yaml, a, b.yml]\n", "j")
    assert spec.after == ("a", "nightly/db", "b")  # a file's name is its job's; once each
    assert parse_job("commands: x\n", "j").after == ()
    plain = parse_job("commands: x\n", "j").digest
    assert plain == parse_job("commands: x\nafter:\n", "j").digest  # old digests are kept
    assert parse_job("commands: x\nafter: a\n", "j").digest != plain


@pytest.mark.parametrize(("text", "where", "words"), [
    ("commands: x\nafter: j\n", (2, 8), "names this job itself"),
    ("commands: x\nafter:\n  - a\n  - j.yaml\n", (4, 5), "names this job itself"),
    ("commands: x\nafter: [a, {b: c}]\n", (2, 12), "must name jobs"),
    ("commands: x\nafter: [a, ../b]\n", (2, 12), "must name jobs"),
    ("commands: x\nafter: []\n", (2, 8), "`after` must be a job name or a list of them"),
    ("commands: x\nafters: a\n", (2, 1), "did you mean `after`"),
])
def test_a_wrong_value_says_where(text: str, where: tuple[int, int], words: str) -> None:
    e = spec_error(text)
    assert (e.line, e.column) == where and words in str(e), str(e)


# ---- the pure check ---------------------------------------------------------------------------


def valid(text: str, name: str, seen: float = 0.0) -> Version:
    return Version(Readiness.VALID, parse_job(text, name), mtime=seen, seen=seen)


def ended(name: str, text: str, outcome: State, reason: str = "exit code 0") -> Job:
    v = valid(text, name)
    assert v.digest is not None
    run = Run("r-" + name, v.digest, started=1, finished=2, outcome=outcome, reason=reason)
    return Job(name, outcome, reason, version=v, run=run, started_digest=v.digest)


def waiting(name: str, after: str) -> Job:
    job = Job(name, State.PENDING, version=valid(f"commands: x\nafter: {after}\n", name),
              after_wait=True)
    return job


def test_standing_of_one_dependency() -> None:
    assert standing("a", None)[0] is Verdict.WAITING
    assert "does not exist on this host (yet)" in standing("a", None)[1]
    assert standing("a", ended("a", "commands: x", State.SUCCEEDED))[0] is Verdict.READY
    verdict, reason = standing("a", ended("a", "commands: x", State.FAILED, "exit code 3"))
    assert verdict is Verdict.FAILED and reason.startswith("not run: a failed (exit code 3)")
    assert standing("a", ended("a", "commands: x", State.KILLED, "timeout"))[0] is Verdict.FAILED
    # Its success was of another version than the current one: it waits for the current one.
    edited = ended("a", "commands: x", State.SUCCEEDED)
    edited = Job("a", State.PENDING, version=valid("commands: y", "a"), run=edited.run)
    assert standing("a", edited) == (Verdict.WAITING, "waiting for a to succeed")
    # After a clean restart an unchanged finished file is not read again: no version, but
    # its run's version is the file's. Deleted, it is gone.
    restored = ended("a", "commands: x", State.SUCCEEDED)
    restored = Job("a", State.SUCCEEDED, run=restored.run)
    assert standing("a", restored)[0] is Verdict.READY
    assert standing("a", Job("a", State.SUCCEEDED, run=restored.run, deleted=5))[0] \
        is Verdict.WAITING
    # A failed run whose retry waits is not the last word yet.
    retrying = ended("a", "commands: x\nretry: 1", State.FAILED, "exit code 1")
    retrying = Job("a", State.PENDING, version=retrying.version, run=retrying.run, retry_at=9)
    assert standing("a", retrying)[0] is Verdict.WAITING


def test_a_cycle_is_found_with_its_path() -> None:
    jobs = {"a": waiting("a", "b"), "b": waiting("b", "[c, a]"), "c": waiting("c", "d")}
    assert cycle("a", jobs) == ["a", "b", "a"]
    assert cycle("b", jobs) == ["b", "a", "b"]
    assert cycle("c", jobs) is None  # waits for d, which does not exist: no circle
    event = check(jobs["a"], jobs, 5)
    assert event is not None and event.verdict is Verdict.CYCLE and "a → b → a" in event.reason
    # Thousands of jobs in a chain: no recursion limit.
    chain = {f"j{i}": waiting(f"j{i}", f"j{i + 1}") for i in range(5000)}
    assert cycle("j0", chain) is None
    chain["j4999"] = waiting("j4999", "j0")
    found = cycle("j0", chain)
    assert found is not None and len(found) == 5001


def test_the_check_names_the_first_reason() -> None:
    jobs = {"ok": ended("ok", "commands: x", State.SUCCEEDED),
            "bad": ended("bad", "commands: x", State.FAILED, "exit code 2")}
    job = waiting("j", "[ok, missing, bad]")
    event = check(job, {**jobs, "j": job}, 5)
    assert event is not None and event.verdict is Verdict.FAILED  # a failure outweighs a wait
    job = waiting("j", "[ok, missing]")
    event = check(job, {**jobs, "j": job}, 5)
    assert event is not None and event.verdict is Verdict.WAITING and "missing" in event.reason
    job = waiting("j", "ok")
    event = check(job, {**jobs, "j": job}, 5)
    assert event is not None and event.verdict is Verdict.READY
    assert check(Job("k", State.PENDING, version=valid("commands: x", "k")), jobs, 5) is None


# ---- the machine's rows ------------------------------------------------------------------------

AFTER = "commands: x\nafter: dep\n"


def version(text: str, seen: float = 0.0) -> Version:
    return valid(text, "job", seen)


def test_a_request_waits_for_the_check_and_never_launches_before() -> None:
    h = History()
    h(FileRead(version(AFTER), 1))
    assert h.job.state is State.PENDING and h.job.after_wait and not h.job.due
    assert h.job.reason == "waiting for dep to succeed"
    assert h.launch(1) == []  # however the daemon asks, nothing starts unchecked
    h(AfterChecked(Verdict.WAITING, "waiting for dep, which does not exist on this host (yet)", 2))
    assert h.job.state is State.PENDING and "does not exist" in h.job.reason and not h.job.due
    h(FileRead(version(AFTER + "# touched\n"), 3))  # a touch keeps what the check said
    assert h.job.after_wait and "does not exist" in h.job.reason
    h(AfterChecked(Verdict.READY, "", 4))
    assert h.job.due and h.job.reason == "waiting for a free slot"
    h.launch(4)
    assert len(h.starts) == 1


def test_the_skipped_row_on_its_own() -> None:
    skipped = Job("job", State.SKIPPED, "not run: dep failed (exit code 1)", version=version(AFTER),
                  after_wait=True)
    # Another failure of dep: still skipped, with the new reason; nothing starts.
    job, actions = transition(skipped, AfterChecked(Verdict.FAILED, "not run: dep killed", 5), T)
    assert job.state is State.SKIPPED and job.reason == "not run: dep killed" and actions == []
    # dep runs again: pending, waiting for it.
    job, _ = transition(skipped, AfterChecked(Verdict.WAITING, "waiting for dep (running)", 5), T)
    assert job.state is State.PENDING and job.after_wait and not job.due
    # dep's next version succeeded: the skipped job is due at once.
    job, actions = transition(skipped, AfterChecked(Verdict.READY, "", 5), T)
    assert job.state is State.PENDING and job.due and actions == []
    # A skipped job is at rest: a Tick changes nothing, an edit is a new request that waits.
    assert transition(skipped, Tick(100), T)[0] == skipped
    job, _ = transition(skipped, FileRead(version("commands: y\nafter: dep\n"), 6), T)
    assert job.state is State.PENDING and job.after_wait and job.reason.startswith("waiting")
    # Stopping it, or removing its after:, ends the waiting.
    job, _ = transition(skipped, FileRead(version(AFTER + "operation: stop\n"), 6), T)
    assert job.state is State.STOPPED and not job.after_wait
    job, _ = transition(skipped, FileRead(version("commands: x\n"), 6), T)
    assert job.due
    # A job that never waited for a check is not moved by one.
    done = Job("job", State.SUCCEEDED, version=version(AFTER))
    assert transition(done, AfterChecked(Verdict.FAILED, "x", 5), T)[0] == done


def test_a_cycle_is_invalid_until_it_is_broken() -> None:
    h = History()
    h(FileRead(version(AFTER), 1))
    h(AfterChecked(Verdict.CYCLE, "`after:` names a circle of jobs: job → dep → job", 2))
    assert h.job.state is State.INVALID and "job → dep → job" in h.job.reason
    h(FileRead(version(AFTER), 3))  # re-read (a restart): still invalid
    assert h.job.state is State.INVALID
    h(AfterChecked(Verdict.READY, "", 4))  # dep's after: was edited away, and dep succeeded
    assert h.job.due


def test_a_dependency_that_fails_makes_it_skipped_and_not_after_still_holds() -> None:
    h = History()
    h(FileRead(version(AFTER + "not_after: 2000-01-01T00:00:00+00:00\n"), 2e9))
    assert h.job.state is State.EXPIRED  # it had passed already: never waits
    h = History()
    h(FileRead(version(AFTER + "not_after: 1970-01-01T00:01:40+00:00\n"), 1))
    h(AfterChecked(Verdict.FAILED, "not run: dep failed (exit code 1)", 2))
    assert h.job.state is State.SKIPPED
    h(AfterChecked(Verdict.READY, "", 200))  # dep succeeded, but past the job's not_after
    assert h.job.state is State.EXPIRED and not h.job.due  # type: ignore[comparison-overlap]


def test_each_retry_and_each_slot_waits_for_a_check() -> None:
    h = History()
    h(FileRead(version(AFTER + "retry: 1\n"), 1))
    h(AfterChecked(Verdict.READY, "", 1))
    h.launch(1)
    h(Exited(1, 2))
    assert h.job.state is State.PENDING and h.job.retry_at == 2 and h.job.after_wait
    assert "attempt 2 of 2" in h.job.reason
    h(Tick(2))
    assert not h.job.due
    h(AfterChecked(Verdict.READY, "", 2))
    assert h.job.due
    h = History()
    h(FileRead(version(AFTER + "every: 10s\n"), 100))
    h(AfterChecked(Verdict.READY, "", 100))
    h.launch(100)
    h(Exited(0, 101))
    h(Tick(110))  # the next slot: a new request, which waits for a check
    assert h.job.state is State.PENDING and h.job.after_wait and not h.job.due


def test_the_wait_survives_the_ledger() -> None:
    job = Job("job", State.SKIPPED, "not run", version=version(AFTER), after_wait=True)
    assert job_from_record(job_to_record(job)).after_wait


# ---- the job table ---------------------------------------------------------------------------


class Table:
    """A job table driven by hand: files read, checks asked, runs launched and ended."""

    def __init__(self) -> None:
        self.t = JobTable(T)
        self.order: list[str] = []

    def drop(self, name: str, text: str, now: float) -> None:
        self.t.apply(name, FileRead(valid(text, name, now), now))

    def step(self, now: float) -> None:
        self.t.check_after(now)
        for job in self.t.active_jobs():
            if job.due:
                for action in self.t.apply(job.name, Launch(f"{job.name}@{now}", now)):
                    if isinstance(action, Start):
                        self.order.append(job.name)
                        self.t.apply(job.name, Spawned(1, 1.0))

    def end(self, name: str, code: int, now: float) -> None:
        self.t.apply(name, Exited(code, now))

    def state(self, name: str) -> State:
        return self.t.jobs[name].state


def test_a_chain_runs_in_order_whatever_order_the_files_arrive_in() -> None:
    t = Table()
    t.drop("c", "commands: x\nafter: b\n", 1)
    t.drop("b", "commands: x\nafter: a\n", 1)
    t.step(1)
    assert "waiting for a, which does not exist" in t.t.jobs["b"].reason
    assert t.t.jobs["c"].reason == "waiting for b to succeed"
    t.drop("a", "commands: x\n", 2)
    t.step(2)
    assert t.order == ["a"]
    t.end("a", 0, 3)
    t.step(3)
    t.end("b", 0, 4)
    t.step(4)
    t.end("c", 0, 5)
    assert t.order == ["a", "b", "c"] and t.state("c") is State.SUCCEEDED
    t.drop("a", "commands: x\n# touched\n", 6)  # nothing new for anyone
    t.step(6)
    assert t.order == ["a", "b", "c"]


def test_a_failed_dependency_skips_and_its_next_success_runs() -> None:
    t = Table()
    t.drop("a", "commands: x\n", 1)
    t.drop("b", "commands: x\nafter: a\n", 1)
    t.step(1)
    t.end("a", 3, 2)
    t.step(2)
    assert t.state("b") is State.SKIPPED
    assert t.t.jobs["b"].reason == "not run: a failed (exit code 3); it runs once a succeeds"
    assert "b" in t.t.active  # it is watched: a may succeed
    t.drop("a", "commands: y\n", 3)  # fixed: a new version, which runs
    t.step(3)
    assert t.state("b") is State.PENDING and t.t.jobs["b"].reason == "waiting for a to succeed"
    t.end("a", 0, 4)
    t.step(4)
    assert t.order == ["a", "a", "b"]
    t.t.apply("a", FileMissing(5))  # a deleted while b runs: b runs on
    t.t.apply("a", Tick(8))
    t.step(8)
    assert t.order == ["a", "a", "b"] and t.state("b") is State.RUNNING


def test_skipped_has_a_colour_and_a_place_in_every_view() -> None:
    from filerexec.render import counts
    from filerexec.textindex import render_index

    job = Job("b", State.SKIPPED, "not run: a failed (exit code 3)", version=valid(AFTER, "b"),
              after_wait=True)
    assert State.SKIPPED in COLOURS and COLOURS[State.SKIPPED] not in (
        COLOURS[State.FAILED], COLOURS[State.PENDING])
    assert index_states(render_index([job], "pc", 10)) == {"b": "skipped"}
    assert counts([job]) == {"skipped": 1}


# ---- a real daemon ------------------------------------------------------------------------------


@pytest.mark.slow
def test_dependencies_in_a_real_daemon(host: Host, tmp_path: Path) -> None:
    order = tmp_path / "order"
    host.start()
    # Files sync in any order: the last of the chain first, its dependency last.
    host.drop("c.yaml", f"commands: echo c >> {order}\nafter: b\n")
    host.drop("b.yaml", f"commands: echo b >> {order}\nafter: a\n")
    doc = host.wait_state("b", "pending")
    assert "waiting for a, which does not exist on this host (yet)" in doc["reason"]
    host.drop("f.yaml", "commands: exit 3\n")
    host.drop("g.yaml", f"commands: echo g >> {order}\nafter: f\n")
    host.drop("x.yaml", "commands: true\nafter: y\n")
    host.drop("y.yaml", "commands: true\nafter: [x]\n")
    host.drop("self.yaml", "commands: true\nafter: self\n")
    host.drop("a.yaml", f"commands: echo a >> {order}\n")
    host.wait_state("c", "succeeded")
    assert order.read_text().split() == ["a", "b", "c"]
    doc = host.wait_state("g", "skipped")
    assert doc["reason"] == "not run: f failed (exit code 3); it runs once f succeeds"
    wait_for(lambda: index_states((host.status_dir / "index.md").read_text()).get("g") ==
             "skipped", what="index.md to show g skipped")
    wait_for(lambda: f"--c:{COLOURS[State.SKIPPED]}" in (host.status_dir / "index.html")
             .read_text(), what="index.html to show g in the colour of skipped")
    assert "x → y → x" in host.wait_state("x", "invalid")["reason"]
    assert "y → x → y" in host.wait_state("y", "invalid")["reason"]
    assert host.wait_state("self", "invalid")["reason"].startswith("line 2, column 8: `after:` "
                                                                  "names this job itself")
    host.drop("f.yaml", "commands: true\n")  # fixed: its new version succeeds, then g runs
    host.wait_state("g", "succeeded")
    assert order.read_text().split() == ["a", "b", "c", "g"]
    host.drop("y.yaml", "commands: true\n")  # the circle broken: y runs, then x
    host.wait_state("x", "succeeded")
    # After a clean restart the host does not read unchanged finished files again; a job
    # dropped then still finds that its dependency succeeded.
    host.stop()
    host.start()
    host.drop("late.yaml", f"commands: echo late >> {order}\nafter: [a, c]\n")
    host.wait_state("late", "succeeded")
    assert "skipped" not in host.heartbeat()["jobs"]
