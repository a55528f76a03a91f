"""Pure rules of notifications (DESIGN §9): which state change is news, for which targets,
the event it becomes, and how each kind of target is addressed. No I/O, no clock.

Targets are Apprise-style URLs in the host's config (never in the synced folder):
``ntfy(s)://`` and ``json(s)://`` are sent by the standard library, ``command:`` runs a
local program, every other scheme goes through Apprise (``pip install filerexec[notify]``).
The sending itself is in sender.py; the outbox in the ledger and the worker in delivery.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.header import Header
from typing import Any

from filerexec import APP
from filerexec.machine import Job, State
from filerexec.render import timestamp
from filerexec.spec import JobSpec

# States a job comes to rest in: only these are news (pending and running are not).
ENDED = frozenset({State.SUCCEEDED, State.FAILED, State.KILLED, State.STOPPED, State.EXPIRED,
                   State.INVALID, State.REJECTED, State.LOST, State.SKIPPED})
EVENTS = tuple(s.value for s in State if s in ENDED)  # what `notify_on:` may name
RUN_ENDS = frozenset({State.SUCCEEDED, State.FAILED, State.KILLED, State.LOST})
TAIL_BYTES = 2048  # an event's log_tail is at most this long (and notify_log_tail lines)
BUILTIN = {"ntfy": "ntfy", "ntfys": "ntfy", "json": "json", "jsons": "json",
           "command": "command"}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event for one target, as the outbox records it."""

    id: str
    target: str
    event: Mapping[str, Any]
    created: float

    def payload(self) -> str:
        return json.dumps(dict(self.event), sort_keys=True, ensure_ascii=False)


def is_news(before: tuple[State, str | None] | None, after: Job) -> bool:
    """Whether ``after`` came to rest since ``before`` (its committed state and run)."""
    if after.state not in ENDED:
        return False
    return before is None or before != (after.state, _run_key(after))


def committed_key(job: Job) -> tuple[State, str | None]:
    """What ``is_news`` compares: the state and which run or version it is about."""
    return job.state, _run_key(job)


def _run_key(job: Job) -> str | None:
    if job.state in RUN_ENDS and job.run is not None:
        return job.run.run_id
    version = job.version
    if version is None:
        return None
    return version.digest or f"seen {version.seen}"


def event_id(host: str, job: Job) -> str:
    """Unique per host, job, run (or version) and state: a receiver drops duplicates by it."""
    key = "\0".join((host, job.name, str(_run_key(job)), job.state.value))
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def make_event(job: Job, host: str, log_tail: str) -> dict[str, Any]:
    """The event: what happened to the job, with no environment values in it."""
    run = job.run if job.state in RUN_ENDS else None
    digest = job.version.digest if job.version and job.version.digest else (
        run.digest if run else None)
    finished = run.finished if run else None
    return {
        "id": event_id(host, job),
        "job": job.name,
        "host": host,
        "state": job.state.value,
        "reason": job.reason,
        "exit_code": run.exit_code if run else None,
        "started": timestamp(run.started) if run else None,
        "finished": timestamp(finished),
        "duration_s": round(finished - run.started, 3) if run and finished else None,
        "digest": digest[:12] if digest else None,
        "runs": job.runs,
        "log_tail": log_tail,
    }


def trial_event(host: str, now: float) -> dict[str, Any]:
    """What ``filerexec notify test`` sends: an event of its own kind, clearly a test."""
    return {"id": hashlib.sha256(f"{host}\0test\0{now}".encode()).hexdigest()[:20],
            "job": "(test)", "host": host, "state": "test",
            "reason": f"a test message from {APP} on {host}", "exit_code": None,
            "started": None, "finished": timestamp(now), "duration_s": None, "digest": None,
            "runs": 0, "log_tail": "", "test": True}


def cap_tail(data: bytes, lines: int) -> str:
    """The last ``lines`` lines of output, at most ``TAIL_BYTES``; "" when ``lines`` is 0."""
    if lines <= 0:
        return ""
    text = data[-TAIL_BYTES:].decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.split("\n")[-lines:])


@dataclass(frozen=True, slots=True)
class Choice:
    """Whom a job's events go to: the job file's ``notify:`` and ``notify_on:``, if set."""

    targets: tuple[str, ...] | None = None  # None: the host's notify_default; (): none
    on: tuple[str, ...] | None = None  # None: the host's notify_on


def choice_of(job: Job) -> Choice:
    """The job file's choice: the version last read, or, once the file is gone, the one its
    run was launched with (a run killed by deleting the file); else the host's."""
    spec = job.version.spec if job.version is not None else None
    if spec is not None:
        return Choice(None if spec.notify is None else spec.notify.names, spec.notify_on)
    if job.run is not None and job.state in RUN_ENDS:
        return Choice(job.run.notify, job.run.notify_on)
    return Choice()


