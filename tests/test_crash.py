"""Crash safety through a real daemon: whatever dies, no job is lost and none runs twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from filerexec import process
from filerexec.config import Settings
from filerexec.daemon import Daemon
from tests.conftest import Host, pid_alive
from tests.dying_daemon import DIED_BEFORE_SPAWN
from tests.test_daemon import started_runs
from tests.test_model import FakeProcs
from tests.util import wait_for


def state_dir(host: Host) -> Path:
    return next(host.state.glob("spools/*"))


def ledger(host: Host) -> sqlite3.Connection:
    return host.ledger()


def host_doc(host: Host) -> dict[str, Any]:
    return host.heartbeat()


def serving(host: Host) -> dict[str, Any]:
    """Start the daemon and wait until *this* process has written host.yaml."""
    proc = host.start()
    return wait_for(lambda: (d := host_doc(host)).get("pid") == proc.pid and d,
                    timeout=15, what="the new daemon's host.yaml")


@pytest.mark.slow  # 4-8 s: kept out of the inner loop
def test_kill9_job_keeps_running_output_reaches_log_exit_code_lands(
        host: Host, tmp_path: Path) -> None:
    gate, gate2 = tmp_path / "gate", tmp_path / "gate2"
    host.start()
    host.drop("a.yaml", f"commands: echo before; while [ ! -e {gate} ]; do sleep 0.05; done; "
                        f"echo during; while [ ! -e {gate2} ]; do sleep 0.05; done; "
                        "echo after; exit 7\n")
    pid = host.wait_state("a", "running")["pid"]
    assert host.stop(signal.SIGKILL) == -signal.SIGKILL
    assert pid_alive(pid)
    gate.touch()  # output written while no daemon runs still reaches the log
    host.start()  # adopts the still-running job
    wait_for(lambda: "during" in host.log_of("a"), timeout=15, what="the adopted job's log")
    assert (host.status("a") or {})["state"] == "running"
    assert host.stop(signal.SIGKILL) == -signal.SIGKILL
    gate2.touch()
    wait_for(lambda: not pid_alive(pid), what="the job to end while no daemon runs")
    host.start()
    doc = host.wait_state("a", "failed")
    assert doc["exit_code"] == 7 and doc["pid"] == pid and started_runs(host, "a") == 1
    assert host.log_of("a").split() == ["before", "during", "after"]


@pytest.mark.slow  # 4-8 s: kept out of the inner loop
def test_reused_pid_is_never_signalled_and_vanished_job_is_lost_not_rerun(
        host: Host, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    host.start()
    host.drop("v.yaml", f"commands: echo ran >> {counter}; sleep 300\n")
    pid = host.wait_state("v", "running")["pid"]
    host.stop(signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)  # the job dies with no exit code recorded
    wait_for(lambda: not pid_alive(pid), what="the job to die")
    # Another process now holds "the job's pid": the ledger's pid, its start time is not.
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        db = ledger(host)
        (data,) = db.execute("SELECT data FROM jobs WHERE name = 'v'").fetchone()
        record = json.loads(data)
        # As after a real reuse: same pid, but the recorded process started well before.
        record["run"]["pid"] = stranger.pid
        record["run"]["create_time"] = psutil.Process(stranger.pid).create_time() - 5.0
        db.execute("UPDATE jobs SET data = ? WHERE name = 'v'", (json.dumps(record),))
        db.commit()
        db.close()
        host.start()
        doc = host.wait_state("v", "lost")
        assert "not run again" in doc["reason"]
        (host.spool / "jobs" / "v.yaml").unlink()
        wait_for(lambda: (host.status("v") or {}).get("deleted"), what="deletion confirmed")
        assert stranger.poll() is None, "a process with a reused pid was signalled"
        host.stop()
        host.start()
        host.drop("other.yaml", "commands: 'true'\n")
        host.wait_state("other", "succeeded")
        assert counter.read_text() == "ran\n" and started_runs(host, "v") == 1
    finally:
        stranger.kill()
        stranger.wait()


def test_crash_between_starting_and_spawn_is_reported_never_rerun(
        host: Host, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    host.entry = ["-m", "tests.dying_daemon"]
    proc = host.start()
    host.drop("c.yaml", f"commands: touch {marker}\n")
    assert proc.wait(timeout=30) == DIED_BEFORE_SPAWN  # right after committing "starting"
    host.proc = None
    assert started_runs(host, "c") == 1 and not marker.exists()
    host.entry = ["-m", "filerexec"]
    host.start()
    doc = host.wait_state("c", "lost")
    assert doc["reason"] == "the daemon stopped while starting it; it is not run again"
    host.stop()
    host.start()
    host.drop("d.yaml", "commands: 'true'\n")
    host.wait_state("d", "succeeded")
    assert (host.status("c") or {})["state"] == "lost"
    assert not marker.exists() and started_runs(host, "c") == 1


def test_find_adopts_a_run_whose_pid_was_never_recorded(tmp_path: Path) -> None:
    launch = process.Launch(run_id="find-me-1", commands=("sleep 30",), cwd=str(tmp_path),
                            output_path=tmp_path / "out", exit_path=tmp_path / "exit")
    child = process.spawn(launch)
    try:
        wait_for(lambda: process.find("find-me-1"), what="the run to be found by its mark")
        assert process.find("find-me-1") == child.handle
        assert process.find("nobody-has-this-id") is None
    finally:
        process.kill(child.handle, launch.run_id)
        child.wait(timeout=10)


def test_job_that_kills_its_daemon_under_a_supervisor_runs_exactly_once(
        host: Host, tmp_path: Path) -> None:
    counter, log = tmp_path / "count", tmp_path / "kills"
    host.extra_args += ["--storm-starts", "100"]
    host.start()
    pid_file = state_dir(host) / "daemon.pid"
    # Kill (KILL, TERM, KILL) whichever daemon serves the spool, waiting for the
    # supervisor to bring up a new one between kills; then succeed.
    host.drop("seed.yaml", f"""commands: |
  echo ran >> {counter}
  for sig in KILL TERM KILL; do
    old=$(cat {pid_file})
    kill -s $sig $old; echo "$sig $old" >> {log}
    while [ "$(cat {pid_file})" = "$old" ]; do sleep 0.05; done
  done
  exit 0
