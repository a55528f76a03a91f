"""Spare exit files (issue 12): a published run's exit file, emptied, is a later run's, and
no old content ever passes for a run's exit code."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filerexec import process
from filerexec.machine import Exited, Observed, Run, Spawned, SpawnFailed, Start
from filerexec.runner import LocalRunner
from filerexec.spares import SpareFiles
from filerexec.spec import JobSpec
from tests.test_ahead import carriers
from tests.util import wait_for


def test_a_file_put_back_is_emptied_and_taken_for_the_next_path(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare", keep=2)
    spares.open()
    old = tmp_path / "1.exit"
    old.write_text("3\n")
    ino = old.stat().st_ino
    spares.put(old)
    assert not old.exists()
    new = tmp_path / "2.exit"
    assert spares.take(new)
    assert new.stat().st_ino == ino and new.read_bytes() == b""
    assert not spares.take(tmp_path / "3.exit")  # none left: the caller creates it


def test_a_full_pool_deletes_and_a_new_daemon_uses_what_the_last_one_kept(
        tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare", keep=2)
    spares.open()
    for i in range(3):
        (tmp_path / f"{i}.exit").write_text("0\n")
        spares.put(tmp_path / f"{i}.exit")
    assert len(os.listdir(tmp_path / "spare")) == 2
    assert not (tmp_path / "2.exit").exists()
    again = SpareFiles(tmp_path / "spare")
    again.open()
    assert again.take(tmp_path / "a.exit") and again.take(tmp_path / "b.exit")
    assert not again.take(tmp_path / "c.exit")


def test_a_spare_someone_deleted_is_skipped(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    spares.open()
    for i in range(2):
        (tmp_path / f"{i}.exit").write_text("0\n")
        spares.put(tmp_path / f"{i}.exit")
    os.unlink(tmp_path / "spare" / sorted(os.listdir(tmp_path / "spare"))[0])
    assert spares.take(tmp_path / "a.exit")
    assert not spares.take(tmp_path / "b.exit")


def _run(runner: LocalRunner, name: str, command: str, now: float) -> tuple[Run, int]:
    """Launch one run and poll until it ended; its run and recorded exit code."""
    run_id = runner.new_run_id(now)
    (spawned,) = runner.launch([Start(name, run_id, JobSpec(name, (command,)))], now)
    assert isinstance(spawned.event, Spawned), spawned
    run = Run(run_id, "d", started=now)
    seen: list[Observed] = []
    wait_for(lambda: seen.extend(runner.poll([(name, run)], now)) or seen, what="the exit")
    assert isinstance(seen[0].event, Exited) and seen[0].event.code is not None
    return run, seen[0].event.code


@pytest.fixture(params=["ahead", "usual"])
def ahead(request: pytest.FixtureRequest) -> bool:
    """Whether runs start with a waiting parent started ahead (POSIX only) or the usual way."""
    return request.param == "ahead" and os.name != "nt"


@pytest.fixture
def runner(ahead: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRunner]:
    if not ahead:
        monkeypatch.setattr(process, "prepare", lambda run_id, script: None)
    r = LocalRunner(tmp_path / "runs", "h", lambda: None)
    r.open()
    yield r
    r.close()


def test_the_next_run_records_its_code_in_the_last_runs_exit_file(
        runner: LocalRunner, tmp_path: Path) -> None:
    now = time.time()
    runner.poll([], now)  # (a parent ahead for the first run)
    inodes = []
    for code in (3, 5, 7):
        run, recorded = _run(runner, "a", f"exit {code}", now)
        assert recorded == code
        assert runner.exit_path(run.run_id).read_bytes() == b"%d\n" % code
        inodes.append(runner.exit_path(run.run_id).stat().st_ino)
        for path in runner.run_files(run.run_id):  # its result is published
            runner.discard(path)
        spare = tmp_path / "runs" / "spare"
        assert inodes[-1] in {(spare / n).stat().st_ino for n in os.listdir(spare)}
        assert not runner.output_path(run.run_id).exists()  # outputs are never reused
    # The usual way the next run takes the spare; ahead, the parent after the next one
    # does (the next one's was made while this run was still being published).
    assert inodes[-1] in inodes[:-1]


def test_an_old_record_at_a_runs_exit_path_never_passes_for_its_code(tmp_path: Path) -> None:
    exit_path = tmp_path / "run.exit"
    exit_path.write_bytes(b"0\n")  # left there: the run below must not be taken for a success
    launch = process.Launch(run_id="spare-test", commands=("exit 4",),
                            output_path=tmp_path / "run.out", exit_path=exit_path)
    child = process.spawn(launch)
    child.wait(10)
    assert process.read_exit(exit_path) == 4


def test_a_run_that_cannot_start_leaves_no_file_and_no_waiting_parent(
        runner: LocalRunner, ahead: bool, tmp_path: Path) -> None:
    (tmp_path / "spare.exit").write_text("0\n")
    runner.discard(tmp_path / "spare.exit")  # a spare, taken by the next run
    now = time.time()
    runner.poll([], now)
    run_id = runner.new_run_id(now)
    spec = JobSpec("a", ("true",), cwd=str(tmp_path / "missing"))
    (seen,) = runner.launch([Start("a", run_id, spec)], now)
    assert isinstance(seen.event, SpawnFailed)
    assert sorted(os.listdir(tmp_path / "runs")) == ["spare"]
    # The usual way the spare goes back; ahead it goes with the retired parent's script.
    kept = 0 if ahead else 1
    assert len(os.listdir(tmp_path / "runs" / "spare")) == kept
    wait_for(lambda: carriers(run_id) == [], what="the retired parent to end")
