"""Shell completion for bash, zsh and fish, from the argument parser itself (argcomplete).

`filerexec completion SHELL` prints a script that the shell loads once. At each TAB the
shell then runs `filerexec` with the line typed so far (argcomplete's protocol: the
``_ARGCOMPLETE`` variable, answers on file descriptor 8), and the parser answers:
commands, options, choices, and, from the spool, the job and host names. So the
completion can never disagree with the parser, and needs no update when a flag is added.

Reading the spool here only lists folders; it never writes.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import argcomplete
from argcomplete.completers import DirectoriesCompleter
from argcomplete.shell_integration import shellcode

from filerexec import config
from filerexec.spool import scan

__all__ = ["SHELLS", "autocomplete", "host_names", "job_names", "script", "with_completion"]

SHELLS = ("bash", "zsh", "fish")


def script(shell: str, prog: str = "filerexec") -> str:
    """The completion script for ``shell``, to be sourced by it (README: Shell completion)."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}: choose one of {', '.join(SHELLS)}")
    return shellcode([prog], shell=shell)


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a TAB and exit, when the shell asked (``_ARGCOMPLETE`` set); else nothing."""
    argcomplete.autocomplete(parser, always_complete_options=False)  # options after a -


def job_names(spool: Path) -> list[str]:
    """Every job the spool knows: files under jobs/, and jobs a host published a status of."""
    listing = scan(spool / "jobs")
    names = set(listing.jobs) if listing is not None else set()
    for host in _host_dirs(spool):
        with contextlib.suppress(OSError):
            names.update(p.relative_to(host).with_suffix("").as_posix()
                         for p in host.rglob("*.yaml") if p != host / "host.yaml")
    return sorted(names)


def host_names(spool: Path) -> list[str]:
    """The hosts that published under status/."""
    return sorted(p.name for p in _host_dirs(spool))


def _host_dirs(spool: Path) -> list[Path]:
    try:
        return [p for p in (spool / "status").iterdir() if p.is_dir()]
    except OSError:
        return []


def _spool_of(parsed: argparse.Namespace) -> Path | None:
    """SPOOL as typed so far, else the config file's `spool:`, else None."""
    if isinstance(spool := getattr(parsed, "spool", None), Path | str):
        return Path(spool)
    where = getattr(parsed, "where", None)  # logs [SPOOL] NAME: a typed folder is the spool
    if where and Path(where[0]).is_dir():
        return Path(where[0])
    try:
        return config.resolve({}, getattr(parsed, "config", None)).settings().spool
    except (config.ConfigError, OSError):
        return None


Completer = Callable[..., Iterable[str]]


def _from_spool(names: Callable[[Path], list[str]]) -> Completer:
    def complete(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        spool = _spool_of(parsed_args)
        return [n for n in names(spool) if n.startswith(prefix)] if spool else []
    return complete


def _spool_or_job(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """`logs [SPOOL] NAME`: the first word may be either; after a folder, only jobs."""
    jobs = list(_from_spool(job_names)(prefix, parsed_args))
    if getattr(parsed_args, "where", None):
        return jobs
    folders: Iterable[str] = DirectoriesCompleter()(prefix)
    return [*jobs, *folders]


# What each kind of argument completes to, by its dest; attached by with_completion.
_COMPLETERS: dict[str, Completer] = {
    "spool": DirectoriesCompleter(),
    "job": _from_spool(job_names),
    "host": _from_spool(host_names),
    "where": _spool_or_job,
}


def with_completion(action: argparse.Action, kind: str) -> argparse.Action:
    """``action`` that completes as ``kind`` ("spool", "job", "host" or "where")."""
    action.completer = _COMPLETERS[kind]  # type: ignore[attr-defined]  # argcomplete's hook
    return action
