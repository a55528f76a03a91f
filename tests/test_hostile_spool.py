"""Whatever arrives in the spool, the daemon keeps running and never leaves the spool.

Each test plays one attack from issue #17 against a real daemon: jobs/ replaced by a
link (to a folder outside, to /, to itself), jobs/ unreadable, folders nested past
PATH_MAX, a sub-folder that cannot be listed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filerexec import process
from filerexec.config import Settings
from filerexec.daemon import Daemon
from filerexec.machine import Job, State
from filerexec.safefile import TEMP_PREFIX
from filerexec.spool import MAX_PATH, Refused, Unavailable, list_jobs, read_job_file
from filerexec.writer import StatusDir, StatusWriter
from tests.conftest import Host, pid_alive
from tests.dying_daemon import DieBeforeSpawn
from tests.util import wait_for

# Tests run as root, and root lists a mode-000 folder. The daemon is started without
# the capabilities that let root ignore permissions, so it meets a real EACCES.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None,
                                   reason="needs setpriv (util-linux)")


def unavailable_because(host: Host, words: str) -> str:
    """Wait for host.yaml to say "spool unavailable" with ``words`` in its reason."""
    def check() -> str | None:
        doc = host.heartbeat()
        reason = str(doc.get("reason", ""))
        return reason if doc.get("state") == "spool unavailable" and words in reason else None
    try:
        return wait_for(check, what=f"host.yaml: spool unavailable ({words})")
    except AssertionError:
        raise AssertionError(f"host.yaml: {host.heartbeat()}\n"
                             f"{host.log.read_text()[-2000:]}") from None


def serving(host: Host) -> None:
    wait_for(lambda: host.heartbeat().get("state") == "serving", what="host.yaml: serving")


@pytest.mark.slow
def test_jobs_replaced_by_a_link_is_unavailable_nothing_read_run_or_killed(
        host: Host, tmp_path: Path) -> None:
    host.start()
    host.drop("live.yaml", "commands: sleep 60\n")
    pid = host.wait_state("live", "running")["pid"]
    elsewhere, marker = tmp_path / "elsewhere", tmp_path / "ran-from-outside"
    elsewhere.mkdir()
    (elsewhere / "outside.yaml").write_text(f"commands: touch {marker}\n")
    jobs = host.spool / "jobs"
    jobs.rename(host.spool / "jobs.real")
    jobs.symlink_to(elsewhere)
    reason = unavailable_because(host, "symbolic link")
    assert "make jobs/ a real folder" in reason
    assert not marker.exists() and host.status("outside") is None
    assert pid_alive(pid) and (host.status("live") or {})["state"] == "running"
    # The real folder comes back: serving again, the running job untouched, its kill works.
    jobs.unlink()
    (host.spool / "jobs.real").rename(jobs)
    serving(host)
    assert (host.status("live") or {})["state"] == "running"
    (jobs / "live.yaml").unlink()
    assert host.wait_state("live", "killed")["reason"] == "job file deleted"
    assert not marker.exists()


@pytest.mark.parametrize("target", ["/", "self"])
def test_jobs_a_link_to_root_or_itself_at_start(host: Host, target: str) -> None:
    jobs = host.spool / "jobs"
    jobs.rmdir()
    jobs.symlink_to(jobs if target == "self" else Path(target))
    host.start()
    unavailable_because(host, "symbolic link")
    assert host.proc is not None and host.proc.poll() is None
    assert {p.name for p in host.status_dir.iterdir()} <= {"host.yaml", "index.md", "index.html"}
    jobs.unlink()
    jobs.mkdir()
    serving(host)
    host.drop("ok.yaml", "commands: 'true'\n")
    host.wait_state("ok", "succeeded")


@needs_setpriv
def test_unreadable_jobs_folder_is_unavailable_then_serves(host: Host) -> None:
    host.prefix = NO_DAC if os.geteuid() == 0 else []
    jobs = host.spool / "jobs"
    (jobs / "early.yaml").write_text("commands: 'true'\n")
    jobs.chmod(0)
    try:
        host.start()
        unavailable_because(host, "Permission denied")
        assert host.proc is not None and host.proc.poll() is None
    finally:
        jobs.chmod(0o755)
    serving(host)
    host.wait_state("early", "succeeded")


@pytest.mark.slow
@needs_setpriv
def test_unreadable_sub_folder_is_refused_and_its_jobs_are_not_killed(host: Host) -> None:
    host.prefix = NO_DAC if os.geteuid() == 0 else []
    host.start()
    host.drop("team/long.yaml", "commands: sleep 60\n")
    pid = host.wait_state("team/long", "running")["pid"]
    team = host.spool / "jobs" / "team"
    team.chmod(0)
    try:
        refused = wait_for(lambda: {r["file"]: r["reason"] for r in
                                    host.heartbeat().get("refused", [])}.get("team/"),
                           what="team/ under refused:")
        assert "Permission denied" in refused
        host.drop("after.yaml", "commands: 'true'\n")  # the daemon goes on
        host.wait_state("after", "succeeded")
        assert pid_alive(pid) and (host.status("team/long") or {})["state"] == "running"
    finally:
        team.chmod(0o755)
    wait_for(lambda: "refused" not in host.heartbeat(), what="team/ no longer refused")
    (team / "long.yaml").unlink()  # listed again: deleting it kills it, as ever
    assert host.wait_state("team/long", "killed")["reason"] == "job file deleted"


def test_a_folder_swapped_for_a_link_after_the_listing_is_not_read_through(
        tmp_path: Path) -> None:
    jobs, outside = tmp_path / "jobs", tmp_path / "outside"
    (jobs / "sub").mkdir(parents=True)
    (jobs / "sub" / "x.yaml").write_text("commands: ls\n")
    info = list_jobs(jobs).jobs["sub/x"]
    (jobs / "sub").rename(outside)  # the very same file, now outside the spool
    (jobs / "sub").symlink_to(outside)
    assert read_job_file(info, 65536) == b"commands: ls\n"  # by path: through the link
    with pytest.raises(Refused, match="folder above it is a symbolic link"):
        read_job_file(info, 65536, jobs)
    (jobs / "sub").unlink()
    (jobs / "sub").mkdir()
    with pytest.raises(FileNotFoundError):
        read_job_file(info, 65536, jobs)


def _nest(top: Path, depth: int, width: int) -> Path:
    """``depth`` folders of ``width``-character names below ``top``, made by descriptors
    (the path is too long for any call that takes a path)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        name = chr(ord("a") + i % 26) * width
        os.mkdir(name, dir_fd=fd)
        below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    job = os.open("deep.yaml", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(job, b"commands: touch /tmp/never\n")
    os.close(job)
    os.close(fd)
    return top / ("a" * width)


def test_folders_nested_past_path_max_are_refused_and_the_daemon_serves(host: Host) -> None:
    first = _nest(host.spool / "jobs", 22, 200)
    host.drop("ok.yaml", "commands: 'true'\n")
    host.start()
    host.wait_state("ok", "succeeded")
    refused = {r["file"]: r["reason"] for r in host.heartbeat().get("refused", [])}
    deep = [rel for rel in refused if rel.startswith(first.name + "/")]
    assert len(deep) == 1 and f"longer than {MAX_PATH} bytes" in refused[deep[0]], refused
    assert host.proc is not None and host.proc.poll() is None
    assert not Path("/tmp/never").exists()


def test_listing_errors_are_refusals_not_crashes(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "a.yaml").write_text("commands: ls\n")
    deep = jobs / "/".join(["d"] * 40)
    deep.mkdir(parents=True)
    (deep / "x.yaml").write_text("commands: ls\n")
    listing = list_jobs(jobs)
    assert list(listing.jobs) == ["a"]
    (folder,) = listing.refused
    assert folder.count("/") == 33 and "folders deep" in listing.refused[folder]
    assert listing.holds("/".join(["d"] * 40) + "/x") and not listing.holds("a")
    for make, words in ((lambda: jobs.rename(tmp_path / "gone"), "missing"),
                        (lambda: jobs.symlink_to(tmp_path / "gone"), "symbolic link"),
                        (lambda: (jobs.unlink(), jobs.write_text("")), "not a folder")):
        make()
        with pytest.raises(Unavailable, match=words):
            list_jobs(jobs)


# --- the spawn path: a failure of any kind fails one job, never its batch ---------------


class FailSome(DieBeforeSpawn):
    """The real process API, except that some jobs' spawns raise what they name."""

    def __init__(self, errors: dict[str, Exception]) -> None:
        self.errors = errors

    def spawn(self, launch: process.Launch) -> process.Started:
        error = self.errors.get(launch.env["FILEREXEC_JOB"])
        if error is not None:
            raise error
        return process.spawn(launch)


def test_a_spawn_that_fails_in_any_way_fails_that_job_and_the_batch_runs(
        spool: Path, tmp_path: Path) -> None:
    errors: dict[str, Exception] = {
        "nul": ValueError("embedded null byte"),
        "big": OSError(errno.E2BIG, "Argument list too long"),
        "odd": RuntimeError("something nobody expected"),
    }
    names = ["a", *errors, "z"]
    for name in names:
        (spool / "jobs" / f"{name}.yaml").write_text("commands: 'true'\n")
    daemon = Daemon(Settings(spool=spool, host="h", state_dir=tmp_path / "state", poll=True,
                             settle=0.0), procs=FailSome(errors))
    daemon.open()
    try:
        daemon.run(threading.Event(), once=True)  # all five launch in one step
        states = {n: (daemon.jobs[n].state, daemon.jobs[n].reason) for n in names}
    finally:
        daemon.close()
    assert states["a"] == states["z"] == (State.SUCCEEDED, "exit code 0")
    assert states["nul"] == (State.FAILED, "could not start: ValueError: embedded null byte")
    assert states["big"][0] is State.FAILED and "Argument list too long" in states["big"][1]
    assert states["odd"] == (State.FAILED, "could not start: RuntimeError: something nobody "
                                           "expected")


# --- the listing path, fuzzed: any error of any entry or folder --------------------------

_ERRNOS = [errno.EACCES, errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.ENOENT,
           errno.ENOTDIR, errno.EMFILE]


class _Entry:
    """A directory entry whose stat fails with an injected error."""

    def __init__(self, entry: os.DirEntry[str], code: int) -> None:
        self.name, self.path, self._code = entry.name, entry.path, code

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        raise OSError(self._code, os.strerror(self._code))


_FILES = ("a.yaml", "d/b.yaml", "d/e/c.yaml", "f.yaml")
_FOLDERS = ("d", "d/e")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(st.sampled_from(_FILES), st.sampled_from(_ERRNOS), max_size=3),
       folders=st.dictionaries(st.sampled_from(_FOLDERS), st.tuples(
           st.sampled_from(["open", "scandir"]), st.sampled_from(_ERRNOS)), max_size=2))