def told(spec: JobSpec) -> str | None:
    """Whom a job file says its end is told, in words (``validate``); None if it says not."""
    if spec.notify is not None and not spec.notify.names:
        return "tells no one when it ends (notify: false)"
    if spec.notify is None and spec.notify_on is None:
        return None
    whom = "the host's notify_default" if spec.notify is None else ", ".join(spec.notify.names)
    when = ("in the host's notify_on states" if spec.notify_on is None
            else " or ".join(spec.notify_on) or "in no state")
    return f"tells {whom} when it ends {when} (the host checks the names)"


def targets_for(job: Job, choice: Choice, default: Sequence[str], on: Sequence[str],
                known: Iterable[str]) -> list[str]:
    """The targets an event of ``job``'s state goes to (known targets only)."""
    states = choice.on if choice.on is not None else on
    if job.state.value not in states:
        return []
    names = choice.targets if choice.targets is not None else tuple(default)
    valid = set(known)
    return [n for n in dict.fromkeys(names) if n in valid]


def kind(url: str) -> str:
    """ntfy, json, command, or apprise (every other scheme)."""
    return BUILTIN.get(url.split(":", 1)[0].lower(), "apprise")


def target_problems(targets: Mapping[str, str], default: Iterable[str],
                    apprise: bool) -> dict[str, str]:
    """What is wrong with the host's targets, by name: said at start-up (log, host.yaml)."""
    problems = {}
    for name, url in sorted(targets.items()):
        if kind(url) == "apprise" and not apprise:
            problems[name] = (f"{url.split(':', 1)[0]}:// needs Apprise (pip install "
                              f"'{APP}[notify]'); its events wait until then")
    for name in default:
        if name not in targets:
            problems[name] = (f"named by notify_default, but not a target (the targets: "
                              f"{', '.join(sorted(targets)) or 'none'})")
    return problems


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP POST, ready to send."""

    url: str
    headers: Mapping[str, str]
    body: bytes


def _split(url: str) -> tuple[urllib.parse.SplitResult, dict[str, str]]:
    parts = urllib.parse.urlsplit(url)
    headers = {}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        if parts.password is not None:
            pair = f"{user}:{urllib.parse.unquote(parts.password)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:  # ntfy's access tokens: ntfys://tk_…@host/topic
            headers["Authorization"] = f"Bearer {user}"
    return parts, headers


def _http_url(parts: urllib.parse.SplitResult, path: str) -> str:
    scheme = "https" if parts.scheme.lower().endswith("s") else "http"
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((scheme, netloc, path, parts.query, ""))


def title(event: Mapping[str, Any]) -> str:
    return f"{event['job']} {event['state']} on {event['host']}"


def message(event: Mapping[str, Any]) -> str:
    """A notification's text: the reason, then the log's last lines."""
    text = str(event.get("reason") or event["state"])
    return text + (f"\n\n{event['log_tail']}" if event.get("log_tail") else "")


def _header(text: str) -> str:
    """A header value: RFC 2047 when it is not ASCII (ntfy decodes it since 2.4)."""
    return text if text.isascii() else Header(text, "utf-8").encode()


def ntfy_request(url: str, event: Mapping[str, Any]) -> Request:
    """ntfy's plain-text publish: the message as the body, Title/Priority/Tags headers.

    ``ntfys://host/topic`` (``ntfys://topic`` alone: ntfy.sh); user:password@ is sent as
    Basic authentication, a user alone as an access token.
    """
    parts, headers = _split(url)
    path = parts.path if parts.path.strip("/") else f"/{parts.hostname}"
    if not parts.path.strip("/"):
        parts = urllib.parse.urlsplit(f"{parts.scheme}://ntfy.sh")
    bad = event["state"] in ("failed", "killed", "lost", "rejected", "invalid")
    headers.update({"Title": _header(title(event)), "Priority": "high" if bad else "default",
                    "Tags": "warning" if bad else "white_check_mark",
                    "Content-Type": "text/plain; charset=utf-8",
                    "X-Filerexec-Id": str(event["id"])})
    return Request(_http_url(parts, path), headers, message(event).encode())


def json_request(url: str, event: Mapping[str, Any]) -> Request:
    """A webhook: the event as a JSON POST (``json://`` is http, ``jsons://`` https)."""
    parts, headers = _split(url)
    headers["Content-Type"] = "application/json"
    body = json.dumps(dict(event), ensure_ascii=False).encode()
    return Request(_http_url(parts, parts.path or "/"), headers, body)


def command_env(event: Mapping[str, Any]) -> dict[str, str]:
    """A ``command:`` target's view of the event: FILEREXEC_ID, FILEREXEC_JOB, …"""
    return {f"{APP.upper()}_{key.upper()}": "" if value is None else str(value)
            for key, value in event.items()}
