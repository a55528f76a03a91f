"""The host owner's allow list: which command lines a job may run here. Pure.

Patterns are shell-style wildcards (``fnmatch``), matched against each command line
as a whole: ``backup *``, ``df -h``, ``/usr/local/bin/deploy.sh ?*``. Wildcards are
for arguments, never for more commands: ``*`` and ``?`` do not match the characters
that make a shell line run something else (``; & | < > ( ) $ ` \\`` and line breaks),
so ``backup *`` does not allow ``backup x; rm -rf ~``. Write such characters into
the pattern itself where a command needs them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from filerexec.spec import JobSpec

__all__ = ["policy_problem"]

_SHELL_CONTROL = ";&|<>()$`\\\n\r"
_ANY = "[^" + re.escape(_SHELL_CONTROL) + "]"


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        parts.append(f"{_ANY}*" if char == "*" else _ANY if char == "?" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def allowed(command: str, allow: Sequence[str]) -> bool:
    """True if ``command`` (one command line, stripped) matches one of the patterns."""
    return any(_compile(p.strip()).fullmatch(command.strip()) for p in allow)


def policy_problem(spec: JobSpec, allow: Sequence[str]) -> str | None:
    """Why the host's allow list refuses ``spec``; None if it allows it (or there is none)."""
    if not allow:
        return None
    # Either would change what an allowed command line does (PATH, LD_PRELOAD, another
    # interpreter), so a host with an allow list refuses both.
    if spec.shell is not None:
        return (f"this host has an allow list, so a job may not set `shell:` "
                f"(it sets {spec.shell!r})")
    if spec.env:
        names = ", ".join(k for k, _ in spec.env)
        return f"this host has an allow list, so a job may not set `env:` (it sets {names})"
    for command in spec.commands:
        if not allowed(command, allow):
            return f"the command {command!r} is not in this host's allow list"
    return None
