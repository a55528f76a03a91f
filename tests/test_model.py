"""Model-based test: hypothesis drives ``Daemon.step(now)`` with a fake clock and fake
processes through drops, edits, deletions, re-deliveries, conflicted copies, crashes (at any
moment, including between "starting" and the spawn), clean restarts, an unwritable status
folder and a full ledger — and checks the crash-safety invariants throughout.

Only processes and the clock are fake; the spool, status files and ledger are real.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from filerexec import ledger as ledger_module
from filerexec import process
from filerexec.config import Settings
from filerexec.daemon import Daemon
from filerexec.machine import Job, next_due
from filerexec.spec import parse_job
from filerexec.writer import StatusDir, StatusWriter

NAMES = ("a", "b", "c")
EVERY = 10.0  # seconds between the slots of a scheduled version
TERM_CODE = 128 + 15


class Crash(BaseException):
    """The daemon process dies here (nothing in the daemon may catch it)."""


@dataclass
class FakeProc:
    run_id: str
    handle: process.Handle
    exit_path: Path
    nonce: str
    code: int  # what the job exits with when it ends by itself
    ended: threading.Event = field(default_factory=threading.Event)
    result: int | None = None  # the exit code it ended with; None while running or if KILLed

    def end(self, code: int | None) -> None:
        """End like the waiting parent: record the code (unless KILLed), then exit."""
        if self.ended.is_set():
            return
        if code is not None:
            self.exit_path.write_text(f"{code}\n")
        self.result = code
        self.ended.set()


class FakeChild:
    def __init__(self, proc: FakeProc) -> None:
        self._proc = proc
        self.handle = proc.handle

    def wait(self, timeout: float | None = None) -> int:
        self._proc.ended.wait(timeout)
        return self._proc.result if self._proc.result is not None else 128 + 9

    def poll(self) -> int | None:
        return self.wait() if self._proc.ended.is_set() else None


class FakeProcs:
    """The process API over fake processes that outlive any daemon object."""

    def __init__(self) -> None:
        self.procs: dict[int, FakeProc] = {}
        self.next_pid = 1000
        self.crash: str | None = None  # "before spawn" / "after spawn": die there, once

    def _maybe_crash(self, where: str) -> None:
        if self.crash == where:
            self.crash = None
            raise Crash(where)

    def prepare(self, run_id: str, script: Path) -> process.Parent | None:
        return None

    def spawn(self, launch: process.Launch) -> FakeChild:
        self._maybe_crash("before spawn")
        match = re.search(r"exit (\d+) # (n\d+)", launch.commands[0])
        assert match, launch.commands
        self.next_pid += 1
        handle = process.Handle(self.next_pid, float(self.next_pid))
        proc = FakeProc(launch.run_id, handle, launch.exit_path, match[2], int(match[1]))
        self.procs[handle.pid] = proc
        self._maybe_crash("after spawn")
        return FakeChild(proc)

    def alive(self, handle: process.Handle) -> bool:
        proc = self.procs.get(handle.pid)
        return proc is not None and proc.handle == handle and not proc.ended.is_set()

    def read_exit(self, exit_path: Path) -> int | None:
        return process.read_exit(exit_path)

    def terminate(self, handle: process.Handle, run_id: str) -> str | None:
        self._maybe_crash("signal")
        if self.alive(handle):
            self.procs[handle.pid].end(TERM_CODE)
        return None

    def kill(self, handle: process.Handle, run_id: str) -> str | None:
        self._maybe_crash("signal")
        if self.alive(handle):
            self.procs[handle.pid].end(None)
        return None

    def find(self, run_id: str) -> process.Handle | None:
        return next((p.handle for p in self.running() if p.run_id == run_id), None)

    def sweep(self, run_ids: Collection[str]) -> None:
        for proc in self.running():
            if proc.run_id in run_ids:
                proc.end(None)

    def running(self) -> list[FakeProc]:
        return [p for p in self.procs.values() if not p.ended.is_set()]

    def release(self) -> None:
        """Teardown: let every waiter thread go."""
        for proc in self.running():
            proc.end(None)


class LedgerFull:
    """Make every ledger write fail as on a full disk, while ``on`` is set."""

    on = False
    error = "database or disk is full"
    _save = ledger_module.Ledger.save

    @classmethod
    def save(cls, self: ledger_module.Ledger, *args: Any, **kwargs: Any) -> None:
        if cls.on:
            raise sqlite3.OperationalError(cls.error)
        cls._save(self, *args, **kwargs)

    @classmethod
    def installed(cls) -> Iterator[None]:
        ledger_module.Ledger.save = lambda self, *a, **k: cls.save(self, *a, **k)  # type: ignore[method-assign]
        try:
            yield
        finally:
            ledger_module.Ledger.save = cls._save  # type: ignore[method-assign]
            cls.on = False


class DaemonModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="filerexec-model-"))
        spool = self.tmp / "spool"
        (spool / "jobs").mkdir(parents=True)
        (spool / "status").mkdir()
        # A short retention: removals of deleted jobs' statuses happen within an example,
        # with the ledger full or read-only and the status folder failing among them.
        self.settings = Settings(spool=spool, host="h", state_dir=self.tmp / "state", poll=True,
                                 settle=0.0, storm_starts=10_000, retention=5.0)
        self.status_dir = spool / "status" / "h"
        self.procs = FakeProcs()
        self.now = time.time() + 1000  # ahead of every real mtime: files are read at once
        self.serial = 0
        self.truth: dict[str, tuple[str, int]] = {}  # digest → (nonce, code)
        self.present: dict[str, tuple[str, str]] = {}  # job → (text, digest)
        self.never: set[str] = set()  # nonces of conflicted copies
        self.scheduled: set[str] = set()  # nonces of versions with `every:` (a run per slot)
        self.after: dict[str, str] = {}  # nonce of a version with `after:` → the job it names
        self.status_broken = False
        self._ledger_patch = LedgerFull.installed()
        next(self._ledger_patch)
        self._open()

    # --- the world ------------------------------------------------------------

    def _open(self) -> Daemon:
        # Status files written inline: a crash while writing one kills the whole daemon.
        writer = StatusWriter(StatusDir(self.settings.spool, self.settings.host),
                              self.settings.log_cap, inline=True)
        daemon = Daemon(self.settings, clock=lambda: self.now, procs=self.procs, writer=writer)
        write_job = writer.status.write_job

        def crashing_write_job(job: Job, conflicts: Iterable[str] = ()) -> bool:
            self.procs._maybe_crash("publish")  # after the commit, before the status file
            return write_job(job, conflicts)

        writer.status.write_job = crashing_write_job  # type: ignore[method-assign]
        self.daemon = daemon
        daemon.open()
        return daemon

    def _drop_daemon(self) -> None:
        """What the kernel does when the daemon process dies: its lock and files close."""
        if self.daemon.ledger is not None:
            self.daemon.ledger.close()
        self.daemon.lifecycle.release()

    def _step(self, dt: float) -> None:
        self.now += dt
        try:
            self.daemon.step(self.now)
        except Crash:
            self._drop_daemon()
            self._reopen()

    def _reopen(self) -> None:
        while True:  # a crash point may strike while the next daemon opens, too
            try:
                self._open()
                return
            except Crash:
                self._drop_daemon()

    def _write(self, name: str, text: str) -> None:
        target = self.settings.jobs_dir / f"{name}.yaml"
        tmp = target.with_name(f".syncthing.{name}.yaml.tmp")
        tmp.write_text(text)
        # A distinct mtime per delivery, as sync clients set it: this fast, a same-size edit
        # could otherwise reuse the inode and the timestamp tick and look unchanged.
        self.serial += 1
        mtime_ns = int((self.now - 500) * 1e9) + self.serial * 1000
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, target)

    def _runs(self) -> list[dict[str, Any]]:
        assert self.daemon.ledger is not None
        return self.daemon.ledger.runs()

    # --- rules ------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), code=st.integers(0, 3),
          every=st.sampled_from([None, None, "skip", "queue", "kill"]),
          after=st.sampled_from([None, None, *NAMES]))
    def drop_or_edit(self, name: str, code: int, every: str | None = None,
                     after: str | None = None) -> None:
        self.serial += 1
        text = f"commands: 'exit {code} # n{self.serial}'\n"
        if every is not None:  # a slot every 10 s: the steps' clock crosses them
            text += f"every: {EVERY}s\noverlap: {every}\n"
            self.scheduled.add(f"n{self.serial}")
        elif after is not None and after != name:  # runs once that job succeeded here
            text += f"after: {after}\n"
            self.after[f"n{self.serial}"] = after
        digest = parse_job(text.encode(), name).digest
        self.truth[digest] = (f"n{self.serial}", code)
        self.present[name] = (text, digest)
        self._write(name, text)

    @precondition(lambda self: self.present)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.present)))
        (self.settings.jobs_dir / f"{name}.yaml").unlink()
        del self.present[name]

    @precondition(lambda self: self.present)
    @rule(data=st.data())
    def redeliver_identical(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.present)))
        self._write(name, self.present[name][0])

    @rule(name=st.sampled_from(NAMES))
    def conflicted_copy(self, name: str) -> None:
        self.serial += 1
        self.never.add(f"n{self.serial}")
        stamp = f"20261128-{self.serial:06d}"
        copy = self.settings.jobs_dir / f"{name}.sync-conflict-{stamp}-ABCDEFG.yaml"
        copy.write_text(f"commands: 'exit 0 # n{self.serial}'\n")

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 6.0]))
    def step(self, dt: float) -> None:
        self._step(dt)

    @precondition(lambda self: self.procs.running())
    @rule(data=st.data())
    def a_process_ends(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.procs.running()))
        proc.end(proc.code)

    @rule(where=st.sampled_from(["before spawn", "after spawn", "signal", "publish"]))
    def crash_at_next(self, where: str) -> None:
        self.procs.crash = where

    @rule()
    def crash_now(self) -> None:
        self._drop_daemon()
        self._reopen()

    @rule()
    def clean_restart(self) -> None:
        try:
            self.daemon.close()
        except Crash:  # it died while stopping: a crash after all
            self._drop_daemon()
        self._reopen()

    @rule()
    def status_unwritable(self) -> None:
        if not self.status_broken:
            self.status_dir.mkdir(parents=True, exist_ok=True)
            os.rename(self.status_dir, self.tmp / "status-aside")
            self.status_dir.write_text("not a folder\n")
            self.status_broken = True

    @rule()
    def status_writable(self) -> None:
        if self.status_broken:
            self.status_dir.unlink()
            os.rename(self.tmp / "status-aside", self.status_dir)
            self.status_broken = False

    @rule(full=st.booleans())
    def ledger_full(self, full: bool) -> None:
        LedgerFull.on, LedgerFull.error = full, "database or disk is full"

    @rule()
    def ledger_read_only(self) -> None:
        LedgerFull.on, LedgerFull.error = True, "attempt to write a readonly database"

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def nothing_started_twice_and_no_conflicted_copy_runs(self) -> None:
        procs = self.procs.procs.values()
        spawned = Counter(p.nonce for p in procs if p.nonce not in self.scheduled)
        assert max(spawned.values(), default=0) <= 1, spawned
        assert not self.never & {p.nonce for p in procs}
        runs = self._runs()
        # Each version runs once; a scheduled one once per slot: no crash, restart or rescan
        # runs a slot twice. And every spawn was in the ledger first (write-ahead).
        per_slot = Counter((r["job"], r["digest"], r["slot"]) for r in runs)
        assert max(per_slot.values(), default=0) <= 1, per_slot
        assert all(r["slot"] is not None for r in runs if self._nonce(r) in self.scheduled)
        for run in runs:  # a job with after: starts only once that job has succeeded here
            if (dep := self.after.get(self._nonce(run))) is not None:
                assert any(r["job"] == dep and r["outcome"] == "succeeded"
                           and r["finished"] <= run["started"] for r in runs), (run, dep)
        per_run = Counter(p.run_id for p in procs)
        assert max(per_run.values(), default=0) <= 1, per_run
        assert set(per_run) <= {r["run_id"] for r in runs}, "spawned before it was recorded"

    @invariant()
    def the_tables_kept_orders_say_what_a_pass_over_every_job_says(self) -> None:
        table = self.daemon.table
        active = [table.jobs[n] for n in table.active]
        assert sorted(n for n, _ in table.running()) == sorted(
            j.name for j in active if j.running and j.run)
        timers = [t for j in active if (t := next_due(j, table.timing)) is not None]
        assert table.next_timer() == min(timers, default=None)
        due = sorted((j.version.seen if j.version and j.version.seen else 0.0, j.name)
                     for j in active if j.due)
        assert [j.name for j in table.first_due(len(due) + 1)] == [n for _, n in due]

    def _nonce(self, run: dict[str, Any]) -> str:
        return self.truth[run["digest"]][0]

    def teardown(self) -> None:
        try:
            self._settle_and_check()
        finally:
            self.procs.release()
            with contextlib.suppress(Exception):
                self.daemon.close()
            with contextlib.suppress(Exception):
                next(self._ledger_patch)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _settle_and_check(self) -> None:
        """Heal the disk, let time pass until nothing is left to do, then check everything."""
        self.procs.crash = None
        LedgerFull.on = False
        self.status_writable()
        for _ in range(4):  # deletions confirmed, kills escalated, the killed collected
            self._step(3.0)
        for proc in self.procs.running():  # nothing runs whose job file is gone
            job = next(r["job"] for r in self._runs() if r["run_id"] == proc.run_id)
            assert job in self.present, f"{job} was deleted but run {proc.run_id} still runs"
        for _ in range(8):  # everything due runs and ends
            for proc in self.procs.running():
                proc.end(proc.code)
            self._step(3.0)
        assert self.daemon.writer.flush(), "status files never caught up"
        runs = self._runs()
        spawned = {p.nonce: p for p in self.procs.procs.values()}
        by_run = {p.run_id: p for p in self.procs.procs.values()}
        for run in runs:
            ran = by_run.get(run["run_id"])
            if run["outcome"] in ("succeeded", "failed"):
                assert ran is not None and run["exit_code"] == ran.result, run
            elif run["outcome"] == "lost":
                assert ran is None or ran.result is None, run  # never spawned, or KILLed
        finished = {(r["job"], r["digest"]): r for r in runs if r["outcome"]}
        for path in self.status_dir.glob("*.yaml"):
            doc = yaml.safe_load(path.read_text())
            if path.name == "host.yaml" or doc["job"] in self.present:
                continue
            if doc["job"] in self.daemon.jobs:  # else the ledger never knew it (README)
                assert doc["state"] not in ("pending", "running") and doc["deleted"], doc
                # Its retention (5 s) is long over: the status had to go with the record.
                raise AssertionError(f"{doc['job']}: deleted, retention over, status still there")
        for name, (_, digest) in self.present.items():
            nonce, code = self.truth[digest]
            if nonce in self.scheduled:
                self._check_slots(name, digest, runs)
                continue
            if nonce in self.after:
                self._check_after(name, digest, runs)
                continue
            last = finished.get((name, digest))
            assert last is not None, f"{name} {nonce}: never ran (lost without a trace)"
            doc = yaml.safe_load((self.status_dir / f"{name}.yaml").read_text())
            assert doc["digest"] == digest[:12]
            if nonce in spawned:
                assert doc["state"] in ("succeeded", "failed") and doc["exit_code"] == code, doc
            else:
                assert doc["state"] == "lost", doc


    def _check_after(self, name: str, digest: str, runs: list[dict[str, Any]]) -> None:
        """A version with `after:`, once everything settled: it ran if its dependency's
        current version succeeded; else it waits (pending), is skipped or, in a circle,
        invalid — each as its dependency's status says."""
        doc = yaml.safe_load((self.status_dir / f"{name}.yaml").read_text())
        assert doc["digest"] == digest[:12], doc
        dep, path = self.after[self.truth[digest][0]], [name]
        while dep not in path and dep in self.present and (
                nxt := self.after.get(self.truth[self.present[dep][1]][0])) is not None:
            path, dep = [*path, dep], nxt
        if dep == name:  # a circle back to this job
            assert doc["state"] == "invalid" and " → ".join([*path, name]) in doc["reason"], doc
            return
        dep = self.after[self.truth[digest][0]]
        ran = any((r["job"], r["digest"]) == (name, digest) for r in runs)
        if dep not in self.present or self.truth[self.present[dep][1]][0] in self.scheduled:
            return  # absent (pending, or it ran before), or a schedule's: its state moves on
        dep_doc = yaml.safe_load((self.status_dir / f"{dep}.yaml").read_text())
        if dep_doc["state"] == "succeeded":
            assert ran, f"{name} after {dep}: {dep} succeeded, {name} never ran: {doc}"
        elif not ran:
            expected = "skipped" if dep_doc["state"] in ("failed", "killed", "lost") \
                else "pending"
            assert doc["state"] == expected, (doc, dep_doc)

    def _check_slots(self, name: str, digest: str, runs: list[dict[str, Any]]) -> None:
        """A scheduled version's runs: its latest slot started (none lost, catch_up: latest),
        every finished one with its true exit code, and its status about this version."""
        slots = sorted(r["slot"] for r in runs if (r["job"], r["digest"]) == (name, digest))
        assert slots, f"{name}: its slots never ran"
        latest = slots[0] + (self.now - slots[0]) // EVERY * EVERY
        assert slots[-1] >= latest - 1e-6, f"{name}: slot {latest} lost; ran {slots}"
        assert any(r["outcome"] for r in runs if (r["job"], r["digest"]) == (name, digest))
        doc = yaml.safe_load((self.status_dir / f"{name}.yaml").read_text())
        assert doc["digest"] == digest[:12] and doc["schedule"] == f"every {EVERY:g}s", doc


