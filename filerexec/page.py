"""Pure renderer of ``status/HOST/index.html``: one self-contained page every phone shows.

iOS Quick Look, Android's HTML viewers and every sync app's preview open it: inline CSS,
no script, nothing fetched, nothing wider than the screen. The host's heartbeat comes
first, then the newest jobs (state as a word and a colour, reason, exit code, times and
the last lines of the log, every character HTML-escaped). No I/O, no clock.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

from filerexec import APP
from filerexec.machine import Job, State
from filerexec.render import (
    PAGE_JOBS,
    left_out,
    log_name,
    newest,
    shown,
    since,
    split_log,
    timestamp,
)

TAIL_LINES = 10  # log lines shown per job
TAIL_BYTES = 2000  # and at most this much of them

COLOURS = {  # a state's colour; the word is always there too (colour is never the only cue)
    State.PENDING: "#8a6d00", State.RUNNING: "#0055cc", State.SUCCEEDED: "#1a7f37",
    State.FAILED: "#c62828", State.KILLED: "#b3261e", State.STOPPED: "#5f6368",
    State.EXPIRED: "#7b5800", State.INVALID: "#a8326d", State.REJECTED: "#a8326d",
    State.LOST: "#6a1b9a", State.SCHEDULED: "#0055cc", State.SKIPPED: "#8d6e63",
}

_CSS = """\
*{box-sizing:border-box}
body{margin:0;padding:12px;font:16px/1.4 -apple-system,system-ui,sans-serif;color:#1b1b1b;
background:#fafafa;max-width:100%;overflow-wrap:anywhere}
h1{font-size:1.3em;margin:0 0 4px}
.beat{margin:0 0 12px;color:#444}
.note{background:#fff4ce;padding:8px;border-radius:6px}
.job{background:#fff;border-left:6px solid var(--c);border-radius:6px;padding:8px 10px;
margin:0 0 10px;box-shadow:0 1px 2px #0002}
.job h2{font-size:1.05em;margin:0;display:flex;flex-wrap:wrap;gap:6px;align-items:baseline}
.state{color:#fff;background:var(--c);border-radius:4px;padding:0 6px;font-size:.85em}
.reason{margin:4px 0}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:4px 0;font-size:.9em}
dt{color:#666}dd{margin:0}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f1f1f1;padding:6px;margin:6px 0 0;
font-size:.8em;max-width:100%}
"""


@dataclass(slots=True)
class PageCache:
    """What a heartbeat can reuse from the last page: with 10,000 jobs, choosing the newest
    and counting the states took ~35 ms, twice a minute, for a page that differs only in
    its heartbeat line. Reused while the very same job records are passed (by identity)."""

    jobs: list[Job] = field(default_factory=list)
    on_page: list[Job] = field(default_factory=list)
    tally: str = ""
    sections: dict[str, tuple[Job, bytes, str]] = field(default_factory=dict)

    def choose(self, jobs: list[Job], limit: int) -> None:
        if len(jobs) != len(self.jobs) or not all(map(operator.is_, jobs, self.jobs)):
            self.jobs, self.tally = jobs, _tally(jobs)
            self.on_page = newest(jobs, limit, key=lambda j: (since(j), j.name))

    def section(self, job: Job, log: bytes) -> str:
        hit = self.sections.get(job.name)
        if hit is None or hit[0] is not job or hit[1] != log:
            hit = self.sections[job.name] = (job, log, _job(job, log))
        return hit[2]

    def forget_others(self) -> None:
        if len(self.sections) > 2 * len(self.on_page):  # jobs no longer on the page
            keep = {job.name for job in self.on_page}
            self.sections = {k: v for k, v in self.sections.items() if k in keep}


def render_page(jobs: Iterable[Job], host_doc: Mapping[str, Any], tail: Callable[[str], bytes],
                limit: int = PAGE_JOBS, cache: PageCache | None = None) -> str:
    """The page: ``host_doc`` is host.yaml's document; ``tail(name)`` a job's synced log;
    ``cache`` what the last call with it found (see `PageCache`)."""
    listed = list(jobs)
    page = cache if cache is not None else PageCache()
    page.choose(listed, limit)
    on_page = page.on_page
    host = str(host_doc.get("host", ""))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(APP)} on {escape(host)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(APP)} on {escape(host)}</h1>",
        _heartbeat(host_doc, page.tally),
    ]
    if len(listed) > len(on_page):
        parts.append(f'<p class="note">{escape(left_out(len(on_page), len(listed)))}</p>')
    if not listed:
        parts.append("<p>No jobs yet: drop a job file into jobs/.</p>")
    parts.extend(page.section(job, tail(job.name) if job.run else b"") for job in on_page)
    page.forget_others()
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _tally(jobs: list[Job]) -> str:
    states = Counter(shown(job)[0].value for job in jobs)
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no jobs"


def _heartbeat(doc: Mapping[str, Any], tally: str) -> str:
    state = escape(str(doc.get("state", "")))
    reason = f" ({escape(str(doc['reason']))})" if doc.get("reason") else ""
    labels = doc.get("labels")
    labelled = f" · labels: {escape(', '.join(map(str, labels)))}" if labels else ""
    return (f'<p class="beat"><b>{state}</b>{reason} · heartbeat {_when(doc.get("updated"))}'
            f" · up since {_when(doc.get('started'))}{labelled}<br>{escape(tally)}</p>")


def _job(job: Job, log: bytes) -> str:
    run = job.run
    shown_state, reason_text = shown(job)
    state = shown_state.value + (" (deleted)" if job.deleted else "")
    rows = []
    if run is not None:
        rows += [("exit code", "" if run.exit_code is None else str(run.exit_code)),
                 ("started", _when(timestamp(run.started))),
                 ("finished", _when(timestamp(run.finished))),
                 ("took", duration(run.finished - run.started) if run.finished else "")]
    rows.append(("runs", str(job.runs)))
    rows.append(("next run", _when(timestamp(job.next_run))))  # every: / cron: (issue 16)
    cells = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows if v)
    lines = last_lines(log)
    pre = f'<pre title="{escape(log_name(job.name))}">{escape(lines)}</pre>' if lines else ""
    reason = f'<p class="reason">{escape(reason_text)}</p>' if reason_text else ""
    return (f'<section class="job" style="--c:{COLOURS[shown_state]}">'
            f'<h2><span>{escape(job.name)}</span><span class="state">{escape(state)}</span></h2>'
            f"{reason}<dl>{cells}</dl>{pre}</section>")


def last_lines(log: bytes, lines: int = TAIL_LINES, cap: int = TAIL_BYTES) -> str:
    """The last lines of a synced log, decoded leniently, at most ``cap`` bytes."""
    _, data = split_log(log)
    text = data[-cap:].decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.split("\n")[-lines:])


def duration(seconds: float) -> str:
    """A run's length as a person says it: "850 ms", "42 s", "2 min 38 s", "3 h 5 min"."""
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _when(iso: object) -> str:
    return escape(str(iso).replace("T", " ")) if iso else ""
