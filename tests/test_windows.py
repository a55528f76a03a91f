"""A real ``filerexec serve`` on Windows Python: cmd.exe jobs, end to end.

Runs in the Windows stage (tests/test_wine.py runs this module under Windows CPython in
Wine); on other systems every test here skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import Host
from tests.util import wait_for

pytestmark = pytest.mark.skipif(os.name != "nt", reason="cmd.exe jobs run on Windows only; "
                                "not yet in the Wine stage (see tests/test_wine.py): run "
                                "`python -m tests.wine -m pytest tests/test_windows.py`")


def drop_crlf(host: Host, name: str, text: str) -> None:
    target = host.spool / "jobs" / name
    tmp = target.parent / f".syncthing.{name}.tmp"
    tmp.write_bytes(text.replace("\n", "\r\n").encode())
    os.replace(tmp, target)


def test_a_crlf_job_runs_in_cmd_and_its_status_and_log_land(host: Host) -> None:
    host.start()
    drop_crlf(host, "hello.yaml", "commands:\n  - echo hello from %OS%\n  - ver\n")
    doc = host.wait_state("hello", "succeeded", timeout=30)
    assert doc["exit_code"] == 0
    assert "hello from Windows_NT" in host.log_of("hello")


def test_a_list_stops_at_the_first_failure_with_its_code(host: Host) -> None:
    host.start()
    drop_crlf(host, "fails.yaml", "commands:\n  - echo one\n  - exit /b 3\n  - echo never\n")
    doc = host.wait_state("fails", "failed", timeout=30)
    assert doc["exit_code"] == 3
    log = host.log_of("fails")
    assert "one" in log
    assert "never" not in log


def test_a_second_daemon_on_the_spool_exits_3(host: Host) -> None:
    host.start()
    second = subprocess.run([sys.executable, "-m", "filerexec", "serve", str(host.spool),
                             "--host", host.name, "--state-dir", str(host.state)],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert second.returncode == 3, second.stderr


def test_timeout_and_operation_stop_kill(host: Host) -> None:
    host.start()
    drop_crlf(host, "s.yaml", "commands: ping -n 300 127.0.0.1\n")
    drop_crlf(host, "t.yaml", "commands: ping -n 300 127.0.0.1\ntimeout: 1s\n")
    pid = host.wait_state("s", "running", timeout=30)["pid"]
    drop_crlf(host, "s.yaml", "commands: ping -n 300 127.0.0.1\noperation: stop\n")
    assert "timeout" in host.wait_state("t", "killed", timeout=30)["reason"]
    assert "operation: stop" in host.wait_state("s", "killed", timeout=30)["reason"]
    wait_for(lambda: not psutil.pid_exists(pid), what="the stopped job's shell to be gone")


def test_deleting_the_file_kills_the_job(host: Host, tmp_path: Path) -> None:
    host.start()
    drop_crlf(host, "long.yaml", "commands: ping -n 300 127.0.0.1\n")
    pid = host.wait_state("long", "running", timeout=30)["pid"]
    (host.spool / "jobs" / "long.yaml").unlink()
    doc = host.wait_state("long", "killed", timeout=30)
    assert doc["reason"] == "job file deleted"
    wait_for(lambda: not psutil.pid_exists(pid), what="the job's shell to be gone")


def test_init_writes_an_example_job_that_runs_on_windows(host: Host) -> None:
    subprocess.run([sys.executable, "-m", "filerexec", "init", str(host.spool)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    for f in (host.spool / "jobs").iterdir():
        f.unlink()
    shutil.rmtree(host.spool / "jobs")
    subprocess.run([sys.executable, "-m", "filerexec", "init", str(host.spool)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    host.start()
    assert host.wait_state("hello", "succeeded", "failed", timeout=30)["state"] == "succeeded"
    assert "hello from " + os.environ["COMPUTERNAME"] in host.log_of("hello")
