"""The reconciler on its own: a real jobs/ folder, events collected instead of applied."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from filerexec.config import Settings
from filerexec.machine import Event, FileMissing, FileRead, Job, Readiness
from filerexec.reconcile import Reconciler
from filerexec.spec import JobSpec, parse_job


def make(tmp_path: Path, admit: object = None) -> tuple[Reconciler, list[tuple[str, Event]]]:
    spool = tmp_path / "spool"
    (spool / "jobs").mkdir(parents=True)
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state")
    events: list[tuple[str, Event]] = []
    jobs: dict[str, Job] = {}

    def apply(name: str, event: Event) -> None:
        events.append((name, event))
        jobs.setdefault(name, Job(name))

    def parse(name: str, data: bytes, now: float) -> JobSpec:
        return parse_job(data, name)

    return Reconciler(settings, jobs, apply, admit or parse), events  # type: ignore[arg-type]


T = 2e9  # "now" in these tests; files are dated long before


def write_old(path: Path, text: str) -> None:
    path.write_text(text)
    os.utime(path, (1e9, 1e9))  # long settled


def test_reads_only_what_changed_and_reports_missing(tmp_path: Path) -> None:
    rec, events = make(tmp_path)
    jobs = rec.settings.jobs_dir
    write_old(jobs / "a.yaml", "commands: ls\n")
    rec.reconcile(T + 0, {})
    [(name, event)] = events
    assert name == "a" and isinstance(event, FileRead)
    assert event.version.readiness is Readiness.VALID
    rec.reconcile(T + 1, {})
    assert len(events) == 1  # unchanged stat: not read again
    (jobs / "a.yaml").unlink()
    rec.reconcile(T + 2, {})
    assert isinstance(events[-1][1], FileMissing)


def test_unwritable_replay_memory_means_not_ready_and_a_retry(tmp_path: Path) -> None:
    calls = []

    def admit(name: str, data: bytes, now: float) -> JobSpec:
        calls.append(now)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return parse_job(data, name)

    rec, events = make(tmp_path, admit)
    write_old(rec.settings.jobs_dir / "s.yaml", "commands: ls\n")
    rec.reconcile(T + 0, {})
    first = events[-1][1]
    assert isinstance(first, FileRead) and first.version.readiness is Readiness.NOT_READY
    assert "ledger" in (first.version.problem or "")
    rec.reconcile(T + 1, {})  # same stat, but not read successfully yet: read again
    second = events[-1][1]
    assert isinstance(second, FileRead) and second.version.readiness is Readiness.VALID


def test_missing_jobs_folder_is_news_not_missing_files(tmp_path: Path) -> None:
    rec, events = make(tmp_path)
    write_old(rec.settings.jobs_dir / "a.yaml", "commands: ls\n")
    rec.reconcile(T + 0, {})
    os.rename(rec.settings.jobs_dir, tmp_path / "aside")
    assert rec.reconcile(T + 1, {}) is True and not rec.spool_available
    assert not any(isinstance(e, FileMissing) for _, e in events)
