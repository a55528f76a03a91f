"""The waiting parent started ahead (issue 12): the next run's shell is already running when
its job file arrives, and nothing it does outlives the daemon or runs without a commit."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from filerexec import process
from filerexec.machine import Exited, Observed, Run, Spawned, Start
from filerexec.runner import PARENT_AGE, LocalRunner
from filerexec.spec import JobSpec
from tests.conftest import Host
from tests.util import wait_for

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the POSIX waiting parent")


def carriers(run_id: str) -> list[int]:
    """Live processes whose environment carries ``run_id``."""
    return [p.pid for p in psutil.process_iter() if p.pid != os.getpid()
            and _carries(p, run_id)]


def _carries(proc: psutil.Process, run_id: str) -> bool:
    try:
        return (proc.status() != psutil.STATUS_ZOMBIE
                and proc.environ().get(process.RUN_ID_VAR) == run_id)
    except psutil.Error:
        return False


def start(name: str, run_id: str, marker: Path) -> Start:
    return Start(name, run_id, JobSpec(name, (f"echo $FILEREXEC_JOB >>{marker}",)))


@pytest.fixture
def runner(tmp_path: Path) -> LocalRunner:
    r = LocalRunner(tmp_path / "runs", "h", lambda: None)
    r.open()
    return r


def test_the_next_run_is_handed_to_the_parent_started_ahead_the_one_after_starts_as_usual(
        runner: LocalRunner, tmp_path: Path) -> None:
    now = time.time()
    try:
        runner.poll([], now)  # the first step starts the parent ahead
        ahead = runner.new_run_id(now)
        ready = carriers(ahead)
        assert len(ready) == 1  # waiting, in its own session, before any job exists
        assert os.getsid(ready[0]) == ready[0]
        usual = runner.new_run_id(now)  # a second launch in the same step
        assert usual != ahead and carriers(usual) == []
        marker = tmp_path / "ran"
        seen = runner.launch([start("a", ahead, marker), start("b", usual, marker)], now)
        spawned = [o.event for o in seen]
        assert all(isinstance(e, Spawned) for e in spawned)
        assert isinstance(spawned[0], Spawned) and spawned[0].pid == ready[0]
        wait_for(lambda: marker.exists() and sorted(marker.read_text().split()) == ["a", "b"],
                 what="both jobs to run once")
        running = [(n, Run(r, "d", started=now)) for n, r in (("a", ahead), ("b", usual))]
        exits: list[Observed] = []  # the two may end in different polls
        wait_for(lambda: exits.extend(runner.poll(running, now)) or len(exits) == 2,
                 what="both exits")
        assert sorted(o.name for o in exits) == ["a", "b"]
        assert all(isinstance(o.event, Exited) and o.event.code == 0 for o in exits)
        assert process.read_exit(runner.exit_path(ahead)) == 0  # recorded by the parent
        after = runner.new_run_id(now)  # the polls since made a new parent, for the next run
        assert after not in (ahead, usual) and len(carriers(after)) == 1
    finally:
        runner.close()


def test_a_parent_waiting_too_long_is_replaced_so_its_run_id_still_says_when(
        runner: LocalRunner) -> None:
    now = time.time()
    try:
        runner.poll([], now)
        first = runner.new_run_id(now)
        runner.launch([], now)  # handed out, not launched: the id is free again
        assert runner.new_run_id(now) == first
        runner.launch([], now)
        (pid,) = carriers(first)
        runner.poll([], now + PARENT_AGE - 1)
        assert runner.new_run_id(now) == first and carriers(first) == [pid]  # not yet
        runner.launch([], now)
        assert runner.next_due([]) == pytest.approx(now + PARENT_AGE)
        runner.poll([], now + PARENT_AGE)
        second = runner.new_run_id(now + PARENT_AGE)
        assert second != first and len(carriers(second)) == 1
        wait_for(lambda: carriers(first) == [], what="the old parent to end")
        assert not runner.exit_path(first).exists()
    finally:
        runner.close()


def test_close_ends_the_parent_and_leaves_nothing_behind(runner: LocalRunner) -> None:
    now = time.time()
    runner.poll([], now)
    run_id = runner.new_run_id(now)
    assert len(carriers(run_id)) == 1
    runner.close()
    assert carriers(run_id) == [] and not runner.exit_path(run_id).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_daemon_killed_outright_leaves_no_waiting_parent(host: Host) -> None:
    proc = host.start()
    host.drop("a.yaml", "commands: 'true'\n")
    host.wait_state("a", "succeeded")  # and a parent waits for the next run

    def parents() -> list[psutil.Process]:
        return [c for c in psutil.Process(proc.pid).children()
                if process._WAITING.split("\n")[0] in " ".join(c.cmdline())]

    (parent,) = wait_for(parents, what="the waiting parent")
    host.stop(signal.SIGKILL)
    wait_for(lambda: not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE,
             what="the parent to end with the daemon")
