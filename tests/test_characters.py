"""Values are checked after YAML's escapes: NUL anywhere, hidden characters in what runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from filerexec.cli import main
from filerexec.spec import SpecError, parse_job
from tests.conftest import Host


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(text, "j")
    return caught.value


@pytest.mark.parametrize(("text", "key", "where"), [
    ('commands: "echo a\\0b"\n', "commands", (1, 11)),
    ('commands:\n  - ls\n  - "echo \\x00"\n', "commands", (3, 5)),
    ('commands: ls\nenv: {A: "x\\0"}\n', "env", (2, 10)),
    ('commands: ls\ncwd: "/tmp\\0"\n', "cwd", (2, 6)),
    ('commands: ls\nshell: "bash\\0"\n', "shell", (2, 8)),
    ('commands: ls\nhost: "pc\\0"\n', "host", (2, 7)),
    ('commands: ls\nrun: "1\\0"\n', "run", (2, 6)),
])
def test_nul_is_refused_in_every_value_with_line_and_column(
        text: str, key: str, where: tuple[int, int]) -> None:
    e = error(text)
    assert f"`{key}` holds a NUL" in e.message and (e.line, e.column) == where


@pytest.mark.parametrize(("escape", "named"), [
    ("\\x1b[31m", "U+001B"), ("\\r", "U+000D"), ("\\x7f", "U+007F"), ("\\x9b", "U+009B"),
    ("\\u202e", "RIGHT-TO-LEFT OVERRIDE"), ("\\u200b", "ZERO WIDTH SPACE"),
    ("\\u2066", "LEFT-TO-RIGHT ISOLATE"), ("\\ufeff", "ZERO WIDTH NO-BREAK SPACE"),
    ("\\u200f", "RIGHT-TO-LEFT MARK"),
])
@pytest.mark.parametrize("key", ["commands", "cwd", "shell", "env"])
def test_hidden_characters_are_refused_in_what_runs_naming_them(
        escape: str, named: str, key: str) -> None:
    value = f'"x{escape}y"'
    text = {"commands": f"commands: {value}\n", "env": f"commands: ls\nenv:\n  A: {value}\n"
            }.get(key, f"commands: ls\n{key}: {value}\n")
    e = error(text)
    assert f"`{key}` holds the invisible character" in e.message and named in e.message
    assert e.line == text.count("\n") and e.hint and "differ from what runs" in e.hint


def test_written_as_characters_not_escapes_they_are_refused_too() -> None:
    e = error("commands: echo safe \u202e;rm -rf ~ #\n")
    assert "RIGHT-TO-LEFT OVERRIDE" in e.message and (e.line, e.column) == (1, 11)


def test_tab_newline_and_ordinary_unicode_still_run() -> None:
    spec = parse_job('commands: "printf \'a\\tb\\n\'"\nenv: {A: "café ☕ 日本"}\n'
                     'host: "pc"\n', "j")
    assert spec.commands == ("printf 'a\tb\n'",) and spec.env == (("A", "café ☕ 日本"),)
    # Outside what runs, only NUL is refused: a run marker may hold anything else.
    assert parse_job('commands: ls\nrun: "v\\u200b2"\n', "j").run == "v\u200b2"


def test_validate_agrees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "nul.yaml"
    job.write_text('commands: "echo a\\0b"\n')
    assert main(["validate", str(job)]) == 1
    assert "line 1, column 11: `commands` holds a NUL" in capsys.readouterr().out


def test_a_nul_job_is_invalid_and_the_daemon_and_its_batch_run_on(host: Host) -> None:
    for name in ("a", "c"):
        (host.spool / "jobs" / f"{name}.yaml").write_text("commands: 'true'\n")
    (host.spool / "jobs" / "b.yaml").write_text('commands: "echo a\\0b"\n')
    (host.spool / "jobs" / "d.yaml").write_text('commands: ls\nenv: {X: "\\0"}\n')
    host.start()
    for name in ("a", "c"):
        host.wait_state(name, "succeeded")
    assert "line 1, column 11: `commands` holds a NUL" in host.wait_state("b", "invalid")["reason"]
    assert "`env` holds a NUL" in host.wait_state("d", "invalid")["reason"]
    assert host.proc is not None and host.proc.poll() is None
    assert host.stop() == 0
