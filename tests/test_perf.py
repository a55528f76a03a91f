"""Issue 7: the performance work must not cost correctness; the benchmark must run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from filerexec import process
from filerexec import reconcile as reconcile_module
from filerexec import writer as writer_module
from filerexec.config import Settings
from filerexec.daemon import LISTING_AFTER_ARRIVAL, Daemon
from filerexec.ledger import Ledger
from filerexec.machine import Job, Readiness, Run, State, Version
from filerexec.spec import parse_job
from filerexec.spool import list_jobs, read_job_file
from filerexec.textindex import render_index
from filerexec.watch import Hint, Hints, Watcher
from filerexec.writer import StatusDir, StatusWriter
from tests.conftest import Host
from tests.util import index_states, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _job(name: str, reason: str) -> Job:
    return Job(name, state=State.SUCCEEDED, reason=reason)


class _BlockingStatus(StatusDir):
    """Records every job write; the first one blocks until released."""

    def __init__(self, spool: Path) -> None:
        super().__init__(spool, "h")
        self.written: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_once = False

    def write_job(self, job: Job, conflicts: object = ()) -> bool:
        self.entered.set()
        self.release.wait(10)
        if self.fail_once:
            self.fail_once = False
            raise OSError("disk full")
        self.written.append(job.reason)
        return super().write_job(job)


def test_writer_coalesces_a_burst_of_updates_to_one_job(tmp_path: Path) -> None:
    status = _BlockingStatus(tmp_path)
    writer = StatusWriter(status, log_cap=1024)
    writer.job(_job("a", "v1"))
    assert status.entered.wait(10)  # the thread is inside the first write
    writer.job(_job("a", "v2"))
    writer.job(_job("a", "v3"))
    status.release.set()
    assert writer.flush(10)
    writer.close()
    assert status.written == ["v1", "v3"]  # v2 was superseded before it was written
    assert yaml.safe_load(status.job_path("a").read_text())["reason"] == "v3"


def test_writer_gathers_what_changes_in_the_next_moments_into_one_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "GATHER", 1.0)  # ample for three calls, on any machine
    writer = StatusWriter(StatusDir(tmp_path, "h"), log_cap=1024)
    passes: list[int] = []
    writer.written = lambda: passes.append(1)
    writer.job(_job("a", "running"))  # a launch …
    time.sleep(0.1)  # … the scenario: a writer that did not gather would write it alone now
    for name in ("b", "c"):  # … and the next ones, a moment later
        writer.job(_job(name, "running"))
    assert writer.flush(10)
    assert passes == [1]  # one pass wrote all three
    monkeypatch.setattr(writer_module, "GATHER", 60.0)
    writer.job(_job("a", "done"))
    started = time.monotonic()
    assert writer.close(10)  # a stop does not wait for the gathering
    assert time.monotonic() - started < 30
    assert yaml.safe_load(StatusDir(tmp_path, "h").job_path("a").read_text())["reason"] == "done"


def test_writer_keeps_log_then_status_then_forget_order_and_retries(tmp_path: Path) -> None:
    status = _BlockingStatus(tmp_path)
    status.release.set()
    status.fail_once = True
    writer = StatusWriter(status, log_cap=1024, retry=0.01)
    out, exit_file = tmp_path / "run.out", tmp_path / "run.exit"
    out.write_text("hello\n")
    exit_file.write_text("0\n")
    writer.log("a", out)
    writer.job(_job("a", "done"), forget=[out, exit_file])
    assert writer.flush(10)
    writer.close()
    assert status.written == ["done"]  # the failed write was retried
    assert status.log_path("a").read_text() == "hello\n"  # copied before the raw file went
    assert not out.exists() and not exit_file.exists()


def test_status_file_identical_to_what_is_on_disk_is_not_rewritten(tmp_path: Path) -> None:
    status = StatusDir(tmp_path, "h")
    assert status.write_job(_job("a", "same"))
    ino = status.job_path("a").stat().st_ino
    assert not status.write_job(_job("a", "same"))
    assert status.job_path("a").stat().st_ino == ino
    assert status.write_job(_job("a", "other"))


def test_a_failed_write_is_retried_with_nothing_else_queued(tmp_path: Path) -> None:
    status = _BlockingStatus(tmp_path)
    status.release.set()
    status.fail_once = True
    writer = StatusWriter(status, log_cap=1024, retry=0.01)
    writer.job(_job("a", "done"))  # no flush, no later request: the back-off alone retries
    wait_for(status.job_path("a").exists, what="the retried write")
    assert status.written == ["done"]
    writer.close()


def test_a_status_deleted_behind_the_writers_back_is_written_again(tmp_path: Path) -> None:
    status = StatusDir(tmp_path, "h")
    assert status.write_job(_job("a", "same"))
    status.job_path("a").unlink()  # e.g. deleted on the phone, synced here
    assert status.write_job(_job("a", "same"))  # what it last wrote is checked on disk
    assert yaml.safe_load(status.job_path("a").read_text())["reason"] == "same"


def test_a_pending_or_running_status_waits_and_a_job_that_ends_is_written_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "PASSING_DELAY", 60.0)
    status = _BlockingStatus(tmp_path)
    status.release.set()
    writer = StatusWriter(status, log_cap=1024)
    passes: list[int] = []
    writer.written = lambda: passes.append(1)
    writer.job(Job("a", state=State.PENDING, reason="waiting for a free slot"))
    writer.job(Job("a", state=State.RUNNING, reason="running"))
    writer.job(Job("b", state=State.RUNNING, reason="running"))
    writer.job(_job("c", "exit code 0"))  # finished: written at once, without a and b
    wait_for(lambda: passes, what="a pass")
    assert status.written == ["exit code 0"] and not status.job_path("a").exists()
    writer.job(_job("a", "exit code 0"))  # a ended within the delay: written once, finished
    wait_for(lambda: len(passes) == 2, what="a second pass")
    assert status.written == ["exit code 0"] * 2 and not status.job_path("b").exists()
    assert writer.flush(10)  # a flush does not wait for the delay
    assert status.written == ["exit code 0"] * 2 + ["running"]
    writer.close()


def test_a_long_running_jobs_status_is_written_once_the_delay_is_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "PASSING_DELAY", 0.2)
    writer = StatusWriter(StatusDir(tmp_path, "h"), log_cap=1024)
    queued = time.monotonic()
    writer.job(Job("a", state=State.RUNNING, reason="running"))
    path = StatusDir(tmp_path, "h").job_path("a")
    wait_for(path.exists, what="the running status")
    assert time.monotonic() - queued >= 0.2
    writer.close()


def test_under_load_the_writer_waits_several_times_its_last_pass(tmp_path: Path) -> None:
    """A pass that took long (a slow disk, a burst) is followed by a longer gathering, so the
    writer takes a bounded share of the time from starting jobs."""
    written: dict[str, float] = {}

    class Slow(StatusDir):
        def write_job(self, job: Job, conflicts: object = ()) -> bool:
            if job.name == "slow":
                time.sleep(0.1)
            written[job.name] = time.monotonic()
            return super().write_job(job)

    writer = StatusWriter(Slow(tmp_path, "h"), log_cap=1024)
    writer.job(_job("slow", "exit code 0"))
    assert writer.flush(10)
    queued = time.monotonic()
    writer.job(_job("next", "exit code 0"))
    wait_for(lambda: "next" in written, what="the next status")
    assert written["next"] - queued >= writer_module.SHARE * 0.1 * 0.9
    writer.close()


def test_ledger_commits_only_changed_records_and_remembers_first_seen(tmp_path: Path) -> None:
    spec = parse_job(b"true", "a")
    job = Job("a", state=State.SUCCEEDED, version=Version(Readiness.VALID, spec, seen=123.0))
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.save([job])
    before = ledger._db.total_changes
    ledger.save([job])
    assert ledger._db.total_changes == before
    ledger.close()
    again = Ledger(tmp_path / "l.sqlite")
    assert again.load()["a"].state is State.SUCCEEDED
    assert again.seen == {"a": (spec.digest, 123.0)}
    before = again._db.total_changes
    again.save([job])  # the same record as loaded: nothing to commit after a restart
    assert again._db.total_changes == before
    again.close()


def test_file_written_before_start_runs_once_settled_not_at_next_rescan(host: Host) -> None:
    (host.spool / "jobs" / "early.yaml").write_text("commands: echo early\n")
    host.extra_args = ["--rescan", "60"]
    host.start()
    host.wait_state("early", "succeeded", timeout=15)  # settle is 1 s; the rescan 60 s


def test_restart_rewrites_no_unchanged_status_file_and_keeps_seen(host: Host) -> None:
    host.start()
    host.drop("a.yaml", "commands: echo a\n")
    before = host.wait_state("a", "succeeded")
    path = host.status_dir / "a.yaml"
    wait_for(lambda: (host.status_dir / "index.md").exists(), what="index.md")
    ino = path.stat().st_ino
    host.stop()
    proc = host.start()

    def restarted() -> bool:
        try:
            doc = yaml.safe_load((host.status_dir / "host.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return False
        return bool(doc.get("pid") == proc.pid and doc.get("jobs", {}).get("succeeded") == 1)
    wait_for(restarted, what="host.yaml of the restarted daemon")
    assert path.stat().st_ino == ino  # not replaced: identical content is left alone
    assert host.status("a") == before  # "seen" survived the restart
    assert host.log_of("a") == "a\n"


@pytest.mark.slow
@pytest.mark.timeout(300)  # with the round trip through real Syncthing
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotifywait is Linux-only")
def test_bench_quick_completes_and_prints_a_table() -> None:
    import shutil

    if shutil.which("inotifywait") is None:
        pytest.skip("inotify-tools not installed")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick"],
                            capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| measure | floor | filerexec | ratio | target |" in result.stdout
    assert "vs the C durable loop |" in result.stdout  # gcc is installed wherever CI runs
    assert "phone → host → phone p50, with the scan request" in result.stdout
    assert "periodic rescan, 100 job files" in result.stdout
    assert "100 finished jobs |" in result.stdout  # the idle row at scale (issue 12)
    assert "ran exactly once" in result.stdout and "| NO |" not in result.stdout


def _serve_once(spool: Path, state: Path) -> Daemon:
    daemon = Daemon(Settings(spool=spool, host="h", state_dir=state, settle=0.0))
    daemon.open()
    daemon.run(threading.Event(), once=True)
    return daemon


@pytest.mark.parametrize("clean", [True, False])
def test_restart_reads_only_files_changed_since_a_clean_stop(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean: bool) -> None:
    (spool / "jobs" / "a.yaml").write_text("commands: echo a\n")
    (spool / "jobs" / "b.yaml").write_text("commands: echo b\n")
    first = _serve_once(spool, tmp_path / "state")
    assert {j.state for j in first.jobs.values()} == {State.SUCCEEDED}
    if clean:
        first.close()
    else:  # killed: some status files may never have been written
        first.writer.close()
        assert first.ledger is not None
        first.ledger.close()
        first.lifecycle.release()
    (spool / "jobs" / "b.yaml").write_text("commands: echo b2\n")
    read: list[str] = []
    real = read_job_file
    monkeypatch.setattr(reconcile_module, "read_job_file",
                        lambda info, cap, jobs_dir=None: read.append(info.path.name)
                        or real(info, cap, jobs_dir))
    second = _serve_once(spool, tmp_path / "state")
    second.close()
    assert sorted(read) == (["b.yaml"] if clean else ["a.yaml", "b.yaml"])
    assert second.jobs["a"].runs == 1 and second.jobs["b"].runs == 2
    assert yaml.safe_load((spool / "status" / "h" / "a.yaml").read_text())["state"] == "succeeded"


def test_moved_in_file_starts_before_jobs_is_listed_unless_another_file_names_it(
        spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (spool / "jobs" / "b.yaml").write_text("commands: echo b\n")
    daemon = Daemon(Settings(spool=spool, host="h", state_dir=tmp_path / "state", settle=0.0,
                             poll=True))
    daemon.open()
    daemon.run(threading.Event(), once=True)  # the first listing; b has run
    order: list[str] = []
    real_scan, real_spawn = list_jobs, process.spawn
    monkeypatch.setattr(reconcile_module, "list_jobs",
                        lambda d: order.append("scan") or real_scan(d))
    monkeypatch.setattr(process, "spawn",
                        lambda launch: order.append("spawn") or real_spawn(launch))

    def deliver(name: str, now: float) -> None:
        order.clear()
        tmp = spool / "jobs" / f".syncthing.{name}.tmp"
        tmp.write_text("commands: echo new\n")
        target = spool / "jobs" / name
        tmp.replace(target)
        daemon.hints.add(str(target), Hint.COMPLETE)
        daemon.step(now)

    now = time.time()
    deliver("a.yaml", now)
    assert order == ["spawn"]  # listed soon, to confirm (the listing is the truth)
    daemon.step(now + LISTING_AFTER_ARRIVAL)
    assert order == ["spawn", "scan"]
    deliver("b.yml", now + 1)  # competes with b.yaml for the name "b": only the listing decides
    assert order == ["scan"]
    daemon.run(threading.Event(), once=True)
    daemon.close()
    assert daemon.jobs["a"].state is State.SUCCEEDED and daemon.jobs["b"].runs == 1


def test_file_moved_in_from_outside_jobs_is_complete_at_once(tmp_path: Path) -> None:
    jobs, outside = tmp_path / "jobs", tmp_path / "download-cache"
    jobs.mkdir()
    outside.mkdir()
    hints = Hints(lambda: None)
    watcher = Watcher(jobs, hints)
    watcher.ensure()
    try:
        (outside / "a.yaml").write_text("commands: 'true'\n")
        (outside / "a.yaml").rename(jobs / "a.yaml")
        got: dict[str, Hint] = {}
        wait_for(lambda: got.update(hints.drain()) or str(jobs / "a.yaml") in got,
                 what="the move-in hint")
        assert got[str(jobs / "a.yaml")] is Hint.COMPLETE  # not CHANGED: no 1 s settle wait
        got.clear()
        (jobs / "a.yaml").rename(outside / "gone.yaml")  # moved out: a hint for the old path
        (outside / "b.yaml").write_text("commands: 'true'\n")
        (outside / "b.yaml").rename(jobs / "b.yaml")  # a drop right after it
        wait_for(lambda: got.update(hints.drain()) or str(jobs / "b.yaml") in got,
                 what="the drop's hint")
        # Events come in order and none is held back to pair it (watchdog held a move-out
        # for 0.5 s, and every event behind it): the move-out's hint came first.
        assert got == {str(jobs / "a.yaml"): Hint.CHANGED, str(jobs / "b.yaml"): Hint.COMPLETE}
    finally:
        watcher.stop()


def test_index_rows_are_reused_only_while_the_job_is_unchanged() -> None:
    rows: dict[str, tuple[Job, float, str]] = {}
    a, b = _job("a", "x"), _job("b", "x")
    first = render_index([a, b], "h", 0.0, rows)
    assert render_index([a, b], "h", 0.0, rows) == first == render_index([a, b], "h", 0.0)
    failed = Job("a", state=State.FAILED, reason="exit code 1")
    assert index_states(render_index([failed, b], "h", 0.0, rows))["a"] == "failed"
    render_index([b], "h", 0.0, rows)
    assert set(rows) == {"b"}


def test_page_reuses_its_choice_only_while_the_same_jobs_are_passed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from filerexec import page
    from filerexec.render import since as real

    keyed: list[str] = []
    monkeypatch.setattr(page, "since", lambda job: keyed.append(job.name) or real(job))
    logs = {"a": b"one\n", "b": b""}
    cache = page.PageCache()
    run = Run("r1", "d", started=1.0, finished=2.0, exit_code=0)
    a, b = Job("a", state=State.SUCCEEDED, reason="x", run=run), _job("b", "x")
    doc = {"host": "h", "updated": "2026-12-03T10:00:00+00:00"}
    first = page.render_page([a, b], doc, logs.__getitem__, cache=cache)
    assert first == page.render_page([a, b], doc, logs.__getitem__)  # as without a cache
    keyed.clear()
    beat = {**doc, "updated": "2026-12-03T10:00:30+00:00"}
    again = page.render_page([a, b], beat, logs.__getitem__, cache=cache)
    assert keyed == [] and again == first.replace("10:00:00", "10:00:30")  # a heartbeat
    failed = Job("a", state=State.FAILED, reason="exit code 1", run=run)
    changed = page.render_page([failed, b], beat, logs.__getitem__, cache=cache)
    assert keyed and "exit code 1" in changed and "1 failed, 1 succeeded" in changed
    logs["a"] = b"two\n"  # a running job's log refreshed: the same record, a new tail
    assert "two" in page.render_page([failed, b], beat, logs.__getitem__, cache=cache)