def test_listing_errors_anywhere_refuse_that_entry_and_never_raise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, int],
        folders: dict[str, tuple[str, int]]) -> None:
    jobs = tmp_path / "fuzz" / "jobs"
    if not jobs.exists():
        (jobs / "d" / "e").mkdir(parents=True)
        for rel in _FILES:
            (jobs / rel).write_text("commands: ls\n")
    real_open, real_scandir = os.open, os.scandir
    names: dict[int, str] = {}  # descriptor → its folder, relative to jobs/ ("" for jobs/)

    def fault(rel: str, where: str) -> None:
        if rel in folders and folders[rel][0] == where:
            raise OSError(folders[rel][1], os.strerror(folders[rel][1]))

    def fake_open(path: str | Path, flags: int, mode: int = 0o777, *,
                  dir_fd: int | None = None) -> int:
        rel = "" if dir_fd is None else f"{names[dir_fd]}{path}"
        fault(rel, "open")
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        names[fd] = rel + "/" if rel else ""
        return fd

    def fake_scandir(folder: int) -> Any:
        prefix = names[folder]
        fault(prefix.rstrip("/"), "scandir")
        with real_scandir(folder) as entries:
            listed = [_Entry(e, files[prefix + e.name]) if prefix + e.name in files else e
                      for e in entries]
        return contextlib.nullcontext(iter(listed))

    monkeypatch.setattr(os, "open", fake_open)  # for the walk alone: undone right after it
    monkeypatch.setattr(os, "scandir", fake_scandir)
    try:
        listing = list_jobs(jobs)  # raises nothing
    finally:
        monkeypatch.undo()

    def below_fault(rel: str) -> bool:
        return any(rel.startswith(f + "/") for f in folders)
    assert set(listing.jobs) == {r.removesuffix(".yaml") for r in _FILES
                                 if r not in files and not below_fault(r)}
    faulted = {**{r: (r, "stat", c) for r, c in files.items()},
               **{r: (r + "/", w, c) for r, (w, c) in folders.items()}}
    for rel, (shown, where, code) in faulted.items():
        if below_fault(rel) or (code == errno.ENOENT and where != "scandir"):
            assert shown not in listing.refused  # not reached, or vanished: nothing to say
        else:
            assert os.strerror(code) in listing.refused[shown], (faulted, listing.refused)
            job = rel.removesuffix(".yaml") if rel in files else rel + "/x"
            assert listing.holds(job)  # neither run nor counted as deleted


