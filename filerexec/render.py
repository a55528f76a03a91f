"""Pure renderers of what the host shows in ``status/HOST/``: no I/O, no clock.

Status files are a *view* of the ledger, never read back to decide anything: a
job's status document (DESIGN §4), ``host.yaml``'s document, the synced log's
capped tail with its "earlier bytes not shown" head, and what ``index.md``
(textindex.py) and ``index.html`` (page.py) share: which jobs, and what is left out.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import yaml

from filerexec import APP
from filerexec.machine import Job, State
from filerexec.retry import attempt_text
from filerexec.schedule import Schedule

try:
    from yaml import CSafeDumper as _Dumper
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]

_CUT = f"[{APP}: {{}} earlier bytes not shown]\n"  # heads a log whose start was cut off
_CUT_RE = re.compile(rb"\[" + APP.encode() + rb": (\d+) earlier bytes not shown\]\n")
MAX_REFUSED = 20  # refused file names listed in host.yaml
PAGE_JOBS = 200  # jobs index.md and index.html show; a line says where the others are
T = TypeVar("T")


def timestamp(t: float | None) -> str | None:
    """Local time with its offset, to the second: what a person reads on a phone."""
    if t is None:
        return None
    second = math.floor(t)
    if t - second < _CARRY:  # the microseconds datetime rounds to stay in this second
        return _local_second(second)
    return _local(t)


def _local(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


# Formatting cost ~7 µs (astimezone looks the zone up each time), and a status, index.md
# and index.html show the same few seconds over and over: ~5 % of the daemon's interpreter
# time in a burst (py-spy). A second's text is the same whichever instant in it is shown.
_CARRY = 0.9999  # nearer the next second, datetime's rounding to microseconds may carry
_local_second = functools.lru_cache(maxsize=4096)(_local)


def shown(job: Job) -> tuple[State, str]:
    """The state and reason a job is shown with everywhere (its status, ``host.yaml``'s
    counts, ``index.md``, ``index.html``): a run a scheduler still holds in its queue is
    `pending` with the scheduler's reason, though the machine counts it as running."""
    run = job.run
    if job.running and run is not None and run.waiting is not None and not job.kill:
        return State.PENDING, run.waiting
    return job.state, job.reason


def job_status(job: Job, host: str, conflicts: Iterable[str] = ()) -> dict[str, Any]:
    """The status document of one job (DESIGN §4); absent values are left out."""
    run, version = job.run, job.version
    state, reason = shown(job)
    digest = version.digest if version and version.digest else (run.digest if run else None)
    doc: dict[str, Any] = {
        "job": job.name,
        "host": host,
        "state": state.value,
        "reason": reason,
        "exit_code": run.exit_code if run else None,
        "pid": run.pid if run else None,
        "slurm_job": run.external if run else None,
        "digest": digest[:12] if digest else None,
        "modified": timestamp(version.mtime) if version else None,
        "seen": timestamp(version.seen) if version else None,
        "started": timestamp(run.started) if run else None,
        "finished": timestamp(run.finished) if run else None,
        "runs": job.runs,
        "attempt": attempt_text(version.spec.retry if version and version.spec else None,
                                job.attempt),
        "next": timestamp(job.next_run),
        "schedule": schedule.words() if (schedule := _schedule(job)) else None,
        "queued": job.queued.digest[:12] if job.queued and job.queued.digest else None,
        "deleted": timestamp(job.deleted),
        "conflicts": sorted(conflicts) or None,
        "log": log_name(job.name) if run else None,
    }
    return {k: v for k, v in doc.items() if v is not None}


def _schedule(job: Job) -> Schedule | None:
    return job.version.spec.schedule if job.version and job.version.spec else None


def log_name(name: str) -> str:
    return name.rsplit("/", 1)[-1] + ".log"


def since(job: Job) -> float:
    """When the job last changed state: what ``index.md`` and ``index.html`` sort by."""
    run, version = job.run, job.version
    times = [job.deleted, run.finished if run else None, run.started if run else None,
             version.seen if version else None]
    return max((t for t in times if t is not None), default=0.0)


def newest(items: Iterable[T], limit: int, key: Callable[[T], tuple[float, str]]) -> list[T]:
    """The ``limit`` newest, newest first: the jobs ``index.md`` and ``index.html`` show."""
    return heapq.nlargest(limit, items, key=key)


def left_out(shown: int, total: int) -> str:
    """What ``index.md`` and ``index.html`` say when they show only the newest jobs."""
    return (f"The newest {shown:,} of {total:,} jobs are shown. The other {total - shown:,} "
            "have their status in NAME.yaml and their output in NAME.log, in this folder; "
            f"`{APP} status` lists every job.")


def dump_yaml(doc: Mapping[str, Any]) -> bytes:
    """``doc`` as YAML, byte for byte what ``yaml.dump`` writes.

    A flat document of short one-line strings and integers (every status file) is written
    here, a line a key: its scalars as yaml writes them, which for most is the text itself.
    yaml.dump took ~0.15 ms a status (its representer is Python, even with libyaml's
    emitter): ~0.3 ms of the status writer's time a job in a burst (py-spy).
    """
    try:
        if not doc:
            raise _NotFlat  # "{}"
        return "".join(f"{_key(k)}: {_scalar(v)}\n" for k, v in doc.items()).encode()
    except _NotFlat:
        return _dump(dict(doc)).encode()


def _dump(value: Any) -> str:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


