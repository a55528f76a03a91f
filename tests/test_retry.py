"""`retry:` (DESIGN §10): the key, the pure rule, the machine's rows, and a real daemon."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from filerexec.ledger import job_from_record, job_to_record
from filerexec.machine import Exited, FileMissing, FileRead, State, Tick
from filerexec.render import job_status
from filerexec.retry import TIMEOUT, RetryPolicy, retry_delay
from filerexec.spec import SpecError, parse_job
from tests.conftest import Host
from tests.test_daemon import started_runs
from tests.test_machine import History, version


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(text, "j")
    return caught.value


# ---- the key ---------------------------------------------------------------------------------

def test_a_count_or_a_mapping() -> None:
    assert parse_job("commands: x\nretry: 2\n", "j").retry == RetryPolicy(max=2)
    spec = parse_job("commands: x\nretry: {max: 3, on: [1, 75, Timeout], delay: 30s, "
                     "backoff: 2}\n", "j")
    assert spec.retry == RetryPolicy(max=3, on=(1, 75, TIMEOUT), delay=30.0, backoff=2.0)
    assert parse_job("commands: x\nretry: {max: 1, on: 3}\n", "j").retry == RetryPolicy(1, (3,))
    assert parse_job("commands: x\nretry:\n", "j").retry is None  # empty: the default


def test_the_policy_is_part_of_the_digest_and_absent_keeps_the_old_one() -> None:
    plain = parse_job("commands: x\n", "j").digest
    assert parse_job("commands: x\nretry: 2\n", "j").digest != plain
    assert parse_job("commands: x\nretry: 2\n", "j").digest != \
        parse_job("commands: x\nretry: 3\n", "j").digest
    # The digest of a job without §10 keys is what it always was (a fixed value).
    assert plain == parse_job("commands: x\nretry:\n", "j").digest


@pytest.mark.parametrize(("text", "where", "words"), [
    ("commands: x\nretry: -1\n", (2, 8), "`retry` must be a whole number"),
    ("commands: x\nretry: two\n", (2, 8), "`retry` must be a whole number"),
    ("commands: x\nretry: [1]\n", (2, 8), "`retry` must be a number of retries"),
    ("commands: x\nretry:\n  max: 2\n  on: [1, boom]\n", (4, 11), "exit codes"),
    ("commands: x\nretry:\n  max: 2\n  on: [0]\n", (4, 8), "exit codes"),
    ("commands: x\nretry:\n  max: 2\n  wait: 3s\n", (4, 3), "unknown or repeated setting"),
    ("commands: x\nretry:\n  on: [1]\n", (3, 3), "needs `max`"),
    ("commands: x\nretry: {max: 2, delay: soon}\n", (2, 24), "`delay` must be a duration"),
    ("commands: x\nretry: {max: 2, backoff: 0.5}\n", (2, 26), "`backoff` must be a number"),
])
def test_a_wrong_value_says_where(text: str, where: tuple[int, int], words: str) -> None:
    e = error(text)
    assert (e.line, e.column) == where and words in e.message, str(e)


# ---- the rule ---------------------------------------------------------------------------------

def test_the_rule() -> None:
    p = RetryPolicy(max=2, delay=10, backoff=3)
    assert retry_delay(p, 1, 1, False) == 10 and retry_delay(p, 2, 1, False) == 30
    assert retry_delay(p, 3, 1, False) is None  # three attempts in all
    assert retry_delay(p, 1, 0, False) is None and retry_delay(None, 1, 1, False) is None
    assert retry_delay(p, 1, None, False) is None  # never started: retrying will not help
    assert retry_delay(p, 1, None, True) is None  # a timeout only when `on` lists it
    listed = RetryPolicy(max=1, on=(75, TIMEOUT))
    assert retry_delay(listed, 1, 75, False) == 0 and retry_delay(listed, 1, None, True) == 0
    assert retry_delay(listed, 1, 1, False) is None


# ---- the machine --------------------------------------------------------------------------------

RETRIED = "commands: x\nretry: {max: 2, delay: 10s, backoff: 2}\n"


def test_a_failed_run_waits_its_delay_then_runs_again_until_the_last_attempt() -> None:
    h = History()
    h(FileRead(version(RETRIED), 0))
    h.launch(0)
    h(Exited(3, 1))
    assert h.job.state is State.PENDING and not h.job.due and h.job.retry_at == 11
    assert h.job.reason == "exit code 3; attempt 2 of 3 in 10s"
    assert job_status(h.job, "pc")["attempt"] == "2 of 3"
    h(Tick(10.9))
    assert not h.job.due and h.launch(10.9) == []  # not before its delay
    h(Tick(11))
    assert h.job.due
    h.launch(11)
    assert h.job.state is State.RUNNING and h.job.attempt == 2
    h(Exited(4, 12))
    assert h.job.retry_at == 12 + 20 and "attempt 3 of 3 in 20s" in h.job.reason  # backoff
    h(Tick(32))
    h.launch(32)
    h(Exited(5, 33))
    # The final state is the last attempt's.
    assert h.job.state is State.FAILED and h.job.reason == "exit code 5"
    assert h.job.retry_at is None and len(h.starts) == 3
    assert job_status(h.job, "pc")["attempt"] == "3 of 3"


def test_a_success_ends_the_retries() -> None:
    h = History()
    h(FileRead(version(RETRIED), 0))
    h.launch(0)
    h(Exited(1, 1))
    h(Tick(11))
    h.launch(11)
    h(Exited(0, 12))
    assert h.job.state is State.SUCCEEDED and h.job.retry_at is None and len(h.starts) == 2


def test_a_timeout_retries_only_when_listed() -> None:
    for on, retried in (("[1]", False), ("[timeout]", True)):
        h = History()
        h(FileRead(version(f"commands: x\ntimeout: 5s\nretry: {{max: 1, on: {on}}}\n"), 0))
        h.launch(0)
        h(Tick(5))  # the timeout: TERM
        h(Exited(-15, 6))
        assert (h.job.state is State.PENDING) is retried, on


def test_a_reread_keeps_waiting_but_stop_deletion_and_edits_cancel() -> None:
    def failed_once() -> History:
        h = History()
        h(FileRead(version(RETRIED), 0))
        h.launch(0)
        h(Exited(3, 1))
        return h

    h = failed_once()
    h(FileRead(version(RETRIED + "# touched\n", 2), 2))  # same digest: still retrying
    assert h.job.state is State.PENDING and h.job.retry_at == 11
    h = failed_once()
    h(FileRead(version(RETRIED + "operation: stop\n", 2), 2))
    assert h.job.state is State.STOPPED and h.job.retry_at is None
    h(Tick(20))
    assert h.launch(20) == []
    h = failed_once()
    h(FileMissing(2))
    h(Tick(4))  # the deletion confirmed
    assert h.job.retry_at is None and h.launch(20) == [] and len(h.starts) == 1
    h = failed_once()
    h(FileRead(version("commands: y\nretry: 2\n", 2), 2))  # a new version: a new request
    assert h.job.due and h.job.attempt == 1


def test_the_deadline_survives_the_ledger() -> None:
    h = History()
    h(FileRead(version(RETRIED), 0))
    h.launch(0)
    h(Exited(3, 1))
    restored = job_from_record(job_to_record(h.job))
    assert restored.retry_at == 11 and restored.attempt == 2
    h.job = restored  # a restart: the version is read again
    h(FileRead(version(RETRIED), 5))
    assert h.job.state is State.PENDING and not h.job.due
    h(Tick(11))
    assert h.job.due


# ---- a real daemon ------------------------------------------------------------------------------

@pytest.mark.slow
def test_retries_run_and_survive_a_kill_9(host: Host, tmp_path: Path) -> None:
    count = tmp_path / "count"
    # Fails twice, then succeeds: each attempt appends a line.
    host.start()
    host.drop("r.yaml", f"commands: echo x >> {count}; [ $(wc -l < {count}) -ge 3 ]\n"
                        "retry: {max: 3, delay: 2s}\n")
    doc = host.wait_state("r", "pending")
    assert doc["attempt"] == "2 of 4" and "exit code 1; attempt 2 of 4 in 2s" in doc["reason"]
    host.stop(signal.SIGKILL)  # dies while the retry waits: its deadline is in the ledger
    host.start()
    doc = host.wait_state("r", "succeeded", timeout=20)
    assert doc["attempt"] == "3 of 4" and started_runs(host, "r") == 3
    assert count.read_text().count("x") == 3
