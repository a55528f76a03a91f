"""index.html: the page every phone shows (DESIGN §1, §4), rendered, written and opened in
a real headless Chromium at a phone's viewport."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from filerexec.machine import Job, Run, State
from filerexec.page import COLOURS, duration, last_lines, render_page
from filerexec.render import PAGE_JOBS, counts, job_status, left_out, timestamp
from filerexec.textindex import render_index
from filerexec.writer import StatusDir
from tests.conftest import Host
from tests.util import index_states, wait_for

HOST_DOC: dict[str, Any] = {"host": "h", "state": "serving",
                            "updated": "2026-11-28T06:05:00+01:00",
                            "started": "2026-11-28T06:00:00+01:00"}


def ended(name: str, at: float, state: State = State.SUCCEEDED, code: int = 0) -> Job:
    run = Run(f"r-{name}", "d" * 12, started=at - 158, finished=at, exit_code=code,
              outcome=state)
    return Job(name, state=state, reason=f"exit code {code}", run=run, runs=1)


def test_page_is_self_contained_escaped_and_newest_first() -> None:
    jobs = [ended("old", 1000.0), ended("new", 3000.0, State.FAILED, 3), ended("mid", 2000.0)]
    logs = {"new": b"line 1\n<script>alert(1)</script> & more\n"}
    html = render_page(jobs, HOST_DOC, lambda name: logs.get(name, b""))
    assert '<meta name="viewport" content="width=device-width' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "<script" not in html.lower()  # no script: neither ours nor a job's
    assert not re.search(r"(src|href)=|url\(|@import|https?:", html)  # nothing is fetched
    assert html.index(">new<") < html.index(">mid<") < html.index(">old<")
    assert "heartbeat 2026-11-28 06:05:00+01:00" in html
    assert html.index("heartbeat") < html.index(">new<")
    failed = html[html.index(">new<"):html.index(">mid<")]
    assert COLOURS[State.FAILED] in html[:html.index(">new<") + 200]
    for text in ("failed", "exit code 3", "<dd>3</dd>", "2 min 38 s", "line 1"):
        assert text in failed, text


def test_a_hostile_job_name_and_reason_are_text() -> None:
    job = Job("a<b>", state=State.INVALID, reason='line 1, column 2: "<i>" is not <allowed>')
    html = render_page([job], {**HOST_DOC, "state": "<b>x"}, lambda name: b"")
    assert "a&lt;b&gt;" in html and "&lt;i&gt;" in html and "&lt;b&gt;x" in html
    assert "<i>" not in html and "<b>x" not in html


def test_ten_thousand_jobs_stay_a_sensible_size() -> None:
    jobs = [ended(f"job-{i:05}", float(i)) for i in range(10_000)]
    log = b"".join(b"output line %d of a chatty job\n" % i for i in range(1000))
    html = render_page(jobs, HOST_DOC, lambda name: log)
    assert len(html.encode()) < 1_000_000
    assert html.count('class="job"') == PAGE_JOBS
    assert ">job-09999<" in html and f">job-{10_000 - PAGE_JOBS:05}<" in html
    assert f">job-{10_000 - PAGE_JOBS - 1:05}<" not in html
    assert f"The other {10_000 - PAGE_JOBS:,} have their status in NAME.yaml" in html
    assert html.index(left_out(PAGE_JOBS, 10_000)) < html.index(">job-09999<")


def test_log_tail_keeps_the_last_lines_and_bytes() -> None:
    log = b"[filerexec: 99 earlier bytes not shown]\n" + b"".join(
        b"%d\n" % i for i in range(50))
    assert last_lines(log, 3) == "47\n48\n49"
    assert last_lines(b"x" * 5000, cap=100) == "x" * 100
    assert last_lines(b"\xff\xfe bad utf-8\n") == "\ufffd\ufffd bad utf-8"
    assert last_lines(b"") == ""


def test_durations_read_as_a_person_says_them() -> None:
    assert [duration(s) for s in (0.25, 42, 158, 3 * 3600 + 300)] == [
        "250 ms", "42 s", "2 min 38 s", "3 h 5 min"]


def test_status_dir_reads_a_log_back_only_as_a_plain_file(tmp_path: Path) -> None:
    status = StatusDir(tmp_path, "h")
    status.root.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    (status.root / "linked.log").symlink_to(secret)  # planted through the sync
    (status.root / "plain.log").write_text("after a restart\n")
    jobs = [ended("linked", 1.0), ended("plain", 2.0)]
    status.write_page(jobs, HOST_DOC)
    html = (status.root / "index.html").read_text()
    assert "after a restart" in html and "top secret" not in html


@pytest.mark.slow
def test_the_daemon_writes_the_page_with_the_jobs_and_a_fresh_heartbeat(host: Host) -> None:
    host.extra_args += ["--heartbeat", "1"]
    host.start()
    host.drop("hello.yaml", "commands: echo '<script>alert(1)</script>'\n")
    host.drop("bad.yaml", "commands: [unclosed\n")
    host.wait_state("hello", "succeeded")
    page = host.status_dir / "index.html"

    def shows_both() -> str | None:
        text = page.read_text() if page.exists() else ""
        return text if ">hello<" in text and ">bad<" in text else None

    html = wait_for(shows_both, what="index.html to list both jobs")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
    first = re.search(r"heartbeat ([^ ]+ [^ ·]+)", html)
    assert first is not None
    wait_for(lambda: first[1] not in page.read_text(), timeout=5,
             what="the heartbeat on the page to move on")
    assert host.stop() == 0
    assert "<b>stopped</b>" in page.read_text()


# --- in a real browser -----------------------------------------------------------------

CHROMEDRIVER = "/usr/bin/chromedriver"
# Chromium looks up Google's services at start: everything but loopback resolves nowhere.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-default-apps", "--no-first-run",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost"]
SPOOL_JOBS = {
    "hello": "commands: echo hello from the host\n",
    "fails": "commands: echo about to fail >&2; exit 3\n",
    "report": "after: fails\ncommands: echo never\n",  # skipped: its dependency failed
    "script": "commands: echo '<script>document.body.remove()</script>'\n",
    "wide": "commands: printf '%0400d\\n' 0\n",  # one 400-character word
    "a-job-name-that-is-much-longer-than-a-phone-screen-is-wide-without-any-space": (
        "commands: true\n"),
    "nightly/db-backup": "commands: seq 1 30\n",
    "broken": "commands: [unclosed\n",
    "sleeper": "commands: sleep 60\n",
}


def _browser(tmp_path: Path) -> Any:
    """Debian's Chromium through Debian's chromedriver: no download, no telemetry."""
    if not (os.path.exists(CHROMEDRIVER) and shutil.which("chromium")):
        if os.environ.get("CI") or os.environ.get("FILEREXEC_REQUIRE_CHROMIUM") == "1":
            raise AssertionError(".ci/run installs chromium and chromium-driver")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install "
                    "chromium chromium-driver)")
    os.environ["SE_AVOID_STATS"] = "true"  # selenium's manager: no usage statistics
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(
        CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))


@pytest.mark.slow
def test_the_page_fits_a_phone_in_chromium(host: Host, tmp_path: Path) -> None:
    host.start()
    for name, text in SPOOL_JOBS.items():
        host.drop(f"{name}.yaml", text)
    host.wait_state("hello", "succeeded")
    host.wait_state("sleeper", "running")
    host.wait_state("report", "skipped")
    page = host.status_dir / "index.html"
    wait_for(lambda: page.exists() and all(f">{n}<" in page.read_text() for n in SPOOL_JOBS),
             what="index.html to list every job")
    driver = _browser(tmp_path)
    try:
        driver.set_window_size(390, 844)
        driver.get(page.as_uri())
        viewport = driver.execute_script("return window.innerWidth")
        widths = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.body.scrollWidth]")
        wider = driver.execute_script(
            "return [...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)"
            ".map(e => e.tagName + ': ' + e.textContent.slice(0, 40))")
        text = driver.find_element("tag name", "body").text
        shot = tmp_path / "index-390x844.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    print(f"screenshot: {shot}")
    if copy := os.environ.get("FILEREXEC_SCREENSHOT"):  # e.g. docs/index-html.png (README)
        shutil.copyfile(shot, copy)
    assert 0 < viewport <= 390
    assert max(widths) <= viewport and wider == []
    for name in SPOOL_JOBS:
        assert name in text, name
    assert "<script>document.body.remove()</script>" in text  # shown as text, not run
    assert "exit code 3" in text and "running" in text and "heartbeat" in text
    assert "skipped" in text
    assert shot.stat().st_size > 10_000


def test_a_scheduled_job_shows_its_next_run() -> None:
    job = Job("tick", State.SCHEDULED, "waiting for its first slot", next_run=5000.0)
    html = render_page([job, ended("once", 1000.0)], HOST_DOC, lambda name: b"")
    assert f"<dt>next run</dt><dd>{timestamp(5000.0)!s}".replace("T", " ") in html
    assert html.count("next run") == 1  # a job without a schedule has none


def test_a_run_in_a_schedulers_queue_is_pending_on_every_page() -> None:
    """A Slurm-queued run is running to the machine (its submission is made) but pending to
    the person: its status, host.yaml's counts, index.md and index.html all say so."""
    run = Run("r-q", "d" * 12, started=1000.0, external="17", waiting="queued in Slurm: Priority")
    queued = Job("queued", State.RUNNING, "running", run=run, runs=1)
    on_node = Job("on-node", State.RUNNING, "running", run=Run("r-n", "e" * 12, started=1000.0,
                                                             external="18", began=1001.0), runs=1)
    jobs = [queued, on_node]
    assert counts(jobs) == {"pending": 1, "running": 1}
    doc = job_status(queued, "h")
    assert (doc["state"], doc["reason"], doc["slurm_job"]) == (
        "pending", "queued in Slurm: Priority", "17")
    assert index_states(render_index(jobs, "h", 2000.0, {}))["queued"] == "pending"
    html = render_page(jobs, HOST_DOC, lambda name: b"")
    assert "1 pending, 1 running" in html and "queued in Slurm: Priority" in html
    assert f'--c:{COLOURS[State.PENDING]}"><h2><span>queued<' in html