class _NotFlat(Exception):
    """A value dump_yaml leaves to yaml.dump: not a short one-line string or an integer."""


# Written as it is when yaml would: no character that may start or end an indicator, a
# comment or a quote, and (checked next) read back as a string, not a number, bool or date.
_PLAIN = re.compile(r"[A-Za-z0-9_/](?:[A-Za-z0-9_ ./@()+,-]*[A-Za-z0-9_./@()+,-])?")
_STR = "tag:yaml.org,2002:str"
_RESOLVER = yaml.resolver.Resolver()
_SHORT = 200  # longer ones yaml may fold, where the key's width counts


def _key(key: Any) -> str:
    """A key as it is (a status file's are plain words): else yaml may need ``? KEY``."""
    if type(key) is str and _plain(key):
        return key
    raise _NotFlat


@functools.lru_cache(maxsize=8192)  # keys, states, reasons: the same words over and over
def _plain(text: str) -> bool:
    return bool(_PLAIN.fullmatch(text)) and _RESOLVER.resolve(  # type: ignore[no-untyped-call]
        yaml.ScalarNode, text, (True, False)) == _STR


def _scalar(value: Any) -> str:
    if type(value) is int:
        return str(value)
    if type(value) is not str or len(value) > _SHORT:
        raise _NotFlat
    if _plain(value):
        return value
    return _quoted(value)


@functools.lru_cache(maxsize=4096)  # the same few timestamps and reasons, over and over
def _quoted(value: str) -> str:
    text = _dump(value).removesuffix("\n")
    if "\n" in text:  # folded, or followed by the pure-Python dumper's "..." end marker
        raise _NotFlat
    return text


def split_log(data: bytes) -> tuple[int, bytes]:
    """A synced log's output and the offset it starts at in the run's whole output."""
    match = _CUT_RE.match(data)
    return (int(match[1]), data[match.end():]) if match else (0, data)


def counts(jobs: Iterable[Job]) -> dict[str, int]:
    """How many jobs are in each state, for ``host.yaml``."""
    found = Counter(shown(job)[0] for job in jobs)  # by member: .value costs a lookup each
    return {state.value: found[state] for state in State if found[state]}


def log_tail(tail: bytes, size: int, cap: int) -> bytes:
    """The synced log of an output of ``size`` bytes whose last bytes are ``tail``.

    Past ``cap`` the log starts at a line boundary when one is near, headed by how many
    earlier bytes are not shown (``split_log`` reads that back).
    """
    if size <= cap:
        return tail
    cut = tail.find(b"\n")
    if 0 <= cut < 4096:
        tail = tail[cut + 1:]
    return _CUT.format(size - len(tail)).encode() + tail


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What ``host.yaml`` reports, gathered from the parts that know it."""

    host: str
    version: str
    pid: int
    started: float
    watcher: str
    shell: str = "/bin/sh"  # of jobs that name none: what `submit` quotes words for
    last_scan: float | None = None
    spool_problem: str | None = None  # why jobs/ cannot be listed ("spool unavailable")
    ledger_problem: str | None = None
    safe_mode: str | None = None
    stopping: bool = False
    warnings: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)
    notify: tuple[tuple[str, str], ...] = ()  # failing notification targets: last error
    labels: tuple[str, ...] = ()
    drain: str | None = None  # "draining" while runs finish, then "drained"
    syncthing: Mapping[str, str] | None = None  # the scan requests' state (syncthing.py)


def host_state(facts: HostFacts) -> tuple[str, list[str]]:
    """The host's state word and every problem keeping it from working normally."""
    problems = [p for p in (
        facts.spool_problem and f"spool unavailable: {facts.spool_problem}",
        facts.ledger_problem and f"ledger unwritable: {facts.ledger_problem}",
        facts.safe_mode and f"safe mode: {facts.safe_mode}") if p]
    if facts.stopping:
        return "stopped", problems
    if facts.spool_problem is not None:
        return "spool unavailable", problems
    if facts.ledger_problem is not None:
        return "ledger unwritable", problems
    if facts.safe_mode is not None:
        return "safe mode", problems
    return facts.drain or "serving", problems


def host_document(facts: HostFacts, now: float) -> dict[str, Any]:
    """``host.yaml`` without its job counts (added on the writer thread: they are O(jobs))."""
    state, problems = host_state(facts)
    doc: dict[str, Any] = {
        "host": facts.host,
        "version": facts.version,
        "pid": facts.pid,
        "state": state,
        "started": timestamp(facts.started),
        "updated": timestamp(now),
        "last_scan": timestamp(facts.last_scan),
        "watcher": facts.watcher,
        "shell": facts.shell,
    }
    if facts.labels:
        doc["labels"] = list(facts.labels)
    if problems:
        doc["reason"] = "; ".join(problems)
    elif facts.drain is not None and not facts.stopping:
        doc["reason"] = ("running jobs finish, nothing new starts" if facts.drain == "draining"
                         else "nothing runs and nothing new starts") + (
                             "; `filerexec resume` ends it")
    if facts.warnings:
        doc["warnings"] = list(facts.warnings)
    if facts.notify:
        doc["notify"] = dict(facts.notify)
    if facts.syncthing is not None:
        doc["syncthing"] = dict(facts.syncthing)
    if facts.refused:  # names with no status file of their own
        doc["refused"] = [{"file": rel, "reason": reason}
                          for rel, reason in sorted(facts.refused.items())[:MAX_REFUSED]]
    return doc
