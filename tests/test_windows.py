"""A real ``filerexec serve`` on Windows Python: cmd.exe jobs, end to end.

Runs in the Windows stage (tests/test_wine.py runs this module under the official Windows
CPython in Wine, in every run of ``.ci/run``); on other systems every test here skips. Wine under
a loaded machine is slow to start a Python (seconds), so every wait here is a poll with a
generous timeout, never a guessed sleep.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from filerexec import process, winjob
from tests.conftest import Host
from tests.util import wait_for

pytestmark = [pytest.mark.skipif(os.name != "nt", reason="cmd.exe jobs run on Windows only "
                                 "(tests/test_wine.py runs this module under Wine)"),
              pytest.mark.timeout(600)]  # beyond the suite's 120 s: polls of WAIT each

WAIT = 120.0  # seconds: a poll's limit, reached only when something is wrong


@pytest.fixture
def win(host: Host) -> Iterator[Host]:
    host.timeout = WAIT
    yield host


def drop_crlf(host: Host, name: str, text: str) -> None:
    target = host.spool / "jobs" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".syncthing.{name}.tmp"
    tmp.write_bytes(text.replace("\n", "\r\n").encode())
    os.replace(tmp, target)


def filerexec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "filerexec", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=WAIT)


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)


def test_a_crlf_job_runs_in_cmd_and_its_status_and_log_land(win: Host) -> None:
    win.start()
    drop_crlf(win, "hello.yaml", "commands:\n  - echo hello from %OS%\n  - ver\n")
    doc = win.wait_state("hello", "succeeded", timeout=WAIT)
    assert doc["exit_code"] == 0
    assert "hello from Windows_NT" in win.log_of("hello")


def test_a_list_stops_at_the_first_failure_with_its_code(win: Host) -> None:
    win.start()
    drop_crlf(win, "fails.yaml", "commands:\n  - echo one\n  - exit /b 3\n  - echo never\n")
    doc = win.wait_state("fails", "failed", timeout=WAIT)
    assert doc["exit_code"] == 3
    log = win.log_of("fails")
    assert "one" in log
    assert "never" not in log


def test_a_second_daemon_on_the_spool_exits_3(win: Host) -> None:
    win.start()
    second = filerexec("serve", str(win.spool), "--host", win.name, "--state-dir",
                       str(win.state))
    assert second.returncode == 3, second.stderr
    assert win.proc is not None and win.proc.poll() is None  # the first one serves on


def test_timeout_and_operation_stop_kill(win: Host) -> None:
    win.start()
    drop_crlf(win, "s.yaml", "commands: ping -n 300 127.0.0.1\n")
    drop_crlf(win, "t.yaml", "commands: ping -n 300 127.0.0.1\ntimeout: 1s\n")
    pid = win.wait_state("s", "running", timeout=WAIT)["pid"]
    drop_crlf(win, "s.yaml", "commands: ping -n 300 127.0.0.1\noperation: stop\n")
    assert "timeout" in win.wait_state("t", "killed", timeout=WAIT)["reason"]
    assert "operation: stop" in win.wait_state("s", "killed", timeout=WAIT)["reason"]
    wait_for(lambda: gone(pid), timeout=WAIT, what="the stopped job's shell to be gone")


def test_deleting_the_file_kills_the_job(win: Host) -> None:
    win.start()
    drop_crlf(win, "long.yaml", "commands: ping -n 300 127.0.0.1\n")
    pid = win.wait_state("long", "running", timeout=WAIT)["pid"]
    (win.spool / "jobs" / "long.yaml").unlink()
    doc = win.wait_state("long", "killed", timeout=WAIT)
    assert doc["reason"] == "job file deleted"
    wait_for(lambda: gone(pid), timeout=WAIT, what="the job's shell to be gone")


def test_submit_status_and_logs_work(win: Host) -> None:
    win.start()
    submitted = filerexec("submit", str(win.spool), "greet", "--", "echo greetings & exit /b 0")
    assert submitted.returncode == 0, submitted.stderr
    win.wait_state("greet", "succeeded", timeout=WAIT)
    status = filerexec("status", str(win.spool))
    assert status.returncode == 0, status.stderr
    (row,) = [line for line in status.stdout.splitlines() if "greet" in line]
    assert "succeeded" in row and win.name in row
    logs = filerexec("logs", str(win.spool), "greet")
    assert logs.returncode == 0, logs.stderr
    assert "greetings" in logs.stdout


def test_init_writes_an_example_job_that_runs_on_windows(win: Host, tmp_path: Path) -> None:
    win.spool = tmp_path / "fresh"
    made = filerexec("init", str(win.spool))
    assert made.returncode == 0, made.stderr
    (example,) = (win.spool / "jobs").iterdir()
    assert "%COMPUTERNAME%" in example.read_text()
    checked = filerexec("validate", str(example))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    win.start()
    assert win.wait_state("hello", "succeeded", "failed", timeout=WAIT)["state"] == "succeeded"
    assert "hello from " + os.environ["COMPUTERNAME"] in win.log_of("hello")


def orphan_pings(count: int) -> list[psutil.Process]:
    """The ``ping -n COUNT`` processes whose parent has exited (orphans)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        argv = proc.info["cmdline"] or []  # C:\windows\system32\ping.exe -n COUNT 127.0.0.1
        if argv[1:3] == ["-n", str(count)] and not psutil.pid_exists(proc.info["ppid"]):
            found.append(proc)
    return found


