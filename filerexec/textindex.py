"""Pure renderer of ``status/HOST/index.md``: every job at a glance, in 40 columns.

Phones open it in whatever text viewer the sync app hands it to, often without Markdown
and on a narrow screen, so it is plain lines first: one block per job, newest first, a
heading with the name and the state, then short ``- key: value`` lines (wrapped, or cut
with an ellipsis, to ``WIDTH``); Markdown viewers show the same as headings and lists.
Only a word that cannot be broken (a long name, a URL) passes the width, alone on its line.
The same jobs as ``index.html`` (``newest``) and the same line saying what is left out.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from filerexec import APP
from filerexec.machine import Job, State
from filerexec.render import PAGE_JOBS, left_out, newest, shown, since, timestamp

WIDTH = 40  # columns of a phone's text viewer in portrait, at a readable size
REASON_LINES = 4  # a longer reason is cut with an ellipsis (the job's NAME.yaml has it all)
SEP = " — "  # between a job's name and its state in its heading

Row = tuple[Job, float, str]  # a job, when it last changed, its block


def render_index(jobs: Iterable[Job], host: str, now: float,
                 rows: dict[str, Row] | None = None, labels: Iterable[str] = (),
                 limit: int = PAGE_JOBS) -> str:
    """The newest ``limit`` jobs, one block each, and what is left out.

    ``rows`` caches each job's block between calls (reused while the job is unchanged),
    made only once the job is shown: formatting 10,000 timestamps every time one job
    changed cost ~0.2 s of the GIL.
    """
    cache = {} if rows is None else rows
    entries = []
    for job in jobs:
        hit = cache.get(job.name)
        if hit is None or hit[0] is not job:
            hit = cache[job.name] = (job, since(job), "")  # its block: once it is shown
        entries.append(hit)
    if len(cache) > len(entries):  # forget jobs that are gone
        names = {e[0].name for e in entries}
        for name in [n for n in cache if n not in names]:
            del cache[name]
    listed = newest(entries, limit, key=lambda e: (e[1], e[0].name))
    lines = [*heading("#", f"{APP} on {host}", None), "", f"Updated {_when(now)}."]
    if labels := list(labels):
        lines += wrap(f"Labels: {', '.join(labels)}.")
    if len(listed) < len(entries):
        lines += ["", *wrap(left_out(len(listed), len(entries)))]
    elif not entries:
        lines += ["", *wrap("No jobs yet: drop a job file into jobs/.")]
    for job, changed, text in listed:
        if not text:
            text = block(job)
            cache[job.name] = (job, changed, text)
        lines += ["", text]
    return "\n".join(lines) + "\n"


def block(job: Job) -> str:
    """One job: ``## name — state``, then its facts, each line at most ``WIDTH`` wide."""
    word, reason = shown(job)  # a run a scheduler still queues is pending, with its reason
    state = word.value + (" (deleted)" if job.deleted else "")
    run = job.run
    facts = [("since", _when(since(job)))]
    if run is not None and run.exit_code is not None:
        facts.append(("exit code", str(run.exit_code)))
    if reason and (run is None or reason != f"exit code {run.exit_code}"):
        facts.append(("reason", reason))
    if delay := delays(job):
        facts.append(("sync → start", delay))
    if job.next_run is not None:
        facts.append(("next", _when(job.next_run)))
    lines = heading("##", job.name, state)
    for key, value in facts:
        lines += wrap(f"{key}: {value}", "- ", "  ", REASON_LINES)
    return "\n".join(lines)


def heading(marker: str, title: str, state: str | None) -> list[str]:
    """``## name — state`` when it fits; else the name alone, and the state on a line below."""
    line = f"{marker} {title}" + ("" if state is None else f"{SEP}{state}")
    if len(line) <= WIDTH:
        return [line]
    return [f"{marker} {title}", *([] if state is None else [f"- state: {state}"])]


def wrap(text: str, first: str = "", rest: str = "", lines: int | None = None) -> list[str]:
    """``text`` in lines of ``WIDTH``, broken between words only; cut with … past ``lines``."""
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False, max_lines=lines,
                         placeholder=" …")


def _when(t: float | None) -> str:
    return (timestamp(t) or "").replace("T", " ")


def delays(job: Job) -> str:
    """Sync delay (file mtime → first seen here) and host delay (seen → started), compactly.

    "4s → 0s": the file reached this host 4 s after it was saved, and started at once;
    "4s → …": still waiting to start. A negative sync delay means the clocks disagree.
    """
    version, run = job.version, job.run
    if version is None or version.seen is None or version.mtime is None:
        return ""
    text = _seconds(version.seen - version.mtime)
    if run is not None and run.digest == version.digest and run.started >= version.seen:
        return f"{text} → {_seconds(run.started - version.seen)}"
    return f"{text} → …" if shown(job)[0] is State.PENDING else text


def _seconds(delta: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if abs(delta) >= size:
            return f"{round(delta / size)}{unit}"
    return f"{round(delta)}s"
