"""`every:` and `cron:` (DESIGN §10): the keys, the slots, the machine's rows, a real daemon."""

from __future__ import annotations

import itertools
import signal
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from filerexec.jobtable import JobTable
from filerexec.ledger import job_from_record, job_to_record
from filerexec.machine import (
    Exited,
    FileMissing,
    FileRead,
    Readiness,
    Signal,
    State,
    Tick,
    Version,
    next_due,
)
from filerexec.render import job_status
from filerexec.schedule import Schedule
from filerexec.spec import SpecError, parse_job
from filerexec.textindex import render_index
from tests.conftest import Host
from tests.test_daemon import started_runs
from tests.test_machine import History, T, version
from tests.util import index_jobs, wait_for

ZURICH = ZoneInfo("Europe/Zurich")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZURICH).timestamp()


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(text, "j")
    return caught.value


# ---- the keys --------------------------------------------------------------------------------

def test_the_keys() -> None:
    spec = parse_job('commands: x\ncron: "0 3 * * 1-5"\ntimezone: Europe/Zurich\n'
                     "catch_up: none\noverlap: Kill\n", "j")
    assert spec.schedule == Schedule(None, "0 3 * * 1-5", "Europe/Zurich", "none", "kill")
    assert parse_job("commands: x\ncron: '@daily'\n", "j").cron == "0 0 * * *"
    assert parse_job("commands: x\nevery: 1h\n", "j").schedule == Schedule(every=3600.0)
    assert parse_job("commands: x\n", "j").schedule is None
    assert parse_job("commands: x\nevery: 1h\n", "j").digest != \
        parse_job("commands: x\nevery: 2h\n", "j").digest


@pytest.mark.parametrize(("text", "where", "words"), [
    ('commands: x\ncron: "0 3 * *"\n', (2, 7), "five fields"),
    ('commands: x\ncron: "0 25 * * *"\n', (2, 7), "is not a cron expression"),
    ("commands: x\ncron: '@reboot'\n", (2, 7), "five fields"),
    ('commands: x\ncron: "0 3 * * *"\ntimezone: Mars/Olympus\n', (3, 11), "no time zone"),
    ("commands: x\nevery: soon\n", (2, 8), "`every` must be a duration"),
    ("commands: x\nevery: 0s\n", (2, 8), "`every` must be a duration"),
    ('commands: x\nevery: 1h\ncron: "0 3 * * *"\n', (3, 7), "not both"),
    ("commands: x\novertap: skip\n", (2, 1), "unknown key"),
    ("commands: x\noverlap: skip\n", (2, 10), "is for a job with `every:` or `cron:`"),
    ("commands: x\nevery: 1h\noverlap: wait\n", (3, 10), "skip, queue or kill"),
    ("commands: x\nevery: 1h\ncatch_up: all\n", (3, 11), "latest or none"),
    ("commands: x\nevery: 1h\ntimezone: UTC\n", (3, 11), "`every:` counts seconds"),
])
def test_a_wrong_value_says_where(text: str, where: tuple[int, int], words: str) -> None:
    e = error(text)
    assert (e.line, e.column) == where and words in e.message, str(e)


# ---- the slots -----------------------------------------------------------------------------

def test_every_counts_from_its_first_slot() -> None:
    s = Schedule(every=10)
    assert s.next_after(100, 100) == 110 and s.next_after(125, 100) == 130
    assert s.last_until(125, 100) == 120 and s.last_until(99, 100) is None
    assert s.words() == "every 10s" and Schedule(every=7200).words() == "every 2h"


def test_cron_follows_debian_cron_across_daylight_saving() -> None:
    s = Schedule(cron="30 2 * * *", timezone="Europe/Zurich")
    # 29 March 2026: 02:00 jumps to 03:00. The 02:30 slot that does not exist runs at 03:00.
    spring = s.next_after(at("2026-03-28T12:00:00"), 0)
    assert datetime.fromtimestamp(spring, ZURICH).isoformat() == "2026-03-29T03:00:00+02:00"
    # 25 October 2026: 03:00 goes back to 02:00. 02:30 happens twice; it runs once.
    autumn = s.next_after(at("2026-10-24T12:00:00"), 0)
    assert datetime.fromtimestamp(autumn, ZURICH).isoformat() == "2026-10-25T02:30:00+02:00"
    after = s.next_after(autumn, 0)
    assert datetime.fromtimestamp(after, ZURICH).isoformat() == "2026-10-26T02:30:00+01:00"
    assert "(Europe/Zurich)" in s.words() and "02:30" in s.words()


