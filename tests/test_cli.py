"""The command line, called in-process through main(argv) and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from filerexec import keystore
from filerexec.cli import main
from filerexec.signing import verify_signature


def test_init_creates_spool_with_example(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = tmp_path / "s"
    assert main(["init", str(spool)]) == 0
    assert (spool / "jobs" / "hello.yaml").is_file() and (spool / "status").is_dir()
    assert main(["init", str(spool)]) == 0
    assert "already a spool" in capsys.readouterr().out


def test_validate_reports_line_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("commands: ls\n")
    bad.write_text("commands: ls\ntimeout: soon\n")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "good.yaml: ok" in out and "bad.yaml: line 2, column 10" in out


def test_validate_shows_what_the_host_would_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = "rsync -a --delete /home/john/Documents/ /mnt/backup/john/Documents/ && echo done"
    wrapped, script = tmp_path / "wrapped.yaml", tmp_path / "script.yaml"
    wrapped.write_text(yaml.safe_dump({"commands": long + " at $(date)"}))
    assert "\n  " in wrapped.read_text()  # PyYAML wrapped it onto two lines
    script.write_text("commands:\n  - |\n    cd /tmp\n    ls\n  - df -h\nhost: [pc, nas]\n"
                      "shell: bash\ncwd: ~/x\noperation: stop\n")
    assert main(["validate", str(wrapped), str(script)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == ["  runs on every host:", f"  1. {long} at $(date)"]
    assert out[4:] == ["  runs on nas, pc with bash in ~/x, in order:", "  1. cd /tmp",
                       "     ls", "  2. df -h",
                       "  (operation: stop — it does not start, and is killed if it runs)"]
    told = tmp_path / "told.yaml"
    for text, line in (
            ("notify: [phone, ops]\nnotify_on: [failed, lost]",
             "  tells phone, ops when it ends failed or lost (the host checks the names)"),
            ("notify: []\nnotify_on: [failed]", "  tells no one when it ends (notify: false)"),
            ("notify: phone", "  tells phone when it ends in the host's notify_on states (the "
                              "host checks the names)"),
            ("notify_on: [succeeded]", "  tells the host's notify_default when it ends "
                                       "succeeded (the host checks the names)")):
        told.write_text(f"commands: ls\n{text}\n")
        assert main(["validate", str(told)]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == line


def test_status_table_and_json_after_once(tmp_path: Path) -> None:
    spool = tmp_path / "s"
    assert main(["init", str(spool)]) == 0
    run = [sys.executable, "-m", "filerexec"]
    subprocess.run([*run, "serve", str(spool), "--host", "h1", "--state-dir",
                    str(tmp_path / "st"), "--once"], check=True, timeout=60, capture_output=True)
    table = subprocess.run([*run, "status", str(spool)], capture_output=True, text=True,
                           check=True).stdout
    assert "h1" in table and "hello" in table and "succeeded" in table
    docs = json.loads(subprocess.run([*run, "status", str(spool), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert [(d["host"], d["job"], d["state"]) for d in docs] == [("h1", "hello", "succeeded")]
    other = subprocess.run([*run, "status", str(spool), "--host", "h2"], capture_output=True,
                           text=True, check=True).stdout
    assert "hello" not in other


def test_serve_on_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["serve", str(tmp_path / "nope")]) == 2


def test_sign_saves_a_utf16_file_as_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A signature line appended to UTF-16 bytes would be garbage: the file becomes UTF-8.
    assert main(["keygen", "--name", "laptop"]) == 0
    job = tmp_path / "jobs" / "backup.yaml"
    job.parent.mkdir()
    job.write_bytes(b"\xff\xfe" + "commands: echo grüß\r\n".encode("utf-16-le"))
    assert main(["sign", str(job)]) == 0
    assert "saved as UTF-8" in capsys.readouterr().out
    body, token = verify_signature(job.read_bytes(), "backup",
                                   keystore.load(keystore.default_key_dir()).hmac)
    assert body == "commands: echo grüß\r\n".encode() and token
    utf8 = tmp_path / "jobs" / "plain.yaml"
    utf8.write_bytes(b"\xef\xbb\xbfcommands: ls\r\n")  # UTF-8 stays byte for byte
    assert main(["sign", str(utf8)]) == 0
    assert utf8.read_bytes().startswith(b"\xef\xbb\xbfcommands: ls\r\n# filerexec-signature")
