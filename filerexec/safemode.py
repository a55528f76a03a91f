"""Restart storms: a daemon started too often in a short time stops starting jobs.

A job that crashes or restarts its daemon, or a daemon that dies on something in
its spool, restarts under a service manager again and again. Past ``limit``
starts within ``window`` seconds the daemon enters *safe mode*: it adopts,
finishes and kills as usual but starts nothing new, until a person deletes the
``safe-mode`` file in the state folder (its text says why and how). Starts are
remembered in the ledger's meta table; this module only decides and keeps the file.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "safe-mode"
STARTS_KEY = "starts"


def recent_starts(recorded: str | None, now: float, window: float) -> list[float]:
    """The start times (as stored in the ledger) within ``window`` seconds before ``now``."""
    try:
        times = json.loads(recorded) if recorded else []
    except ValueError:
        times = []
    if not isinstance(times, list):
        return []
    return [float(t) for t in times
            if isinstance(t, int | float) and now - window <= float(t) <= now]


def storm(starts: list[float], limit: int, window: float) -> str | None:
    """Why ``starts`` is a restart storm, or None if it is not."""
    if len(starts) <= limit:
        return None
    return (f"restart storm: {len(starts)} daemon starts within {window / 60:g} minutes "
            f"(more than {limit})")


def enter(state_dir: Path, why: str) -> str:
    """Write the safe-mode file; return the sentence for host.yaml and the log."""
    path = state_dir / FILE
    reason = f"{why}; no new job is started until a person deletes {path}"
    if not path.exists():
        path.write_text(reason + "\n")
    return reason


def current(state_dir: Path) -> str | None:
    """The safe-mode reason while the file exists, else None."""
    try:
        return (state_dir / FILE).read_text().strip() or "safe mode"
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"safe mode (its file cannot be read: {e.strerror})"