# Random exploration on every run, CI included: a fresh seed each time, a fixed budget that
# fits the suite (MODEL_EXAMPLES=5000 for a longer hunt), and a failing example printed
# step by step with the blob that replays it (@reproduce_failure).
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "40"))
DaemonModel.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=50, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
TestDaemonModel = DaemonModel.TestCase
# About a second an example on a loaded 2-core machine; a hunt gets the time it asks for.
TestDaemonModel.pytestmark = [  # type: ignore[attr-defined]
    pytest.mark.slow, pytest.mark.timeout(max(240, EXAMPLES * 4))]



def _die(model: DaemonModel, where: str) -> None:
    """Kill the daemon now, restart it cleanly, or arm a crash at the next ``where``."""
    if where == "now":
        model.crash_now()
    elif where == "restart":
        model.clean_restart()
    else:
        model.crash_at_next(where)


def _step_and_end_all(model: DaemonModel, seconds: float) -> None:
    """One step; nothing started twice; then every running process ends with its code."""
    model.step(seconds)
    model.nothing_started_twice_and_no_conflicted_copy_runs()
    for proc in model.procs.running():
        proc.end(proc.code)

@pytest.mark.slow
@pytest.mark.parametrize("where", ["before spawn", "after spawn", "publish", "now", "restart"])
def test_a_crash_at_every_step_around_a_slot_runs_it_once(where: str) -> None:
    """The clock crosses a slot of `every: 10s` in small steps; the daemon dies (or restarts
    cleanly) at each step in turn: every slot runs once, the latest is never lost."""
    for crash_at in range(8):  # which step of the eight around the slot
        model = DaemonModel()
        try:
            model.drop_or_edit(name="a", code=0, every="queue")
            model.step(0.0)
            for i in range(8):  # from 3 s before the slot to 3.5 s after it
                if i == crash_at:
                    _die(model, where)
                _step_and_end_all(model, 6.0 if i == 0 else 0.5 if i < 7 else 1.0)
        except BaseException:
            model.procs.release()
            raise
        model.teardown()  # settles, then checks every run, slot and status


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before spawn", "after spawn", "publish", "now", "restart"])
def test_a_crash_at_every_step_of_a_dependency_chain(where: str) -> None:
    """c after b after a, dropped last first, a succeeding or failing; the daemon dies (or
    restarts cleanly) at each step in turn: each runs once, in order, or is skipped."""
    for code in (0, 1):
        for crash_at in range(6):
            model = DaemonModel()
            try:
                model.drop_or_edit(name="c", code=0, after="b")
                model.drop_or_edit(name="b", code=0, after="a")
                model.step(0.0)
                model.drop_or_edit(name="a", code=code)
                for i in range(6):
                    if i == crash_at:
                        _die(model, where)
                    _step_and_end_all(model, 0.5)
                runs = model._runs()
                assert len(runs) == len({r["job"] for r in runs}), runs  # each at most once
            except BaseException:
                model.procs.release()
                raise
            model.teardown()  # settles: b and c ran once a succeeded, or are skipped
