"""Reading what hosts published under ``status/``: for ``filerexec status`` and ``logs``.

Read-only, and only of the synced tree: this works on a laptop that merely
syncs the spool as well as on the host itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from filerexec.render import split_log

FOLLOW_INTERVAL = 0.5  # seconds between looks at a followed log


class NotFound(LookupError):
    """No such job, or no way to tell which host's job is meant."""


def _hosts(spool: Path) -> list[Path]:
    root = spool / "status"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _load(path: Path) -> dict[str, Any] | None:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # being replaced, or not ours: a status file is only ever a view
    return doc if isinstance(doc, dict) and "job" in doc else None


def job_docs(spool: Path, hosts: Iterable[str] | None = None,
             states: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every job status document under ``status/``, optionally only some hosts or states."""
    wanted_hosts = {h.casefold() for h in hosts} if hosts else None  # host names ignore case
    wanted_states = set(states) if states else None
    docs = []
    for host_dir in _hosts(spool):
        if wanted_hosts is not None and host_dir.name.casefold() not in wanted_hosts:
            continue
        for path in sorted(host_dir.rglob("*.yaml")):
            if path.name == "host.yaml" and path.parent == host_dir:
                continue
            doc = _load(path)
            if doc is not None and (wanted_states is None or doc.get("state") in wanted_states):
                docs.append(doc)
    return docs


def host_docs(spool: Path, hosts: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every host's ``host.yaml`` (its state, labels, heartbeat), optionally only some hosts."""
    wanted = {h.casefold() for h in hosts} if hosts else None
    docs = []
    for host_dir in _hosts(spool):
        if wanted is not None and host_dir.name.casefold() not in wanted:
            continue
        try:
            doc = yaml.safe_load((host_dir / "host.yaml").read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(doc, dict):
            docs.append({"host": host_dir.name, **doc})
    return docs


def host_shells(spool: Path, hosts: Iterable[str] | None = None) -> dict[str, str]:
    """The shell each host runs jobs in that name none, as its host.yaml says (``submit``
    quotes words for it); only the hosts ``hosts`` names or labels (ignoring case) if given."""
    wanted = {h.casefold() for h in hosts} if hosts else None
    shells = {}
    for doc in host_docs(spool):
        names = {str(doc["host"]).casefold(), *(str(x).casefold() for x in doc.get("labels") or [])}
        if isinstance(doc.get("shell"), str) and (wanted is None or names & wanted):
            shells[str(doc["host"])] = doc["shell"]
    return shells


def hosts_table(docs: list[dict[str, Any]]) -> str:
    """The hosts under ``status/``: name, state (serving, draining, …) and labels."""
    rows = [("HOST", "STATE", "LABELS")] + [
        (str(d["host"]), str(d.get("state", "")),
         ", ".join(str(x) for x in d.get("labels") or [])) for d in docs]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0].ljust(width[0])}  {r[1].ljust(width[1])}  {r[2]}".rstrip()
                     for r in rows)


def table(docs: list[dict[str, Any]]) -> str:
    """A plain-text table of status documents: host, job, state, exit, started, reason."""
    rows = [("HOST", "JOB", "STATE", "EXIT", "STARTED", "REASON")]
    for d in docs:
        rows.append((str(d.get("host", "")), str(d["job"]), str(d.get("state", "")),
                     str(d.get("exit_code", "")), str(d.get("started", "")),
                     str(d.get("reason", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True))
                     + "  " + r[5] for r in rows)


def find_log(spool: Path, name: str, host: str | None = None) -> Path:
    """The log of job ``name``: on ``host``, or on the only host that has such a job."""
    def has_job(host_dir: Path) -> bool:
        return any((host_dir / f"{name}{ext}").exists() for ext in (".yaml", ".log"))

    hosts = _hosts(spool)
    if host is not None:
        hosts = [h for h in hosts if h.name.casefold() == host.casefold()]
    found = [h for h in hosts if has_job(h)]
    if len(found) == 1:
        return found[0] / f"{name}.log"
    if not found:
        where = f"host {host}" if host else "any host"
        raise NotFound(f"no job named {name!r} on {where} in {spool / 'status'}")
    names = ", ".join(h.name for h in found)
    raise NotFound(f"several hosts have a job named {name!r} ({names}): choose one with --host")


def new_output(printed: int, log: bytes) -> tuple[bytes, int]:
    """What a follower that has printed ``printed`` bytes of the run's output shows next.

    The daemon replaces the synced log with the run's last bytes (headed by how many
    earlier bytes were cut), so the log's content is placed in the whole output first.
    """
    offset, body = split_log(log)
    if printed < offset:  # the log moved on faster than we looked
        note = f"[filerexec: {offset - printed} bytes not shown]\n".encode()
        return note + body, offset + len(body)
    return body[printed - offset:], max(printed, offset + len(body))


def _run_of(status: Path) -> tuple[Any, float | None]:
    """Which run a status file is about (its run count) and when that run started."""
    doc = _load(status) or {}
    started = doc.get("started")
    when = None
    if isinstance(started, datetime):
        when = started.timestamp()
    elif isinstance(started, str):
        try:
            when = datetime.fromisoformat(started).timestamp()
        except ValueError:
            when = None
    return doc.get("runs"), when


def follow(log: Path, interval: float = FOLLOW_INTERVAL) -> Iterator[bytes]:
    """The log's content, then whatever is added to it, run after run; never ends."""
    status = log.with_suffix(".yaml")
    printed, run = 0, _run_of(status)[0]
    while True:
        runs, started = _run_of(status)
        try:
            data, mtime = log.read_bytes(), log.stat().st_mtime
        except OSError:
            data, mtime = b"", 0.0
        if runs != run:
            # A new run: its log replaces the old one once the daemon first publishes it.
            if started is not None and mtime + 1 < started:
                data = b""
            else:
                run, printed = runs, 0
                yield b"[filerexec: a new run]\n"
        if runs == run:
            chunk, printed = new_output(printed, data)
            if chunk:
                yield chunk
        time.sleep(interval)
