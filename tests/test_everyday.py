"""Everyday commands: `status` filters, `logs [-f]`, `--version`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest
import yaml

from filerexec import __version__, cli
from filerexec.safefile import atomic_write
from filerexec.view import NotFound, find_log, new_output
from tests.util import wait_for


def publish(spool: Path, host: str, job: str, state: str, log: bytes | None = None,
            runs: int = 1, started: str = "2026-11-28T06:00:00+00:00") -> None:
    """Write a status file and log as a host would (atomically)."""
    folder = spool / "status" / host
    doc = {"job": job, "host": host, "state": state, "runs": runs, "started": started}
    atomic_write(folder / f"{job}.yaml", yaml.safe_dump(doc).encode())
    if log is not None:
        atomic_write(folder / f"{job}.log", log)


def test_status_filters_by_state_and_host(spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish(spool, "pc", "a", "failed")
    publish(spool, "pc", "b", "running")
    publish(spool, "nas", "c", "failed")
    (spool / "status" / "pc" / "host.yaml").write_text("host: pc\n")

    def jobs(*args: str) -> list[str]:
        assert cli.main(["status", str(spool), "--json", *args]) == cli.OK
        return sorted(d["job"] for d in json.loads(capsys.readouterr().out))

    assert jobs() == ["a", "b", "c"]
    assert jobs("--state", "failed") == ["a", "c"]
    assert jobs("--state", "failed", "--host", "PC") == ["a"]  # host names ignore case
    assert jobs("--state", "failed", "--state", "running", "--host", "pc") == ["a", "b"]
    assert jobs("--host", "nas", "--host", "pc") == ["a", "b", "c"]
    assert cli.main(["status", str(spool), "--state", "lost"]) == cli.OK
    assert capsys.readouterr().out == "no jobs match\n"
    assert cli.main(["status", str(spool), "--host", "nas"]) == cli.OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["HOST", "JOB", "STATE"] and table[1].split()[:3] == [
        "nas", "c", "failed"]


def test_status_and_logs_take_the_spool_from_the_config_file(
        spool: Path, _isolated_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _isolated_config.write_text(f"spool: {spool}\n")
    publish(spool, "pc", "a", "succeeded", b"hello\n")
    assert cli.main(["status", "--json"]) == cli.OK
    assert json.loads(capsys.readouterr().out)[0]["job"] == "a"
    assert cli.main(["logs", "a"]) == cli.OK
    assert capsys.readouterr().out == "hello\n"


def test_logs_picks_the_host(spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish(spool, "pc", "backup", "succeeded", b"pc output\n")
    publish(spool, "nas", "other", "succeeded", b"nas output\n")
    assert find_log(spool, "backup") == spool / "status" / "pc" / "backup.log"
    publish(spool, "nas", "backup", "failed", b"nas backup\n")
    with pytest.raises(NotFound, match=r"several hosts .* \(nas, pc\): choose one with --host"):
        find_log(spool, "backup")
    assert cli.main(["logs", str(spool), "backup", "--host", "nas"]) == cli.OK
    assert capsys.readouterr().out == "nas backup\n"
    assert cli.main(["logs", str(spool), "nothing"]) == cli.FAILURE
    assert "no job named 'nothing' on any host" in capsys.readouterr().err


def test_new_output_places_a_capped_log_in_the_whole_output() -> None:
    assert new_output(0, b"abc") == (b"abc", 3)
    assert new_output(3, b"abcdef") == (b"def", 6)
    assert new_output(6, b"abcdef") == (b"", 6)
    # The daemon cut the first 4 bytes: "[filerexec: 4 earlier bytes not shown]" + the rest.
    assert new_output(6, b"[filerexec: 4 earlier bytes not shown]\nefgh") == (b"gh", 8)
    # We had printed less than what was cut: say so, then print all there is.
    assert new_output(2, b"[filerexec: 4 earlier bytes not shown]\nefgh") == (
        b"[filerexec: 2 bytes not shown]\nefgh", 8)


def _reader(stream: IO[bytes], into: bytearray) -> threading.Thread:
    def pump() -> None:
        while chunk := stream.read1(4096):  # type: ignore[attr-defined]
            into.extend(chunk)
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_logs_follow_prints_new_output_across_rewrites_and_runs(spool: Path) -> None:
    publish(spool, "pc", "job", "running", b"one\n")
    argv = [sys.executable, "-m", "filerexec", "logs", str(spool), "job", "-f"]
    # Ctrl-C is the way out of -f, as in a terminal. A shell starts background jobs with SIGINT
    # ignored (CI under `nohup … &`), and Python keeps it ignored: give the child the default.
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=_default_sigint) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        out = bytearray()
        thread = _reader(proc.stdout, out)
        try:
            wait_for(lambda: out == b"one\n", what="the log so far")
            publish(spool, "pc", "job", "running", b"one\ntwo\n")
            wait_for(lambda: out == b"one\ntwo\n", what="the appended line")
            publish(spool, "pc", "job", "running",
                    b"[filerexec: 4 earlier bytes not shown]\ntwo\n3\n")
            wait_for(lambda: out == b"one\ntwo\n3\n", what="the line after the cap")
            # A new run: its log is shown once the daemon has published it, not the old one.
            publish(spool, "pc", "job", "running", None, runs=2,
                    started="2099-01-01T00:00:00+00:00")
            publish(spool, "pc", "job", "running", None, runs=2,
                    started="2000-01-01T00:00:00+00:00")
            atomic_write(spool / "status" / "pc" / "job.log", b"second run\n")
            wait_for(lambda: out.endswith(b"[filerexec: a new run]\nsecond run\n"),
                     what="the new run's log")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=10)
            finally:
                proc.kill()  # else closing its stdout waits for ever on the reader's lock
                thread.join(timeout=5)
        err = proc.stderr.read()
    assert code == 0, err
    assert out == b"one\ntwo\n3\n[filerexec: a new run]\nsecond run\n"  # nothing twice
    assert b"Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"filerexec {__version__}\n"
    assert os.environ.get("FILEREXEC_CONFIG")  # the isolation fixture is in place
