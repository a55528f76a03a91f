"""Words as one command line, quoted for the shell that will run it (`submit -- COMMAND...`).

Pure. A job's command is a shell line, but a program or a person at a terminal has the
command as words (an argv): `python3 -c 'import sys; sys.exit(4)'` is three words, the
last with spaces and a `;` in it. Each word must reach the program as one argument,
which takes a different quoting for each kind of shell.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import PureWindowsPath

__all__ = ["CannotQuote", "command_line", "shell_kind"]

# What cmd.exe reads before the program sees its command line: ^ escapes the next
# character. Escaping every quote too keeps cmd.exe out of its "inside quotes" mode, in
# which ^ would be a plain letter, so the rule is one: a ^ before each of these.
_CMD_SPECIAL = re.compile(r'([()!^"<>&|])')
# %NAME% is expanded before ^ is read (Wine's cmd.exe reads ^ first, so ^%PATH^% works
# on Windows only). "%" works on both: cmd.exe looks for a variable named "PATH" (there
# is none), and the program's C runtime drops the quotes. A run of % goes into one pair
# (`"%""%"` would be a quote to the C runtime); backslashes before an inserted quote are
# escapes to it, so they are doubled.
_CMD_PERCENT = re.compile(r'(\\*)(%+)')


class CannotQuote(ValueError):
    """These words cannot be written as one line for that shell; the message says why."""


def shell_kind(shell: str | None) -> str:
    """"cmd", "powershell" or "posix", from the shell's name (None: the POSIX /bin/sh)."""
    if shell is None:
        return "posix"
    name = PureWindowsPath(shell).name.lower().removesuffix(".exe")  # C:\...\cmd.exe or /bin/sh
    if name == "cmd":
        return "cmd"
    return "powershell" if name in ("powershell", "pwsh") else "posix"


def command_line(words: Sequence[str], kind: str = "posix") -> str:
    """One word as given (it is a shell line already); several, each quoted as one argument.

    ``kind`` is what ``shell_kind`` says. POSIX shells (sh, bash, zsh, dash) get
    ``shlex.join``. cmd.exe gets each word quoted as Windows programs split their command
    line (the C runtime's rules: ``subprocess.list2cmdline``), then a ``^`` before each
    character cmd.exe would act on and ``"%"`` for each ``%``, so that ``&``, ``|``, ``>``
    and ``%VAR%`` reach the program as written; a program's name keeps real quotes.
    Raises CannotQuote for an empty list, a line break for cmd.exe (it ends the command
    there), a % or a quote in the program's name for cmd.exe, and several words for
    PowerShell.
    """
    if not words:
        raise CannotQuote("nothing to run")
    if len(words) == 1:
        return words[0]
    if kind == "posix":
        return shlex.join(words)
    if kind == "cmd":
        return _cmd_line(words)
    raise CannotQuote("PowerShell passes quoted words to programs in ways that differ between "
                      "its versions: give the command as one line, quoted as PowerShell wants it")


def _cmd_line(words: Sequence[str]) -> str:
    if any("\n" in word or "\r" in word for word in words):
        raise CannotQuote("cmd.exe cannot pass a line break inside a word")
    program, *arguments = words
    # cmd.exe finds the program by the first word, split at spaces outside real quotes:
    # `"C:\Program Files\…\python.exe"` must keep its quotes, inside which cmd.exe
    # takes & ( ) ^ ! as letters but still expands %VAR% (no ^ can stop that there).
    if "%" in program or '"' in program:
        raise CannotQuote("cmd.exe would expand or split the program's name: "
                          "give the command as one line")
    first = subprocess.list2cmdline([program])
    if not first.startswith('"'):
        first = _CMD_SPECIAL.sub(r"^\1", first)
    return " ".join([first, *(_cmd_word(a) for a in arguments)])


def _cmd_word(word: str) -> str:
    escaped = _CMD_SPECIAL.sub(r"^\1", subprocess.list2cmdline([word]))
    return _CMD_PERCENT.sub(lambda m: f'{m[1] * 2}"{m[2]}"', escaped)
