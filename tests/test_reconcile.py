"""The reconciler on its own: a real jobs/ folder, events collected instead of applied."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from filerexec.admission import Admission, Verdict
from filerexec.config import Settings
from filerexec.machine import FileMissing, FileRead, Job, Observed, Readiness
from filerexec.reconcile import Admit, Reconciler
from filerexec.signing import sign
from filerexec.spec import parse_job


class Recorder:
    """The reconciler's observations, applied as the job table would (a job per name)."""

    def __init__(self, rec: Reconciler, jobs: dict[str, Job]) -> None:
        self.rec, self.jobs = rec, jobs
        self.events: list[Observed] = []

    def reconcile(self, now: float) -> None:
        for seen in self.rec.reconcile(now, {}).events:
            self.events.append(seen)
            self.jobs.setdefault(seen.name, Job(seen.name))


def make(tmp_path: Path, admit: Admit | None = None) -> tuple[Reconciler, Recorder]:
    spool = tmp_path / "spool"
    (spool / "jobs").mkdir(parents=True)
    settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state")
    jobs: dict[str, Job] = {}
    rec = Reconciler(settings, jobs, admit or Admission(settings, tmp_path / "keys", None))
    return rec, Recorder(rec, jobs)


T = 2e9  # "now" in these tests; files are dated long before


def write_old(path: Path, text: str) -> None:
    path.write_text(text)
    os.utime(path, (1e9, 1e9))  # long settled


def test_reads_only_what_changed_and_reports_missing(tmp_path: Path) -> None:
    rec, seen = make(tmp_path)
    jobs = rec.settings.jobs_dir
    write_old(jobs / "a.yaml", "commands: ls\n")
    seen.reconcile(T + 0)
    [observed] = seen.events
    assert observed.name == "a" and isinstance(observed.event, FileRead)
    assert observed.event.version.readiness is Readiness.VALID
    seen.reconcile(T + 1)
    assert len(seen.events) == 1  # unchanged stat: not read again
    (jobs / "a.yaml").unlink()
    seen.reconcile(T + 2)
    assert isinstance(seen.events[-1].event, FileMissing)


def test_an_undecided_verdict_is_read_again(tmp_path: Path) -> None:
    calls = []

    def admit(name: str, data: bytes, now: float) -> Verdict:
        calls.append(now)
        if len(calls) == 1:
            return Verdict(Readiness.NOT_READY, problem="cannot check its signature yet")
        return Verdict(Readiness.VALID, parse_job(data, name))

    rec, seen = make(tmp_path, admit)
    write_old(rec.settings.jobs_dir / "s.yaml", "commands: ls\n")
    seen.reconcile(T + 0)
    first = seen.events[-1].event
    assert isinstance(first, FileRead) and first.version.readiness is Readiness.NOT_READY
    seen.reconcile(T + 1)  # same stat, but not decided yet: read again
    second = seen.events[-1].event
    assert isinstance(second, FileRead) and second.version.readiness is Readiness.VALID


def test_unwritable_replay_memory_means_not_ready(tmp_path: Path) -> None:
    class FullStore:
        def token_used(self, token: str) -> bool:
            return False

        def accepted(self, job: str) -> tuple[str, str] | None:
            return None

        def accept(self, job: str, token: str, fingerprint: str, now: float) -> None:
            raise sqlite3.OperationalError("database or disk is full")

    settings = Settings(spool=tmp_path, host="h", state_dir=tmp_path / "state",
                        require_signature=True)
    keys = tmp_path / "keys"
    keys.mkdir()
    secret = b"k" * 32
    (keys / "laptop.key").write_text(secret.hex())
    signed = sign(b"commands: ls\n", "s", "laptop", secret, "n1")
    verdict = Admission(settings, keys, FullStore())("s", signed, T)
    assert verdict.readiness is Readiness.NOT_READY and "ledger" in (verdict.problem or "")


def test_missing_jobs_folder_is_unavailable_not_missing_files(tmp_path: Path) -> None:
    rec, seen = make(tmp_path)
    write_old(rec.settings.jobs_dir / "a.yaml", "commands: ls\n")
    seen.reconcile(T + 0)
    os.rename(rec.settings.jobs_dir, tmp_path / "aside")
    seen.reconcile(T + 1)
    assert not rec.spool_available
    assert not any(isinstance(e.event, FileMissing) for e in seen.events)


def test_a_signed_job_is_checked_again_right_before_it_runs(tmp_path: Path) -> None:
    from filerexec.ledger import Ledger

    spool = tmp_path / "spool"
    (spool / "jobs").mkdir(parents=True)
    keys = tmp_path / "keys"
    keys.mkdir()
    secret = b"k" * 32
    (keys / "laptop.key").write_text(secret.hex())
    jobs: dict[str, Job] = {}
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for require in (False, True):
        settings = Settings(spool=spool, host="h", state_dir=tmp_path / "state",
                            require_signature=require)
        rec = Reconciler(settings, jobs, Admission(settings, keys, ledger))
        write_old(spool / "jobs" / "s.yaml", sign(b"commands: ls\nevery: 1h\n", "s", "laptop",
                                                  secret, f"n{require}").decode())
        [first] = rec.reconcile(T, {}).events
        assert isinstance(first.event, FileRead)
        jobs["s"] = Job("s", version=first.event.version)
        if not require:  # nothing to check on a host that runs unsigned jobs
            assert rec.recheck(["s"], T + 1) == []
            continue
        [again] = rec.recheck(["s"], T + 1)  # the same file, no replay: the same version
        assert isinstance(again.event, FileRead) and again.event.version == first.event.version
        (keys / "laptop.key").unlink()  # revoked
        [revoked] = rec.recheck(["s", "unknown"], T + 2)
        assert isinstance(revoked.event, FileRead)
        assert revoked.event.version.readiness is Readiness.REJECTED
        assert "does not trust" in (revoked.event.version.problem or "")
    ledger.close()