def test_a_missed_slot_follows_catch_up() -> None:
    latest, none = Schedule(every=10), Schedule(every=10, catch_up="none")
    assert latest.due_slot(100, 101, 100) == 100 and none.due_slot(100, 101, 100) == 100
    # The host was down from 100 to 1000: latest runs the last missed slot once, none skips.
    assert latest.due_slot(100, 1005, 100) == 1000 and none.due_slot(100, 1005, 100) is None


# ---- the machine ----------------------------------------------------------------------------

EVERY = "commands: x\nevery: 10s\n"


def finish(h: History, code: int, now: float) -> None:
    h(Exited(code, now))


def test_every_runs_now_then_once_per_slot_and_never_between() -> None:
    h = History()
    h(FileRead(version(EVERY), 100))
    assert h.job.due and h.job.next_run == 110
    h.launch(100)
    assert h.job.run is not None and h.job.run.slot == 100
    finish(h, 0, 101)
    assert h.job.state is State.SUCCEEDED and next_due(h.job, T) == 110
    doc = job_status(h.job, "pc")
    assert doc["schedule"] == "every 10s" and "next" in doc and doc["state"] == "succeeded"
    h(Tick(109.9))  # the fake clock before the slot: nothing happens
    assert not h.job.due and h.launch(109.9) == []
    h(Tick(110))
    assert h.job.due and h.job.next_run == 120
    h(Tick(110.5))
    h.launch(110.5)
    assert h.job.run is not None and h.job.run.slot == 110
    finish(h, 1, 111)
    h(Tick(120))
    h.launch(120)
    assert len(h.starts) == 3


def test_cron_waits_for_its_first_slot_as_scheduled() -> None:
    h = History()
    h(FileRead(version('commands: x\ncron: "*/5 * * * *"\n'), 1000), )
    assert h.job.state is State.SCHEDULED and not h.job.due and h.job.next_run == 1200
    h(FileRead(version('commands: x\ncron: "*/5 * * * *"\n# touched\n'), 1100), )
    assert h.job.state is State.SCHEDULED and h.job.next_run == 1200  # a re-read keeps it
    h(Tick(1200))
    assert h.job.due and h.job.next_run == 1500


@pytest.mark.parametrize(("overlap", "state", "signalled", "queued"), [
    ("skip", State.RUNNING, False, False),
    ("queue", State.RUNNING, False, True),
    ("kill", State.RUNNING, True, True),
])
def test_overlap(overlap: str, state: State, signalled: bool, queued: bool) -> None:
    h = History()
    h(FileRead(version(f"commands: x\nevery: 10s\noverlap: {overlap}\n"), 100))
    h.launch(100)
    actions = h(Tick(110))
    assert h.job.state is state and h.job.next_run == 120
    assert any(isinstance(a, Signal) for a in actions) is signalled
    assert (h.job.slot == 110) is queued and h.job.queued is None  # the slot, in the record
    h(Exited(-15 if signalled else 0, 111))
    assert h.job.due is queued
    assert (h.job.state is State.KILLED) is (signalled and not queued)
    if queued:
        h.launch(111)
        assert h.job.run is not None and h.job.run.slot == 110


@pytest.mark.parametrize("overlap", ["queue", "kill"])
def test_a_queued_slot_survives_a_restart_and_a_touch(overlap: str) -> None:
    text = f"commands: x\nevery: 10s\noverlap: {overlap}\n"
    h = History()
    h(FileRead(version(text), 100))
    h.launch(100)
    h(Tick(110))  # the next slot comes while the first run runs
    h.job = job_from_record(job_to_record(h.job))  # the daemon died; the next one loads this
    h(FileRead(version(text), 112))  # reads the file again (or it was touched)
    assert h.job.running and h.job.slot == 110
    h(Exited(0, 113))
    assert h.job.due
    h.launch(113)
    assert h.job.run is not None and h.job.run.slot == 110 and len(h.starts) == 2
    h(Exited(0, 114))
    h(Tick(115))
    assert not h.job.due  # that slot ran once: nothing more until 120


def test_stop_pauses_deletion_unschedules_and_kills_edit_reschedules() -> None:
    h = History()
    h(FileRead(version(EVERY), 100))
    h.launch(100)
    finish(h, 0, 101)
    h(FileRead(version(EVERY + "operation: stop\n"), 102))
    assert h.job.state is State.STOPPED and h.job.next_run is None
    h(Tick(500))
    assert h.launch(500) == []
    h(FileRead(version(EVERY), 600))  # stop → start: runs, and its slots count from now
    assert h.job.due and h.job.next_run == 610
    h.launch(600)
    h(FileMissing(601))
    h(Tick(603))  # deletion confirmed while the slot runs: killed, unscheduled
    assert h.job.kill is not None and h.job.next_run is None
    h = History()
    h(FileRead(version(EVERY), 100))
    h.launch(100)
    finish(h, 0, 101)
    h(FileRead(version("commands: x\nevery: 1h\n"), 105))  # an edit: a new version now
    assert h.job.due and h.job.next_run == 105 + 3600