# --- a failure that repeats is logged once, and shown in host.yaml -----------------------


def test_a_status_write_that_keeps_failing_is_logged_once_and_shown_in_host_yaml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    status = StatusDir(tmp_path / "spool", "h")
    writer = StatusWriter(status, log_cap=1024, inline=True)
    status.root.mkdir(parents=True)
    real_open = os.open
    failing = [errno.EACCES]

    def refuse_temp_files(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        # What the kernel says, with the temp file's name that is new at every try.
        if failing and str(path).startswith(TEMP_PREFIX):
            raise OSError(failing[0], os.strerror(failing[0]), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_temp_files)
    caplog.set_level(logging.INFO, logger="filerexec.writer")
    job = Job("index", State.SUCCEEDED, "exit code 0")  # a job may be called index
    for _ in range(3):
        writer.job(job)
        writer.flush()
    failing[0] = errno.ENOSPC  # it changes: logged again, once
    for _ in range(2):
        writer.job(job)
        writer.flush()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "Permission denied" in warnings[0] and "No space left" in warnings[1]
    assert not any(TEMP_PREFIX in w for w in warnings)
    # host.yaml (written beside it, when that works) lists what keeps failing, until it works.
    monkeypatch.undo()
    monkeypatch.setattr(status, "write_job", fail_like_a_full_disk)
    writer.job(job)
    writer.host(lambda: {"host": "h"})
    writer.flush()
    shown = yaml.safe_load((status.root / "host.yaml").read_text())
    assert shown["failing"] == ["cannot write the status of index: No space left on device"]
    monkeypatch.undo()
    writer.job(job)
    writer.host(lambda: {"host": "h"})
    writer.flush()
    assert "failing" not in yaml.safe_load((status.root / "host.yaml").read_text())
    assert "writing the status of index works again" in caplog.text


def fail_like_a_full_disk(job: Job, conflicts: Any = ()) -> bool:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{TEMP_PREFIX}0123abcd.tmp")
