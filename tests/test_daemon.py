"""End to end on one host: a real `filerexec serve`, real job processes, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from filerexec import process
from filerexec.config import Settings
from filerexec.daemon import Daemon
from filerexec.writer import StatusDir, StatusWriter
from tests.conftest import Host, pid_alive
from tests.test_model import FakeProcs
from tests.util import index_states, wait_for


def started_runs(host: Host, job: str) -> int:
    db = host.ledger()
    try:
        return int(db.execute("SELECT COUNT(*) FROM runs WHERE job = ?", (job,)).fetchone()[0])
    finally:
        db.close()


def test_drop_runs_and_status_files_appear(host: Host) -> None:
    host.start()
    host.drop("hello.yaml", "commands: echo hello; echo oops >&2\n")
    doc = host.wait_state("hello", "succeeded")
    assert doc["exit_code"] == 0 and doc["host"] == "testhost" and doc["runs"] == 1
    for key in ("job", "reason", "pid", "digest", "seen", "started", "finished", "log"):
        assert key in doc, key
    assert "hello" in host.log_of("hello") and "oops" in host.log_of("hello")
    index = host.status_dir / "index.md"
    wait_for(lambda: index.exists() and index_states(index.read_text()).get("hello") ==
             "succeeded", what="index.md to list the job")
    heartbeat = host.heartbeat()
    assert heartbeat["pid"] == host.proc.pid if host.proc else False
    assert heartbeat["watcher"] and heartbeat["jobs"]


def test_failure_and_list_stops_at_first_failure(host: Host) -> None:
    host.start()
    host.drop("f.yaml", "commands:\n  - echo one\n  - exit 3\n  - echo never\n")
    doc = host.wait_state("f", "failed")
    assert doc["exit_code"] == 3 and doc["reason"] == "exit code 3"
    assert "one" in host.log_of("f") and "never" not in host.log_of("f")


def test_never_rerun_on_restart_touch_or_identical_redelivery(host: Host) -> None:
    host.start()
    host.drop("once.yaml", "commands: echo ran >> ../../once.txt\n")
    host.wait_state("once", "succeeded")
    counter = host.spool / "once.txt"
    host.stop()
    host.start()
    host.drop("once.yaml", "commands: echo ran >> ../../once.txt\n")  # identical re-delivery
    os.utime(host.spool / "jobs" / "once.yaml")  # touch
    host.drop("other.yaml", "commands: 'true'\n")
    host.wait_state("other", "succeeded")
    assert started_runs(host, "once") == 1
    assert not counter.exists() or counter.read_text().count("ran") <= 1


def test_edit_runs_again_and_delete_then_redrop_runs_again(host: Host, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    host.start()
    host.drop("e.yaml", f"commands: echo v1 >> {out}\n")
    host.wait_state("e", "succeeded")
    host.drop("e.yaml", f"commands: echo v2 >> {out}\n")
    wait_for(lambda: out.read_text().count("\n") == 2, what="v2 to run")
    (host.spool / "jobs" / "e.yaml").unlink()
    wait_for(lambda: (host.status("e") or {}).get("deleted"), what="the deletion to be confirmed")
    host.drop("e.yaml", f"commands: echo v2 >> {out}\n")
    wait_for(lambda: out.read_text().count("\n") == 3, what="the re-dropped job to run")
    assert out.read_text().split() == ["v1", "v2", "v2"]


def test_delete_kills_whole_tree_including_background_grandchildren(
        host: Host, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    host.start()
    host.drop("tree.yaml", f"commands: sleep 300 & echo $! >> {pids}; sleep 300 & "
                           f"echo $! >> {pids}; wait\n")
    host.wait_state("tree", "running")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="two sleeps")
    sleeps = [int(p) for p in pids.read_text().split()]
    assert all(pid_alive(p) for p in sleeps)
    (host.spool / "jobs" / "tree.yaml").unlink()
    doc = host.wait_state("tree", "killed", timeout=20)
    assert doc["reason"] == "job file deleted" and "deleted" in doc
    wait_for(lambda: not any(pid_alive(p) for p in sleeps), what="every sleep to be gone")


@pytest.mark.parametrize("back", [True, False])
def test_replace_by_rename_within_grace_never_kills(
        spool: Path, tmp_path: Path, back: bool) -> None:
    """The file away for a moment (a sync client resolving a conflict) kills nothing; away
    past the grace, it is a deletion. A fake clock shows what did *not* happen."""
    procs, now = FakeProcs(), time.time() + 10  # after the file's mtime: read at once
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                        settle=0.0, delete_grace=2.0, poll_interval=1.0)
    daemon = Daemon(settings, clock=lambda: now, procs=procs)
    daemon.open()
    try:
        job = spool / "jobs" / "r.yaml"
        job.write_text("commands: 'exit 0 # n1'\n")
        daemon.step(now)
        assert daemon.jobs["r"].running
        aside = job.with_name(".r.yaml.aside")
        os.replace(job, aside)
        now += 1.0
        daemon.step(now)
        assert daemon.jobs["r"].missing_since == now  # seen missing, not yet deleted
        if back:
            os.replace(aside, job)
        for _ in range(5):  # well past the 2 s grace, a listing every second
            now += 1.0
            daemon.step(now)
        r = daemon.jobs["r"]
        if back:
            assert r.running and r.kill is None and r.deleted is None and procs.running()
        else:
            assert r.deleted is not None and not procs.running()
    finally:
        daemon.close()
        procs.release()


def test_edit_while_running_queues_behind_it(host: Host, tmp_path: Path) -> None:
    gate, out = tmp_path / "gate", tmp_path / "out"
    host.start()
    host.drop("q.yaml", f"commands: while [ ! -e {gate} ]; do sleep 0.05; done; echo a >> {out}\n")
    host.wait_state("q", "running")
    host.drop("q.yaml", f"commands: echo b >> {out}\n")
    doc = wait_for(lambda: (d := host.status("q")) and d.get("queued") and d, what="queued")
    assert doc["state"] == "running"
    gate.touch()
    wait_for(lambda: out.exists() and out.read_text().split() == ["a", "b"], what="a then b")


def test_invalid_file_reported_with_line_and_column_and_daemon_survives(host: Host) -> None:
    host.start()
    host.drop("bad.yaml", "commands: echo hi\nstdout: maybe\n")
    host.drop("good.yaml", "commands: 'true'\n")
    doc = host.wait_state("bad", "invalid")
    assert "line 2" in doc["reason"] and "stdout" in doc["reason"]
    host.wait_state("good", "succeeded")
    assert host.proc is not None and host.proc.poll() is None


def test_invalid_edit_of_running_job_never_kills(host: Host) -> None:
    host.start()
    host.drop("ie.yaml", "commands: sleep 30\n")
    host.wait_state("ie", "running")
    host.drop("ie.yaml", "commands: [unclosed\n")
    wait_for(lambda: "not usable" in (host.status("ie") or {}).get("reason", ""),
             what="the error beside the running state")
    assert (host.status("ie") or {})["state"] == "running"


def test_operation_stop_kills_and_timeout_kills_with_reason(host: Host) -> None:
    host.start()
    host.drop("s.yaml", "commands: sleep 60\n")
    host.drop("t.yaml", "commands: sleep 60\ntimeout: 1s\n")
    host.wait_state("s", "running")
    host.drop("s.yaml", "commands: sleep 60\noperation: stop\n")
    assert "operation: stop" in host.wait_state("s", "killed")["reason"]
    assert "timeout" in host.wait_state("t", "killed")["reason"]


def test_conflicted_copy_listed_and_never_run(host: Host, tmp_path: Path) -> None:
    marker = tmp_path / "conflict-ran"
    host.start()
    host.drop("c.yaml", "commands: 'true'\n")
    host.drop("c.sync-conflict-20261128-050429-5TKYFLG.yaml", f"commands: touch {marker}\n")
    host.drop("c (Jane's conflicted copy 2026-11-28).yaml", f"commands: touch {marker}\n")
    doc = wait_for(lambda: (d := host.status("c")) and len(d.get("conflicts", [])) == 2
                   and d.get("state") == "succeeded" and d,
                   what="both conflicted copies listed and the job finished")
    assert doc["state"] == "succeeded"
    assert not marker.exists()
    assert not list(host.status_dir.glob("*conflict*"))


def test_yaml_txt_bare_string_and_subfolder_jobs(host: Host) -> None:
    host.start()
    host.drop("df.yaml.txt", "echo phone\n")
    host.drop("nightly/db.yaml", "commands: echo sub\n")
    host.wait_state("df", "succeeded")
    assert "phone" in host.log_of("df")
    doc = host.wait_state("nightly/db", "succeeded")
    assert doc["job"] == "nightly/db"


def test_host_filter_other_hosts_get_no_status(host: Host) -> None:
    host.start()
    host.drop("mine.yaml", "commands: 'true'\nhost: [elsewhere, TestHost]\n")
    host.drop("theirs.yaml", "commands: 'true'\nhost: elsewhere\n")
    host.drop("marker.yaml", "commands: 'true'\n")
    host.wait_state("mine", "succeeded")
    host.wait_state("marker", "succeeded")
    assert host.status("theirs") is None


def test_jobs_folder_vanishing_is_spool_unavailable_not_mass_kill(host: Host) -> None:
    host.start()
    host.drop("live.yaml", "commands: sleep 30\n")
    doc = host.wait_state("live", "running")
    jobs = host.spool / "jobs"
    os.rename(jobs, host.spool / "jobs.unmounted")
    wait_for(lambda: host.heartbeat()["state"]
             == "spool unavailable", what="host.yaml to say spool unavailable")
    assert pid_alive(doc["pid"]) and (host.status("live") or {})["state"] == "running"
    os.rename(host.spool / "jobs.unmounted", jobs)
    wait_for(lambda: host.heartbeat()["state"]
             == "serving", what="serving again")
    assert (host.status("live") or {})["state"] == "running"


def test_second_daemon_refuses_and_says_where(host: Host) -> None:
    host.start()
    second = subprocess.run(
        [sys.executable, "-m", "filerexec", "serve", str(host.spool), "--host", host.name,
         "--state-dir", str(host.state)], capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert "already running" in second.stderr and str(host.spool) in second.stderr


def test_sigterm_leaves_jobs_running_and_next_start_adopts_exit_code(
        host: Host, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    host.start()
    host.drop("a.yaml", f"commands: while [ ! -e {gate} ]; do sleep 0.05; done; exit 7\n")
    pid = host.wait_state("a", "running")["pid"]
    assert host.stop(signal.SIGTERM) == 0
    assert pid_alive(pid)
    gate.touch()
    wait_for(lambda: not pid_alive(pid), what="the job to end while no daemon runs")
    host.start()
    doc = host.wait_state("a", "failed")
    assert doc["exit_code"] == 7 and started_runs(host, "a") == 1


def test_chatty_job_is_capped_and_does_not_block(host: Host) -> None:
    host.start()
    host.drop("chatty.yaml",
              "commands: head -c 20000000 /dev/zero | tr '\\0' 'x'; echo; echo END\n")
    host.wait_state("chatty", "succeeded", timeout=60)
    log = host.status_dir / "chatty.log"
    assert log.stat().st_size <= 1024 * 1024 + 200
    text = log.read_text()
    assert text.startswith("[filerexec:") and text.rstrip().endswith("END")


def test_stdout_false_keeps_only_stderr(host: Host) -> None:
    host.start()
    host.drop("quiet.yaml", "commands: echo out; echo err >&2\nstdout: false\n")
    host.wait_state("quiet", "succeeded")
    assert "err" in host.log_of("quiet") and "out" not in host.log_of("quiet")


def test_once_runs_what_is_due_and_exits(host: Host) -> None:
    host.drop("one.yaml", "commands: echo once\n")
    host.drop("two.yaml", "commands: sleep 0.3\n")
    result = subprocess.run(
        [sys.executable, "-m", "filerexec", "serve", str(host.spool), "--host", host.name,
         "--state-dir", str(host.state), "--once"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (host.status("one") or {}).get("state") == "succeeded"
    assert (host.status("two") or {}).get("state") == "succeeded"


def test_submit_writes_a_job_the_daemon_runs(host: Host) -> None:
    host.start()
    result = subprocess.run(
        [sys.executable, "-m", "filerexec", "submit", str(host.spool), "sub/mit", "--",
         "echo", "submitted"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    host.wait_state("sub/mit", "succeeded")
    assert "submitted" in host.log_of("sub/mit")
    again = subprocess.run(
        [sys.executable, "-m", "filerexec", "submit", str(host.spool), "sub/mit", "--", "true"],
        capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "--replace" in again.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "filerexec", "submit", str(host.spool), "../escape", "--", "true"],
        capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and not (host.spool / "escape.yaml").exists()


@pytest.mark.slow  # 4-8 s: kept out of the inner loop
def test_poll_mode_reads_file_written_in_place_once_still_without_spinning(host: Host) -> None:
    host.start("--poll")
    (host.spool / "jobs" / "inplace.yaml").write_text("commands: echo polled\n")
    host.wait_state("inplace", "succeeded")
    assert "polled" in host.log_of("inplace")
    assert host.heartbeat()["watcher"] == "polling"
    # Waiting for a file to settle must sleep, not spin: a busy loop burns a whole core.
    assert host.proc is not None
    cpu = psutil.Process(host.proc.pid).cpu_times()
    (host.spool / "jobs" / "second.yaml").write_text("commands: 'true'\n")
    host.wait_state("second", "succeeded")
    after = psutil.Process(host.proc.pid).cpu_times()
    assert (after.user + after.system) - (cpu.user + cpu.system) < 0.5


def test_same_size_edit_with_the_same_mtime_is_still_noticed(host: Host, tmp_path: Path) -> None:
    out = tmp_path / "out"
    host.start()
    job = host.drop("same.yaml", f"commands: echo 1 >> {out}\n")
    host.wait_state("same", "succeeded")
    before = job.stat()
    # Same inode, same size, same mtime (as a sync client restoring the sender's mtime
    # could leave it): only the content — and the ctime nothing can set — differ.
    with open(job, "r+") as f:
        f.write(f"commands: echo 2 >> {out}\n")
    os.utime(job, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = job.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    wait_for(lambda: out.read_text().split() == ["1", "2"], what="the edited version to run")


class UnkillableProcs(FakeProcs):
    """Fake processes whose kills fail (every mechanism: "Access is denied") while ``deny``."""

    deny = True
    attempts = 0

    def terminate(self, handle: process.Handle, run_id: str) -> str | None:
        return self.kill(handle, run_id)

    def kill(self, handle: process.Handle, run_id: str) -> str | None:
        self.attempts += 1
        if self.deny:
            return "TerminateJobObject failed: Access is denied. (error 5)"
        return super().kill(handle, run_id)


def test_a_kill_that_fails_says_so_and_is_retried_with_back_off(
        spool: Path, tmp_path: Path) -> None:
    """Fault injection at the process seam the daemon uses on every platform; a restart keeps
    the failure and the back-off (the ledger has them); the kill is claimed once it is made."""
    procs, now = UnkillableProcs(), time.time() + 10
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                        settle=0.0, poll_interval=1.0)
    status = spool / "status" / "h" / "u.yaml"

    def reason() -> str:
        return str(yaml.safe_load(status.read_text())["reason"])

    def opened() -> Daemon:
        writer = StatusWriter(StatusDir(spool, "h"), settings.log_cap, inline=True)
        daemon = Daemon(settings, clock=lambda: now, procs=procs, writer=writer)
        daemon.open()
        return daemon

    daemon = opened()
    try:
        (spool / "jobs" / "u.yaml").write_text("commands: 'exit 0 # n1'\n")
        daemon.step(now)
        (spool / "jobs" / "u.yaml").write_text("commands: 'exit 0 # n1'\noperation: stop\n")
        now += 1.0
        daemon.step(now)
        assert procs.attempts == 1 and procs.running()
        assert reason() == ("stopping: stopped by operation: stop; could not kill it: "
                            "TerminateJobObject failed: Access is denied. (error 5); trying "
                            "again in 1s")
        now += 0.5
        daemon.step(now)
        assert procs.attempts == 1  # not before its time
        now += 0.5
        daemon.step(now)
        assert procs.attempts == 2 and reason().endswith("trying again in 2s")
        daemon.close()
        daemon = opened()  # adopts it: the kill is sent again at once, and fails again
        daemon.step(now)
        assert procs.attempts == 3 and reason().endswith("trying again in 4s")
        assert yaml.safe_load(status.read_text())["state"] == "running"  # nothing claimed
        procs.deny = False
        now += 4.0
        daemon.step(now)
        now += 1.0
        daemon.step(now)
        doc = yaml.safe_load(status.read_text())
        assert (doc["state"], doc["reason"]) == ("killed", "stopped by operation: stop")
        assert procs.attempts == 4 and not procs.running()
    finally:
        daemon.close()
        procs.release()


def test_a_failed_group_signal_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """POSIX: killpg refused (a member became another user's, a setuid program)."""
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(process, "alive", lambda handle: True)
    monkeypatch.setattr(os, "killpg", refuse)
    assert process.kill(process.Handle(4242, 1.0), "r1") == (
        "SIGKILL to process group 4242: Operation not permitted")
