"""index.md: every job at a glance, readable in a 40-column text viewer (issue 15), the same
jobs as index.html, and read back by the tests' one parser (tests/util.py)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path

import pytest

from filerexec import render
from filerexec.machine import Job, Readiness, Run, State, Version
from filerexec.page import render_page
from filerexec.render import PAGE_JOBS, left_out, timestamp
from filerexec.spec import parse_job
from filerexec.textindex import WIDTH, render_index
from tests.test_page import HOST_DOC, ended
from tests.util import index_jobs, index_states

NOW = 1_780_000_000.0
LONG_NAME = "nightly/" + "a-job-name-that-is-longer-than-any-phone-screen-is-wide"
URL = "https://hooks.example.org/filerexec/a/very/long/path/that/cannot/be/broken?token=x"
REASON = ("line 4, column 5: `notify` names the target `opz`, which this host does not have "
          "(its targets: ops, phone, and a good many more than fit on any screen). Hint: did "
          "you mean `ops`? " * 3)


def spool_of_every_kind() -> list[Job]:
    spec = parse_job("commands: 'true'\ncron: '0 3 * * *'\n", "j")
    synced = Version(Readiness.VALID, spec, mtime=NOW - 60, seen=NOW - 55)
    return [
        ended("backup", NOW - 10, State.FAILED, 3),
        ended(LONG_NAME, NOW - 20),
        ended("with spaces in a name that is long enough to wrap", NOW - 25),
        Job("typo", State.INVALID, REASON, version=Version(Readiness.INVALID, seen=NOW - 30)),
        Job("hook", State.FAILED, f"cannot reach {URL}", deleted=NOW - 40,
            run=Run("r-hook", "d" * 12, started=NOW - 45, finished=NOW - 44, exit_code=1)),
        Job("cron", State.SCHEDULED, "waiting for its first slot", version=synced,
            next_run=NOW + 3600),
        Job("queued", State.PENDING, "waiting for a free slot (16 running)",
            version=Version(Readiness.VALID, spec, mtime=NOW - 62, seen=NOW - 57)),
        Job("日本語のジョブ", State.SUCCEEDED, "exit code 0",
            run=Run("r-jp", "d" * 12, started=NOW - 70, finished=NOW - 65, exit_code=0)),
    ]


def test_every_line_fits_in_40_columns_but_an_unbreakable_word() -> None:
    jobs = spool_of_every_kind()
    text = render_index(jobs, "office-pc", NOW, labels=["gpu", "linux", "a-rather-long-label",
                                                        "and", "more", "labels", "still"])
    names = {job.name for job in jobs}
    wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert wide, "the spool should hold a name and a URL wider than the screen"
    for line in wide:
        # Too wide only where nothing can be broken: a name as its heading, or one word.
        word = line.removeprefix("## ").strip()
        assert word in names or " " not in word, line
    assert f"## {LONG_NAME}" in wide and f"  {URL}" in wide


def test_each_job_shows_its_state_and_facts_newest_first() -> None:
    jobs = spool_of_every_kind()
    text = render_index(jobs, "office-pc", NOW)
    shown = index_jobs(text)
    assert list(shown) == [job.name for job in jobs]  # they were made newest first
    assert index_states(text) == {job.name: job.state.value + (" (deleted)" * bool(job.deleted))
                                  for job in jobs}
    assert shown["backup"] == {"state": "failed", "since": _when(NOW - 10), "exit code": "3"}
    assert shown["hook"]["reason"] == f"cannot reach {URL}"
    assert shown["cron"]["next"] == _when(NOW + 3600)
    assert shown["cron"]["sync → start"] == "5s" and shown["queued"]["sync → start"] == "5s → …"
    cut = shown["typo"]["reason"]  # wrapped over a few lines, then cut: NAME.yaml has it all
    assert cut.endswith(" …") and REASON.startswith(cut.removesuffix(" …"))
    assert text.startswith(f"# filerexec on office-pc\n\nUpdated {_when(NOW)}.\n")


def test_ten_thousand_jobs_show_the_newest_as_the_page_does_and_say_what_is_left_out() -> None:
    jobs = [ended(f"job-{i:05}", float(i)) for i in range(10_000)]
    text = render_index(jobs, "h", NOW)
    html = render_page(jobs, HOST_DOC, lambda name: b"")
    shown = list(index_jobs(text))
    assert shown == [f"job-{i:05}" for i in range(9_999, 9_999 - PAGE_JOBS, -1)]
    assert shown == re.findall(r"<h2><span>([^<]+)</span>", html)
    assert len(text.encode()) < 50_000
    note = " ".join(text.split("\n\n")[2].split("\n"))  # wrapped to the width
    assert note == left_out(PAGE_JOBS, 10_000)
    assert "The other 9,800 have their status in NAME.yaml" in note


def test_an_empty_host_says_how_to_start() -> None:
    text = render_index([], "h", NOW)
    assert index_jobs(text) == {} and "No jobs yet: drop a job file into jobs/." in text


def _when(t: float) -> str:
    return str(timestamp(t)).replace("T", " ")


def test_the_readme_example_is_in_the_format_and_width() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("```\n# filerexec on office-pc\n", 1)[1].split("```", 1)[0]
    assert max(len(line) for line in example.splitlines()) <= WIDTH
    assert index_jobs(example) == {
        "backup": {"state": "failed", "since": "2026-11-28 06:03:40+01:00", "exit code": "3",
                   "sync → start": "4s → 0s"},
        "nightly/db": {"state": "scheduled", "since": "2026-11-28 06:00:02+01:00",
                       "reason": "waiting for its first slot", "sync → start": "2s",
                       "next": "2026-11-29 03:00:00+01:00"}}


def test_the_readme_example_is_what_textindex_writes() -> None:
    """The same two jobs rendered: every line as README shows it but the clock's time zone."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = "# filerexec on office-pc\n" + readme.split(
        "```\n# filerexec on office-pc\n", 1)[1].split("```", 1)[0]
    at = {t: datetime.fromisoformat(t).timestamp() for t in (
        "2026-11-28 06:00:00+01:00", "2026-11-28 06:00:02+01:00", "2026-11-28 06:02:58+01:00",
        "2026-11-28 06:03:02+01:00", "2026-11-28 06:03:40+01:00", "2026-11-28 06:05:00+01:00",
        "2026-11-29 03:00:00+01:00")}
    backup = parse_job("commands: ~/bin/backup\n", "backup")
    nightly = parse_job("commands: ~/bin/db\ncron: '0 3 * * *'\n", "nightly/db")
    jobs = [
        Job("backup", State.FAILED, "exit code 3",
            version=Version(Readiness.VALID, backup, mtime=at["2026-11-28 06:02:58+01:00"],
                            seen=at["2026-11-28 06:03:02+01:00"]),
            run=Run("r-b", backup.digest, started=at["2026-11-28 06:03:02+01:00"],
                    finished=at["2026-11-28 06:03:40+01:00"], exit_code=3,
                    outcome=State.FAILED), runs=1),
        Job("nightly/db", State.SCHEDULED, "waiting for its first slot",
            version=Version(Readiness.VALID, nightly, mtime=at["2026-11-28 06:00:00+01:00"],
                            seen=at["2026-11-28 06:00:02+01:00"]),
            next_run=at["2026-11-29 03:00:00+01:00"])]
    text = render_index(jobs, "office-pc", at["2026-11-28 06:05:00+01:00"])
    when = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d")
    assert when.sub("TIME", text) == when.sub("TIME", example)
    assert [_when(at[t]) for t in when.findall(example)] == when.findall(text)


@pytest.mark.parametrize("t", [0.0, 1_796_300_000.0, 1_796_300_000.4, 1_796_300_000.99989,
                               1_796_300_000.9999996, 1_796_300_059.99999, -1.5])
def test_a_cached_second_reads_as_datetime_writes_it(t: float) -> None:
    direct = datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
    assert timestamp(t) == direct
    assert timestamp(math.floor(t) + 0.5) == render._local(math.floor(t) + 0.5)