def orphan_job(count: int) -> str:
    """A job whose shell starts a ping through a cmd that exits at once, then waits."""
    return f'commands: cmd /c start "" /b ping -n {count} 127.0.0.1 & ping -n 300 127.0.0.1\n'


def test_deleting_the_file_kills_a_grandchild_whose_parent_exited(win: Host) -> None:
    win.start()
    drop_crlf(win, "tree.yaml", orphan_job(301))
    win.wait_state("tree", "running", timeout=WAIT)
    (orphan,) = wait_for(lambda: orphan_pings(301), timeout=WAIT, what="the orphaned ping")
    (win.spool / "jobs" / "tree.yaml").unlink()
    assert win.wait_state("tree", "killed", timeout=WAIT)["reason"] == "job file deleted"
    wait_for(lambda: gone(orphan.pid), timeout=WAIT, what="the orphaned grandchild to be gone")


def test_a_restarted_daemon_kills_an_adopted_runs_whole_tree(win: Host) -> None:
    win.start()
    drop_crlf(win, "kept.yaml", orphan_job(302))
    pid = win.wait_state("kept", "running", timeout=WAIT)["pid"]
    (orphan,) = wait_for(lambda: orphan_pings(302), timeout=WAIT, what="the orphaned ping")
    win.stop()
    assert psutil.pid_exists(pid) and orphan.is_running()  # a stopped daemon kills nothing
    win.start()
    (win.spool / "jobs" / "kept.yaml").unlink()
    assert win.wait_state("kept", "killed", timeout=WAIT)["reason"] == "job file deleted"
    wait_for(lambda: gone(orphan.pid) and gone(pid), timeout=WAIT, what="the tree to be gone")


def test_a_job_that_ends_while_the_daemon_is_stopped_gets_its_exit_code(win: Host) -> None:
    win.start()
    drop_crlf(win, "brief.yaml", "commands: ping -n 4 127.0.0.1 >nul & exit /b 5\n")
    pid = win.wait_state("brief", "running", timeout=WAIT)["pid"]
    win.stop()
    wait_for(lambda: gone(pid), timeout=WAIT, what="the job to end while no daemon runs")
    win.start()
    doc = win.wait_state("brief", "failed", "lost", timeout=WAIT)
    assert (doc["state"], doc["exit_code"], doc["reason"]) == ("failed", 5, "exit code 5")


def test_the_job_object_holds_the_run_and_is_found_and_ended_by_name(tmp_path: Path) -> None:
    exit_path, name = tmp_path / "r.exit", winjob.job_name("unit-1")
    parent = subprocess.Popen([sys.executable, "-I", "-S", winjob.__file__, str(exit_path), name,
                               "ping -n 300 127.0.0.1"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(winjob.members(name)) == 2, timeout=WAIT, what="parent and ping")
        assert parent.pid in winjob.members(name)
        found = process.find("unit-1")
        assert found is not None and found.pid == parent.pid  # the oldest member
        assert winjob.terminate(name) is True
        assert parent.wait(WAIT) == winjob.KILLED
        assert not exit_path.exists()  # killed: nothing recorded, the daemon records its kill
        wait_for(lambda: winjob.members(name) == [], timeout=WAIT, what="the job to be empty")
    finally:
        parent.kill()
    assert winjob.terminate(winjob.job_name("never-started")) is False
    assert winjob.members(winjob.job_name("never-started")) == []


def test_service_install_registers_the_task_with_schtasks(win: Host, tmp_path: Path) -> None:
    """Task Scheduler takes the XML (``schtasks /Create /XML``). Wine keeps the description and
    the settings it parsed from it, but drops triggers, principal and command, and its
    ``schtasks /Run`` does nothing: that the task starts at logon was never seen here."""
    task = Path(os.environ["SYSTEMROOT"]) / "System32" / "Tasks" / "fx-test"
    who = ["--user", getpass.getuser(), "--name", "fx-test"]  # Wine's user is root: by name
    said = tmp_path / "said.txt"

    def service(action: str) -> tuple[int, str]:
        # Output to a file, not a pipe: the scheduler service schtasks starts on demand
        # inherits the handles and would hold a pipe open for as long as it runs.
        with open(said, "wb") as out:
            code = subprocess.run([sys.executable, "-m", "filerexec", "service", action,
                                   str(win.spool), *who], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=WAIT).returncode
        return code, said.read_text(errors="replace")

    code, text = service("install")
    assert code == 0, text
    assert "schtasks.exe /Create /TN fx-test /XML" in text
    try:
        registered = task.read_text(encoding="utf-8-sig")
        assert f"run jobs dropped into {win.spool.resolve()}</Description>" in registered
        assert "<ExecutionTimeLimit>PT0S</ExecutionTimeLimit>" in registered  # no 72 h limit
        assert "<MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>" in registered
    finally:
        code, text = service("uninstall")
    assert code == 0, text
    assert not task.exists()
