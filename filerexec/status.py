"""Everything the host writes into the synced tree: ``status/HOST/``.

Status files are a *view* of the ledger, never read back to decide anything.
Every write is atomic: a temp file named ``.~filerexec-*.tmp`` (a pattern
Dropbox and Office-aware clients skip, and Syncthing users put in .stignore),
fsync, rename over the target. The host never writes under ``jobs/``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from filerexec.machine import Job, State
from filerexec.names import job_name

TEMP_PREFIX = ".~filerexec-"
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def timestamp(t: float | None) -> str | None:
    """Local time with its offset, to the second: what a person reads on a phone."""
    if t is None:
        return None
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def job_status(job: Job, host: str, conflicts: Iterable[str] = ()) -> dict[str, Any]:
    """The status document of one job (DESIGN §4); absent values are left out."""
    run, version = job.run, job.version
    digest = version.digest if version and version.digest else (run.digest if run else None)
    doc: dict[str, Any] = {
        "job": job.name,
        "host": host,
        "state": job.state.value,
        "reason": job.reason,
        "exit_code": run.exit_code if run else None,
        "pid": run.pid if run else None,
        "digest": digest[:12] if digest else None,
        "modified": timestamp(version.mtime) if version else None,
        "seen": timestamp(version.seen) if version else None,
        "started": timestamp(run.started) if run else None,
        "finished": timestamp(run.finished) if run else None,
        "runs": job.runs,
        "queued": job.queued.digest[:12] if job.queued and job.queued.digest else None,
        "deleted": timestamp(job.deleted),
        "conflicts": sorted(conflicts) or None,
        "log": log_name(job.name) if run else None,
    }
    return {k: v for k, v in doc.items() if v is not None}


def log_name(name: str) -> str:
    return name.rsplit("/", 1)[-1] + ".log"


def since(job: Job) -> float:
    """When the job last changed state: what ``index.md`` sorts by."""
    run, version = job.run, job.version
    times = [job.deleted, run.finished if run else None, run.started if run else None,
             version.seen if version else None]
    return max((t for t in times if t is not None), default=0.0)


def render_index(jobs: Iterable[Job], host: str, now: float) -> str:
    """A Markdown table of every job, newest first, that phones render."""
    lines = [
        f"# filerexec on {host}",
        "",
        f"Updated {timestamp(now)}.",
        "",
        "| job | state | since | exit |",
        "|---|---|---|---|",
    ]
    for job in sorted(jobs, key=since, reverse=True):
        code = job.run.exit_code if job.run and job.run.exit_code is not None else ""
        state = job.state.value + (" (deleted)" if job.deleted else "")
        when = (timestamp(since(job)) or "").replace("T", " ")
        lines.append(f"| {_cell(job.name)} | {state} | {when} | {code} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def dump_yaml(doc: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, width=1000).encode()


class StatusDir:
    """The folder ``status/HOST/`` of one host: the only place it writes to."""

    def __init__(self, spool: Path, host: str) -> None:
        self.root = spool / "status" / host
        self.host = host

    def job_path(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.yaml"

    def log_path(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.log"

    def write_job(self, job: Job, conflicts: Iterable[str] = ()) -> None:
        atomic_write(self.job_path(job.name), dump_yaml(job_status(job, self.host, conflicts)))

    def write_index(self, jobs: Iterable[Job], now: float) -> None:
        atomic_write(self.root / "index.md", render_index(jobs, self.host, now).encode())

    def write_host(self, doc: Mapping[str, Any]) -> None:
        atomic_write(self.root / "host.yaml", dump_yaml(doc))

    def publish_log(self, name: str, output: Path, cap: int) -> None:
        """Copy the last ``cap`` bytes of a run's raw output into the synced log."""
        try:
            with open(output, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - cap))
                tail = f.read(cap)
        except FileNotFoundError:
            size, tail = 0, b""
        if size > cap:
            cut = tail.find(b"\n")  # start the tail at a line boundary when one is near
            if 0 <= cut < 4096:
                tail = tail[cut + 1:]
            head = f"[filerexec: {size - len(tail)} earlier bytes not shown]\n".encode()
            tail = head + tail
        atomic_write(self.log_path(name), tail)

    def remove_job(self, name: str) -> None:
        for path in (self.job_path(name), self.log_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _checked(name: str) -> str:
    """A job name that is safe below status/HOST/ (names.py decides), or ValueError.

    The reconciler only ever makes jobs of such names; checking again where the path is
    built means no other way in (an old ledger, a future caller) can write elsewhere.
    """
    if job_name(f"{name}.yaml") != name:
        raise ValueError(f"{name!r} is not a safe job name")
    return name


def counts(jobs: Iterable[Job]) -> dict[str, int]:
    """How many jobs are in each state, for ``host.yaml``."""
    result = {state.value: 0 for state in State}
    for job in jobs:
        result[job.state.value] += 1
    return {k: v for k, v in result.items() if v}