def test_catch_up_after_a_restart() -> None:
    for catch_up, runs in (("latest", True), ("none", False)):
        h = History()
        text = f"commands: x\nevery: 10s\ncatch_up: {catch_up}\n"
        h(FileRead(version(text), 100))
        h.launch(100)
        finish(h, 0, 101)
        h.job = job_from_record(job_to_record(h.job))  # the host was down until 1005
        h(FileRead(version(text), 1005))
        h(Tick(1005))
        assert h.job.due is runs and h.job.next_run == 1010, catch_up


def test_a_scheduled_job_is_active_and_index_shows_its_next_run() -> None:
    table = JobTable(T)
    table.apply("job", FileRead(version('commands: x\ncron: "0 3 * * *"\n'), 100))
    assert "job" in table.active  # its slots come by Tick
    job = table.jobs["job"]
    assert job.next_run is not None
    facts = index_jobs(render_index([job], "pc", 100))["job"]
    assert facts["next"] == job_status(job, "pc")["next"].replace("T", " ")


# ---- a real daemon ------------------------------------------------------------------------

@pytest.mark.slow
def test_every_2s_runs_once_per_slot_across_a_kill_9_and_a_restart(
        host: Host, tmp_path: Path) -> None:
    out = tmp_path / "slots"
    host.start()
    host.drop("tick.yaml", f"commands: echo $(date +%s.%N) >> {out}\nevery: 2s\n")
    wait_for(lambda: started_runs(host, "tick") >= 2, timeout=15, what="two slots")
    host.stop(signal.SIGKILL)
    before = started_runs(host, "tick")
    host.start()
    wait_for(lambda: started_runs(host, "tick") >= before + 2, timeout=15,
             what="two more slots")
    host.stop()  # a clean stop: the next start need not re-read unchanged files, yet its
    before = started_runs(host, "tick")  # schedule needs its version (it was forgotten)
    host.start()
    wait_for(lambda: started_runs(host, "tick") >= before + 2, timeout=15,
             what="two more slots after a clean restart")
    doc = host.status("tick")
    assert doc and doc["schedule"] == "every 2s" and "next" in doc
    db = host.ledger()
    try:
        # One run per slot: no slot was run twice, whatever the kill interrupted.
        slots = [rec for (rec,) in db.execute("SELECT data FROM jobs WHERE name = 'tick'")]
        runs = db.execute("SELECT started FROM runs WHERE job = 'tick' ORDER BY started")
        starts = [row[0] for row in runs]
    finally:
        db.close()
    assert slots and all(b - a >= 1.0 for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize("first", ["commands: x\n", "commands: x\nevery: 10s\noverlap: queue\n",
                                   'commands: x\ncron: "*/5 * * * *"\noverlap: kill\n'])
@pytest.mark.parametrize("restart", [False, True])
def test_a_cron_version_edited_in_while_another_runs_waits_for_its_slot(
        first: str, restart: bool) -> None:
    cron = 'commands: y\ncron: "*/5 * * * *"\noverlap: queue\n'
    h = History()
    h(FileRead(version(first), 1000))
    h(Tick(1200))  # the cron version's first slot; the every version's slots fold in
    h.launch(1200)
    assert h.job.running
    h(FileRead(version(cron), 1210))  # never ran: it must wait for 1500, not start at 1212
    h(Tick(1211))
    if restart:
        h.job = job_from_record(job_to_record(h.job))
        h(FileRead(version(cron), 1211))
    h(Exited(0, 1212))
    h(Tick(1213))
    assert h.job.state is State.SCHEDULED and not h.job.due and h.job.next_run == 1500
    assert h.launch(1213) == []
    h(Tick(1500))
    assert h.job.due


def test_a_rejected_reread_stops_the_schedule() -> None:
    h = History()
    h(FileRead(version(EVERY), 100))
    h.launch(100)
    h(Exited(0, 101))
    h(FileRead(Version(Readiness.REJECTED, problem="signed with key 'laptop', which this host "
                       "does not trust (never installed, or revoked)"), 110))
    assert h.job.state is State.REJECTED and h.job.next_run is None
    assert next_due(h.job, T) is None  # no slot wakes it
    h(Tick(1000))
    assert h.launch(1000) == [] and len(h.starts) == 1