""")
    restarts = 0
    deadline = time.monotonic() + 60
    while restarts < 3:  # the supervisor
        assert host.proc is not None
        try:
            host.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not kill its daemon; log:\n{host.log.read_text()[-3000:]}")
        host.proc = None
        restarts += 1
        host.start()
    doc = host.wait_state("seed", "succeeded", timeout=30)
    assert doc["runs"] == 1 and started_runs(host, "seed") == 1
    assert counter.read_text() == "ran\n"
    assert len(log.read_text().splitlines()) == 3


@pytest.mark.slow  # 4-8 s: kept out of the inner loop
def test_restart_storm_enters_safe_mode_until_its_file_is_deleted(
        host: Host, tmp_path: Path) -> None:
    host.extra_args += ["--storm-starts", "2", "--storm-window", "10m"]
    for _ in range(2):
        assert serving(host)["state"] == "serving"
        host.stop(signal.SIGKILL)
    doc = serving(host)  # the third start within ten minutes: more than 2
    assert doc["state"] == "safe mode"
    flag = state_dir(host) / "safe-mode"
    assert "3 daemon starts within 10 minutes" in str(doc["reason"]) and str(flag) in str(
        doc["reason"])
    assert "safe mode" in host.log.read_text()
    host.drop("s.yaml", f"commands: touch {tmp_path / 'ran'}\n")
    wait_for(lambda: host.status("s"), what="the job's status")
    host.stop()
    once = subprocess.run(  # --once does not wait forever for what safe mode holds back
        [sys.executable, "-m", "filerexec", "serve", str(host.spool), "--host", host.name,
         "--state-dir", str(host.state), "--once"], capture_output=True, text=True, timeout=60)
    assert once.returncode == 0 and "safe mode" in once.stderr
    assert serving(host)["state"] == "safe mode"  # still, after a plain restart
    assert (host.status("s") or {})["state"] == "pending" and started_runs(host, "s") == 0
    flag.unlink()  # what a person does (README)
    host.wait_state("s", "succeeded")
    wait_for(lambda: host_doc(host).get("state") == "serving", what="serving again")
    assert started_runs(host, "s") == 1


def test_deleting_a_job_kills_setsid_and_double_fork_escapees(
        host: Host, tmp_path: Path) -> None:
    p1, p2, p3 = tmp_path / "p1", tmp_path / "p2", tmp_path / "p3"
    host.start()
    host.drop("esc.yaml", f"commands: setsid sleep 300 & echo $! > {p1}; "
                          f"(setsid sh -c 'sleep 301 & echo $! > {p2}' &); sleep 302\n")
    # A job that has ended but left a daemon behind: deleting it ends the daemon too.
    host.drop("left.yaml", f"commands: (setsid sh -c 'sleep 303 & echo $! > {p3}' &); true\n")
    host.wait_state("esc", "running")
    host.wait_state("left", "succeeded")
    wait_for(lambda: all(p.exists() and p.read_text().strip() for p in (p1, p2, p3)),
             what="the escapees' pids")
    pids = [int(p.read_text()) for p in (p1, p2, p3)]
    assert all(pid_alive(p) for p in pids)
    assert all(os.getsid(p) != os.getsid(os.getpid()) for p in pids)
    (host.spool / "jobs" / "esc.yaml").unlink()
    (host.spool / "jobs" / "left.yaml").unlink()
    assert host.wait_state("esc", "killed", timeout=20)["reason"] == "job file deleted"
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=20,
             what="every escaped process to be killed")


def test_unwritable_status_keeps_jobs_running_and_catches_up(
        host: Host, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    host.start()
    host.drop("u.yaml", f"commands: echo out; while [ ! -e {gate} ]; do sleep 0.05; done; "
                        "exit 4\n")
    host.wait_state("u", "running")
    aside = host.status_dir.with_name("aside")
    os.rename(host.status_dir, aside)
    host.status_dir.write_text("not a folder: every status write fails\n")
    host.drop("w.yaml", f"commands: echo w > {tmp_path / 'w'}\n")  # still started
    wait_for(lambda: (tmp_path / "w").exists(), what="a job to start while status/ is broken")
    gate.touch()
    wait_for(lambda: "cannot write the status of u" in host.log.read_text(), timeout=15,
             what="the daemon to notice")
    assert host.proc is not None and host.proc.poll() is None
    host.status_dir.unlink()
    host.status_dir.mkdir()
    assert host.wait_state("u", "failed")["exit_code"] == 4
    assert host.wait_state("w", "succeeded")["exit_code"] == 0
    assert "out" in host.log_of("u")
    wait_for(lambda: host_doc(host).get("state") == "serving", what="host.yaml again")
    assert started_runs(host, "u") == 1 and started_runs(host, "w") == 1


@pytest.mark.slow  # 4-8 s: kept out of the inner loop
def test_unwritable_ledger_starts_nothing_says_why_then_runs_once(
        host: Host, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    host.start()
    host.drop("first.yaml", "commands: 'true'\n")
    host.wait_state("first", "succeeded")
    blocker = ledger(host)
    blocker.isolation_level = None
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the ledger: no commit succeeds
    try:
        host.drop("l.yaml", f"commands: echo ran >> {counter}\n")
        doc = wait_for(lambda: (d := host_doc(host)).get("state") == "ledger unwritable" and d,
                       timeout=30, what="host.yaml to say the ledger is unwritable")
        assert "locked" in str(doc["reason"])
        status = host.wait_state("l", "pending", timeout=30)
        assert "ledger cannot be written" in status["reason"]
        assert "cannot write the ledger" in host.log.read_text()
        assert not counter.exists()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    host.wait_state("l", "succeeded", timeout=30)
    wait_for(lambda: host_doc(host).get("state") == "serving", what="serving again")
    host.stop()
    host.start()
    host.drop("m.yaml", "commands: 'true'\n")
    host.wait_state("m", "succeeded")
    assert counter.read_text() == "ran\n" and started_runs(host, "l") == 1


def test_a_file_written_in_place_is_read_once_settled_not_at_the_next_rescan(
        spool: Path, tmp_path: Path) -> None:
    now = time.time()
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                        rescan_interval=60.0, poll_interval=60.0)
    daemon = Daemon(settings, clock=lambda: now, procs=FakeProcs())
    daemon.open()
    try:
        job = spool / "jobs" / "fresh.yaml"
        job.write_text("commands: 'exit 0 # n1'\n")  # no watcher: no hint; just written
        os.utime(job, (now, now))
        delay = daemon.step(now)
        assert "fresh" not in daemon.jobs and delay <= settings.settle
        daemon.step(now + settings.settle)  # still, but long before the next rescan
        assert "fresh" in daemon.jobs
    finally:
        daemon.close()


def test_a_stop_right_after_the_start_publishes_what_the_start_adopted(
        spool: Path, tmp_path: Path) -> None:
    """A run that ended while no daemon watched is finished at the next open; a clean stop
    before any step must still write that status (else the clean start after it trusts a
    status file that says `running` for ever: the model test's open bug)."""
    procs, now = FakeProcs(), time.time() + 10  # after the file's mtime: read at once
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                        settle=0.0)
    status = spool / "status" / "h" / "j.yaml"

    def opened() -> Daemon:
        daemon = Daemon(settings, clock=lambda: now, procs=procs)
        daemon.open()
        return daemon

    (spool / "jobs" / "j.yaml").write_text("commands: 'exit 3 # n1'\n")
    try:
        first = opened()
        first.step(now)
        assert first.jobs["j"].running
        first.close()
        [proc] = procs.running()
        proc.end(3)  # while no daemon runs
        opened().close()  # adopted as ended at the open; stopped before any step
        doc = yaml.safe_load(status.read_text())
        assert (doc["state"], doc["exit_code"]) == ("failed", 3), doc
        third = opened()
        third.step(now)
        third.close()
        assert yaml.safe_load(status.read_text())["state"] == "failed"
    finally:
        procs.release()
