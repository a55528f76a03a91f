"""Words quoted as one command line for each kind of shell, and split back by that shell.

Pure, except the round trips: the line goes through the real shell to a real program
that prints the arguments it got. cmd.exe's round trip runs on Windows (the Windows
stage runs this module under Windows CPython in Wine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from filerexec.shellwords import CannotQuote, command_line, shell_kind

ODD_WORDS = ["a b", "$HOME", "it's", '"quoted"', "--", "*", "", "ü 😀", "a\\b", "x;y", "`id`",
             "$(id)", "line\nbreak", "%PATH%", "a&b|c>d", "C:\\dir\\", "^", "(p)", "!x!",
             "50%", "%", "C:\\%DIR%\\", "a %OS% b\\", "%%", "%%%", "%%PATH%%", "a\\%%b"]
PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell round trip; cmd.exe's is below")
def test_posix_quoting_is_what_sh_splits_back() -> None:
    line = command_line([sys.executable, "-c", PRINT_ARGV, *ODD_WORDS])
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, check=True, text=True)
    assert json.loads(out.stdout) == ODD_WORDS


@pytest.mark.skipif(os.name != "nt", reason="cmd.exe runs on Windows (the Windows stage)")
def test_cmd_quoting_is_what_cmd_and_the_program_split_back() -> None:
    words = [w for w in ODD_WORDS if "\n" not in w]  # cmd.exe cannot pass a line break
    line = command_line([sys.executable, "-c", PRINT_ARGV, *words], "cmd")
    # As process.py runs a job on Windows: cmd.exe /d /s /c "LINE", a command line as is.
    out = subprocess.run(f'cmd.exe /d /s /c "{line}"', capture_output=True, check=True,
                         text=True, encoding="utf-8", env={**os.environ, "PYTHONUTF8": "1"})
    assert json.loads(out.stdout) == words


@pytest.mark.parametrize(("words", "line"), [
    (["python", "-c", "import sys; sys.exit(4)"], 'python -c ^"import sys; sys.exit^(4^)^"'),
    (["echo", "a&b", "x|y", "<in", ">out", "(p)"], "echo a^&b x^|y ^<in ^>out ^(p^)"),
    (["echo", "%PATH%", "!x!", "^", "%%"], 'echo "%"PATH"%" ^!x^! ^^ "%%"'),
    (["echo", "C:\\%DIR%\\", "a %b"], 'echo C:\\\\"%"DIR"%"\\ ^"a "%"b^"'),
    (["prog", 'say "hi"', "", "C:\\a dir\\"], 'prog ^"say \\^"hi\\^"^" ^"^" ^"C:\\a dir\\\\^"'),
    (["C:\\Program Files\\Python\\python.exe", "-c", "print(1)"],
     '"C:\\Program Files\\Python\\python.exe" -c print^(1^)'),  # cmd.exe finds the program
    (["C:\\Tools & More\\x.exe", "a"], '"C:\\Tools & More\\x.exe" a'),
    (["a&b.exe", "c"], "a^&b.exe c"),
])
def test_cmd_quoting(words: list[str], line: str) -> None:
    assert command_line(words, "cmd") == line


def test_what_cannot_be_quoted() -> None:
    with pytest.raises(CannotQuote, match="line break"):
        command_line(["echo", "a\nb"], "cmd")
    with pytest.raises(CannotQuote, match="program's name"):
        command_line(["C:\\%APPS%\\my tool.exe", "a"], "cmd")
    with pytest.raises(CannotQuote, match="PowerShell"):
        command_line(["Get-Date", "-UFormat", "%Y"], "powershell")
    assert command_line(["Get-Date -UFormat %Y"], "powershell") == "Get-Date -UFormat %Y"
    with pytest.raises(CannotQuote, match="nothing to run"):
        command_line([], "posix")


@pytest.mark.parametrize(("shell", "kind"), [
    (None, "posix"), ("bash", "posix"), ("/usr/bin/zsh", "posix"), ("cmd", "cmd"),
    ("CMD.EXE", "cmd"), ("C:\\Windows\\System32\\cmd.exe", "cmd"), ("pwsh", "powershell"),
    ("powershell.exe", "powershell"),
])
def test_shell_kind(shell: str | None, kind: str) -> None:
    assert shell_kind(shell) == kind
