"""Fault injection: SIGKILL the daemon at random moments while jobs are dropped, edited,
deleted, re-delivered and copied in conflict; then check that nothing ran twice, nothing
was lost, nothing deleted still runs and every status tells the true exit code.

The seed is printed on failure; FAULT_SEED=N repeats a run, FAULT_CYCLES=N changes its length.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from filerexec import process
from filerexec.spec import parse_job
from tests.conftest import Host
from tests.util import wait_for

CYCLES = int(os.environ.get("FAULT_CYCLES", "50"))
MAX_LIVE = 8  # job files present at once
DURATIONS = (0, 0, 0.1, 0.3, 1.0, 3.0)  # seconds a job runs: some outlive several daemons


@dataclass
class World:
    """What the test did to the spool, and what every version would truly exit with."""

    spool: Path
    starts: Path
    ends: Path
    rng: random.Random
    present: dict[str, str] = field(default_factory=dict)  # job → its file's text
    digest: dict[str, str] = field(default_factory=dict)  # job → its file's digest
    truth: dict[str, tuple[str, int]] = field(default_factory=dict)  # digest → (nonce, code)
    never: set[str] = field(default_factory=set)  # nonces of conflicted copies
    deleted: set[str] = field(default_factory=set)
    ever_deleted: set[str] = field(default_factory=set)
    serial: int = 0

    def nonce(self) -> str:
        self.serial += 1
        return f"n{self.serial}"

    def write(self, name: str) -> None:
        nonce, code = self.nonce(), self.rng.randint(0, 3)
        text = (f"commands: echo {nonce} >> {self.starts}; sleep {self.rng.choice(DURATIONS)}; "
                f"echo {nonce} {code} >> {self.ends}; exit {code}\n")
        digest = parse_job(text.encode(), name).digest
        self.truth[digest] = (nonce, code)
        self.present[name], self.digest[name] = text, digest
        self.deleted.discard(name)
        self._deliver(name, text)

    def _deliver(self, name: str, text: str) -> None:
        target = self.spool / "jobs" / f"{name}.yaml"
        tmp = target.with_name(f".syncthing.{name}.yaml.tmp")
        tmp.write_text(text)
        # A distinct mtime per delivery, as sync clients set the source's: this fast, a
        # same-size edit could otherwise reuse the inode and the timestamp tick, unseen.
        self.serial += 1
        mtime_ns = time.time_ns() - 2_000_000_000 + self.serial * 1000
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, target)

    def operate(self) -> None:
        """One random thing a person or a sync client does to the spool."""
        rng, names = self.rng, sorted(self.present)
        op = rng.choice(["drop", "drop", "edit", "edit", "delete", "redeliver", "touch",
                         "conflict"])
        if op == "drop" or not names:
            if len(names) >= MAX_LIVE:
                op, names = "delete", names
            else:
                pool = sorted(self.deleted) if self.deleted and rng.random() < 0.3 else []
                self.write(rng.choice(pool) if pool else f"j{self.serial}")
                return
        name = rng.choice(names)
        path = self.spool / "jobs" / f"{name}.yaml"
        if op == "edit":
            self.write(name)
        elif op == "delete":
            path.unlink()
            del self.present[name], self.digest[name]
            self.deleted.add(name)
            self.ever_deleted.add(name)
        elif op == "redeliver":
            self._deliver(name, self.present[name])
        elif op == "touch":
            os.utime(path)
        else:
            nonce = self.nonce()
            self.never.add(nonce)
            copy = path.with_name(f"{name}.sync-conflict-20261128-0{self.serial:05d}-ABCDEFG.yaml")
            copy.write_text(f"commands: echo {nonce} >> {self.starts}\n")


@pytest.mark.slow
def test_sigkill_at_random_moments_never_runs_twice_never_loses(
        host: Host, spool: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("FAULT_SEED", str(time.time_ns() % 1_000_000)))
    print(f"FAULT_SEED={seed}")
    rng = random.Random(seed)
    world = World(spool, tmp_path / "starts", tmp_path / "ends", rng)
    host.extra_args = ["--rescan", "0.5", "--storm-starts", "100000"]
    argv = [sys.executable, "-m", "filerexec", "serve", str(spool), "--host", host.name,
            "--state-dir", str(host.state), *host.extra_args]
    pid_file: Path | None = None
    # A scheduled job beside them: a run per slot of 1 s, each printing its run id, while the
    # daemon is killed and restarted, and down across slots (catch_up: latest runs one).
    ticks = tmp_path / "ticks"
    host.drop("tick.yaml", f"commands: echo $FILEREXEC_RUN_ID >> {ticks}\nevery: 1s\n")
    try:
        for _ in range(CYCLES):
            for _ in range(rng.randint(0, 2)):  # while no daemon runs
                world.operate()
            with open(host.log, "ab") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            if rng.random() < 0.85:  # mostly kill it once it serves, sometimes while it opens
                pid_file = pid_file or wait_for(
                    lambda: next(host.state.glob("spools/*/daemon.pid"), None), timeout=15,
                    what="the state folder")
                wait_for(functools.partial(_opened, pid_file, proc), timeout=15,
                         what="the daemon to open")
            for _ in range(rng.randint(0, 3)):
                world.operate()
                time.sleep(rng.uniform(0, 0.15))  # the random moment, not a wait for anything
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
        host.start()
        _settle_and_check(host, world)
        _check_slots(host, ticks)
        assert host.proc is not None and host.proc.poll() is None, "the final daemon died"
    except AssertionError as e:
        raise AssertionError(f"FAULT_SEED={seed}: {e}") from None


def _opened(pid_file: Path, proc: subprocess.Popen[bytes]) -> bool:
    """The daemon wrote its pid (it holds the lock), or it has already died."""
    return _read(pid_file) == str(proc.pid) or proc.poll() is not None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _runs(host: Host) -> list[tuple[str, str, str, str | None, int | None, str | None]]:
    db = host.ledger()
    try:
        return list(db.execute(
            "SELECT run_id, job, digest, outcome, exit_code, reason FROM runs"))
    finally:
        db.close()


def _settle_and_check(host: Host, world: World) -> None:
    def settled() -> bool:
        runs = _runs(host)
        finished = {(job, digest) for _, job, digest, outcome, _, _ in runs if outcome}
        for name, digest in world.digest.items():
            doc = host.status(name) or {}
            if doc.get("digest") != digest[:12] or doc.get("state") in (None, "pending",
                                                                         "running"):
                return False
            if (name, digest) not in finished:
                return False
        for name in world.deleted:
            gone = host.status(name)
            if gone is not None and (gone.get("state") == "running" or not gone.get("deleted")):
                return False
        # Nothing is left running at all: not a deleted job, not an escapee, not a stray.
        return not process._carriers(*(r[0] for r in runs))

    try:
        wait_for(settled, timeout=45, interval=0.2, what="every job to settle")
    except AssertionError:
        states = {n: (host.status(n) or {}).get("state") for n in world.digest}
        raise AssertionError(f"not settled: {states}; deleted {sorted(world.deleted)}; "
                             f"log tail:\n{_log_tail(host)}") from None

    started = Counter(line.split()[0] for line in _lines(world.starts))
    ended = dict(line.split() for line in _lines(world.ends))
    twice = {n: c for n, c in started.items() if c > 1}
    assert not twice, f"versions started more than once: {twice}"
    assert not world.never & set(started), "a conflicted copy ran"
    runs = [r for r in _runs(host) if r[1] != "tick"]  # the scheduled one: _check_slots
    per_version = Counter((job, digest) for _, job, digest, *_ in runs)
    assert max(per_version.values(), default=0) <= 1, f"ledger: {per_version.most_common(3)}"
    for run_id, job, digest, outcome, code, reason in runs:
        nonce, true_code = world.truth[digest]
        where = f"run {run_id} of {job} ({nonce}): {outcome}, {code}, {reason}"
        if outcome in ("succeeded", "failed"):
            assert code == true_code and ended.get(nonce) == str(code), where
        elif outcome == "lost":
            assert nonce not in started, f"a run that did run was reported lost: {where}"
        else:
            assert outcome == "killed" and job in world.ever_deleted, where
    for name, digest in world.digest.items():
        doc = host.status(name) or {}
        nonce, true_code = world.truth[digest]
        if doc["state"] in ("succeeded", "failed"):
            assert doc["exit_code"] == true_code, f"{name}: {doc}"
        else:
            assert doc["state"] == "lost" and nonce not in started, f"{name}: {doc}"


def _check_slots(host: Host, ticks: Path) -> None:
    """Every slot ran at most once, only after its run was in the ledger, and the schedule
    outlived every kill: the latest slots still run."""
    def slots() -> list[float]:
        db = host.ledger()
        try:
            return [s for (s,) in db.execute("SELECT slot FROM runs WHERE job = 'tick'")]
        finally:
            db.close()

    since = time.time()
    wait_for(lambda: max(slots(), default=0) > since, timeout=15, what="a slot after the kills")
    found = slots()
    assert None not in found and len(found) == len(set(found)), f"a slot ran twice: {found}"
    assert all(abs((s - found[0]) - round(s - found[0])) < 1e-6 for s in found), found
    printed = Counter(_lines(ticks))
    assert max(printed.values(), default=0) == 1, f"a run started twice: {printed}"
    db = host.ledger()
    try:
        recorded = {r for (r,) in db.execute("SELECT run_id FROM runs WHERE job = 'tick'")}
    finally:
        db.close()
    assert set(printed) <= recorded, "a slot ran that the ledger never recorded"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _log_tail(host: Host) -> str:
    lines = [ln for ln in host.log.read_text().splitlines() if "watchdog" not in ln]
    return "\n".join(lines[-40:])
