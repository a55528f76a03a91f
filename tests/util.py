"""Small helpers shared by the tests: poll a condition, never sleep a guess."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | Literal[False] | None], timeout: float = 10.0,
             interval: float = 0.02, what: str = "condition") -> T:
    """Call predicate until it returns something truthy; return that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def holds(predicate: Callable[[], object], seconds: float, interval: float = 0.1,
          what: str = "condition") -> None:
    """Check that predicate stays true for ``seconds`` of real time (for what a real
    program outside the test's clock, such as a Slurm controller, must keep doing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(interval)


def index_jobs(text: str) -> dict[str, dict[str, str]]:
    """``index.md`` read back: each job's name → its facts (``state``, ``since``, ``exit
    code``, ``reason``, ``sync → start``, ``next``), as a person reads the blocks."""
    from filerexec.textindex import SEP

    jobs: dict[str, dict[str, str]] = {}
    facts: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("## "):
            name, state = line[3:].rsplit(SEP, 1) if SEP in line else (line[3:], "")
            facts = jobs[name] = {"state": state} if state else {}
        elif line.startswith("- ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            facts[key] = value
        elif line.startswith("  ") and key:  # a wrapped value goes on
            facts[key] += " " + line.strip()
        else:
            key = ""
    return jobs


def index_states(text: str) -> dict[str, str]:
    """``index.md``'s jobs: name → state (with " (deleted)" for a deleted job's)."""
    return {name: facts.get("state", "") for name, facts in index_jobs(text).items()}


def overflow_inotify(paths: Sequence[Path]) -> None:
    """Write to two files, alternately, more times than the kernel's inotify queue holds
    (it merges only repeated events), creating them if need be: the queue overflows
    for whoever is not reading it just now."""
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    fds = [os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) for path in paths]
    try:
        for i in range(queue + 1000):
            os.write(fds[i % len(fds)], b"x")
    finally:
        for fd in fds:
            os.close(fd)
