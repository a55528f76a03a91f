"""filerexec.process with real processes and real files (POSIX), plus pure argv builders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from filerexec import process, winjob, winproc
from filerexec.process import (
    Child,
    Handle,
    Launch,
    SpawnError,
    alive,
    kill,
    read_exit,
    script,
    spawn,
    terminate,
)
from tests.util import wait_for

ROOT = Path(__file__).resolve().parent.parent
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc scan")

pytestmark = pytest.mark.timeout(30)


AHEAD = [False]  # whether launch() starts the run's waiting parent ahead (fixture `ahead`)
_parents: list[process.Parent] = []


@pytest.fixture(autouse=True, params=["usual", "ahead"])
def ahead(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Every test twice: spawned the usual way, and handed to a waiting parent started ahead
    (process.prepare), which must behave the same in every way tested here."""
    _parents.clear()
    AHEAD[0] = request.param == "ahead"
    yield AHEAD[0]
    AHEAD[0] = False
    for parent in _parents:
        assert parent.retire(wait=10)
    _parents.clear()


def launch(tmp_path: Path, *commands: str, **kw: Any) -> Launch:
    run_id = f"test-{uuid.uuid4().hex[:12]}"
    parent = None
    if AHEAD[0]:
        parent = process.prepare(run_id, tmp_path / "exit")
        if parent is not None:
            _parents.append(parent)
    return Launch(run_id=run_id, commands=commands, output_path=tmp_path / "out.log",
                  exit_path=tmp_path / "exit", parent=parent, **kw)


@pytest.fixture
def start() -> Iterator[Callable[[Launch], Child]]:
    """spawn(), with every child killed and reaped even when a test fails halfway."""
    spawned: list[tuple[Child, str]] = []

    def _start(lc: Launch) -> Child:
        child = spawn(lc)
        spawned.append((child, lc.run_id))
        return child

    yield _start
    for child, run_id in spawned:
        kill(child.handle, run_id)
        child.wait(10)


def run(lc: Launch) -> tuple[int, str]:
    code = spawn(lc).wait(10)
    return code, lc.output_path.read_text()


def gone(pid: int) -> bool:
    # A reparented process may stay a zombie when the container's init does not reap.
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- exit codes and command lists -------------------------------------------------

@posix_only
@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_recorded_and_returned(tmp_path: Path, code: int) -> None:
    lc = launch(tmp_path, f"exit {code}")
    assert run(lc)[0] == code
    assert read_exit(lc.exit_path) == code


@posix_only
def test_list_stops_at_first_failing_line(tmp_path: Path) -> None:
    code, out = run(launch(tmp_path, "echo one", "(exit 4)", "echo three"))
    assert (code, out) == (4, "one\n")


@posix_only
def test_list_runs_every_line_in_one_shell(tmp_path: Path) -> None:
    code, out = run(launch(tmp_path, "X=1  # a comment", "", "echo $X", "echo two"))
    assert (code, out) == (0, "1\ntwo\n")


def test_read_exit_ignores_missing_partial_and_garbage(tmp_path: Path) -> None:
    f = tmp_path / "exit"
    assert read_exit(f) is None
    f.write_bytes(b"12")
    assert read_exit(f) is None
    f.write_bytes(b"oops\n")
    assert read_exit(f) is None
    f.write_bytes(b"12\n")
    assert read_exit(f) == 12


# --- output ---------------------------------------------------------------------------

@posix_only
@pytest.mark.parametrize(("stdout", "stderr", "expected"), [
    (True, True, "old\nout\nerr\n"), (False, True, "old\nerr\n"),
    (True, False, "old\nout\n"), (False, False, "old\n")])
def test_output_flags_and_appending(tmp_path: Path, stdout: bool, stderr: bool,
                                    expected: str) -> None:
    lc = launch(tmp_path, "echo out; echo err >&2", stdout=stdout, stderr=stderr)
    lc.output_path.write_text("old\n")
    assert run(lc) == (0, expected)


@posix_only
def test_big_output_goes_straight_to_the_file(tmp_path: Path) -> None:
    lc = launch(tmp_path, "head -c 20971520 /dev/zero")
    assert spawn(lc).wait(10) == 0
    assert lc.output_path.stat().st_size == 20971520


# --- killing --------------------------------------------------------------------------

@posix_only
def test_terminate_kills_the_whole_tree(tmp_path: Path, start: Callable[[Launch], Child]) -> None:
    lc = launch(tmp_path, "sleep 300 & sleep 300; wait")
    child = start(lc)
    leader = psutil.Process(child.handle.pid)
    wait_for(lambda: [p.name() for p in leader.children(recursive=True)].count("sleep") == 2,
             what="both sleeps")
    pids = [child.handle.pid, *(p.pid for p in leader.children(recursive=True))]
    assert len(pids) >= 4  # wrapper, job shell, two sleeps
    terminate(child.handle, lc.run_id)
    assert child.wait(10) == 143
    assert read_exit(lc.exit_path) == 143
    wait_for(lambda: all(gone(p) for p in pids), what="every process of the tree gone")


@posix_only
def test_kill_reaches_a_job_that_ignores_term(tmp_path: Path,
                                              start: Callable[[Launch], Child]) -> None:
    # The wrapper outlives TERM, so the leader stays alive() and KILL still goes to the group.
    lc = launch(tmp_path, "trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done")
    child = start(lc)
    # Signal only once the trap is in place, or TERM would end the job before it.
    # The waiting parent creates the output file itself, maybe after spawn() returned.
    wait_for(lambda: lc.output_path.exists() and "ready" in lc.output_path.read_text(),
             what="the job's TERM trap")
    terminate(child.handle, lc.run_id)
    wait_for(lambda: "got-term" in lc.output_path.read_text(), what="TERM delivered")
    assert alive(child.handle)
    kill(child.handle, lc.run_id)
    assert child.wait(10) == 137
    assert read_exit(lc.exit_path) is None  # KILL leaves no record; the daemon keeps its own


@linux_only
@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid")
@pytest.mark.parametrize("stop", [terminate, kill])
def test_escaped_process_is_signalled(tmp_path: Path, start: Callable[[Launch], Child],
                                      stop: Callable[[Handle, str], None]) -> None:
    pidfile = tmp_path / "escapee"
    lc = launch(tmp_path, f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' & wait")
    child = start(lc)
    pid = wait_for(lambda: int(pidfile.read_text() or 0) if pidfile.exists() else 0,
                   what="escapee pid")
    wait_for(lambda: psutil.Process(pid).name() == "sleep", what="escapee exec")
    assert os.getsid(pid) != child.handle.pid  # it really left the session
    stop(child.handle, lc.run_id)
    child.wait(10)
    wait_for(lambda: gone(pid), what="escaped sleep gone")


@posix_only
def test_wrong_create_time_is_never_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        handle = Handle(sleeper.pid, psutil.Process(sleeper.pid).create_time() - 1.0)
        assert not alive(handle)
        sent: list[tuple[int, int]] = []
        real_kill, real_killpg = os.kill, os.killpg

        def spy_kill(pid: int, sig: int) -> None:
            sent.append((pid, sig))
            real_kill(pid, sig)

        def spy_killpg(pid: int, sig: int) -> None:
            sent.append((pid, sig))
            real_killpg(pid, sig)

        monkeypatch.setattr(os, "kill", spy_kill)
        monkeypatch.setattr(os, "killpg", spy_killpg)
        terminate(handle, f"test-{uuid.uuid4().hex}")
        kill(handle, f"test-{uuid.uuid4().hex}")
        assert sent == []
        assert sleeper.poll() is None
        assert alive(Handle(sleeper.pid, psutil.Process(sleeper.pid).create_time()))
    finally:
        sleeper.kill()
        sleeper.wait()


@posix_only
def test_zombie_is_not_alive() -> None:
    p = subprocess.Popen(["true"])
    try:
        proc = psutil.Process(p.pid)
        handle = Handle(p.pid, proc.create_time())
        wait_for(lambda: proc.status() == psutil.STATUS_ZOMBIE, what="zombie")
        assert not alive(handle)
    finally:
        p.wait()


# --- surviving the daemon -------------------------------------------------------------

@posix_only
def test_exit_code_recorded_after_the_spawner_is_gone(tmp_path: Path) -> None:
    go = tmp_path / "go"
    code = (
        "import sys; from pathlib import Path; from filerexec.process import Launch, spawn\n"
        "c = spawn(Launch(run_id='t', commands=(sys.argv[1],),"
        " output_path=Path(sys.argv[2]), exit_path=Path(sys.argv[3])))\n"
        "print(c.handle.pid)\n")
    job = f"while [ ! -e {go} ]; do sleep 0.02; done; exit 5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, job, str(tmp_path / "out"),
                           str(tmp_path / "exit")], env=env, capture_output=True, text=True,
                          check=True, timeout=20)
    pid = int(done.stdout)
    assert not gone(pid)  # the spawner has exited; the wrapper still waits for the job
    assert read_exit(tmp_path / "exit") is None
    go.touch()
    assert wait_for(lambda: read_exit(tmp_path / "exit"), what="exit code") == 5


# --- cwd, env, shell --------------------------------------------------------------------

@posix_only
def test_cwd_env_and_run_id(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    lc = launch(tmp_path, 'pwd; echo "$FOO $FILEREXEC_RUN_ID"', cwd=str(tmp_path / "d"),
                env={"FOO": "bar"})
    code, out = run(lc)
    assert code == 0
    assert out.splitlines() == [str((tmp_path / "d").resolve()), f"bar {lc.run_id}"]


@posix_only
@pytest.mark.parametrize("cwd", [None, "~"])
def test_cwd_defaults_to_home(tmp_path: Path, cwd: str | None) -> None:
    code, out = run(launch(tmp_path, "pwd -P", cwd=cwd))
    assert (code, out) == (0, os.path.realpath(os.path.expanduser("~")) + "\n")


@posix_only
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_shell_bash(tmp_path: Path) -> None:
    assert run(launch(tmp_path, "[[ -n $BASH_VERSION ]] && echo bash", shell="bash")) == (
        0, "bash\n")


def test_bad_cwd_is_a_readable_error(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match=r"^working directory ~/nope-\w+ does not exist$"):
        spawn(launch(tmp_path, "true", cwd=f"~/nope-{uuid.uuid4().hex}"))
    (tmp_path / "file").touch()
    with pytest.raises(SpawnError, match="is not a directory"):
        spawn(launch(tmp_path, "true", cwd=str(tmp_path / "file")))


@posix_only
@pytest.mark.parametrize(("stdout", "stderr", "kept"), [
    (True, True, "out\nerr\n"), (True, False, "out\n"), (False, True, "err\n"),
    (False, False, "")])
def test_stdout_and_stderr_each_go_to_the_output_or_nowhere(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], stdout: bool, stderr: bool,
        kept: str) -> None:
    lc = launch(tmp_path, "echo out; echo err >&2", stdout=stdout, stderr=stderr)
    assert spawn(lc).wait(10) == 0
    # Neither kept: the waiting parent opens no output file at all.
    assert (lc.output_path.read_text() if lc.output_path.exists() else "") == kept
    assert "out" not in capfd.readouterr().out  # nor anywhere else


@posix_only
def test_an_output_file_that_cannot_be_opened_fails_the_run_and_runs_nothing(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out.log").mkdir()  # the waiting parent opens it itself: EISDIR there
    marker = tmp_path / "ran"
    code = spawn(launch(tmp_path, f"touch {marker}")).wait(10)
    assert code == 2 and read_exit(tmp_path / "exit") == 2 and not marker.exists()
    assert "out.log" in capfd.readouterr().err  # the shell's words, in the daemon's log


def test_unknown_shell_is_a_readable_error(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match=r"^shell 'no-such-shell-x' not found$"):
        spawn(launch(tmp_path, "true", shell="no-such-shell-x"))
    with pytest.raises(SpawnError, match=r"^shell '/nope/zsh' not found$"):
        spawn(launch(tmp_path, "true", shell="/nope/zsh"))


# --- pure argv builders ---------------------------------------------------------------

def test_script_posix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_NT", False)  # the default shell: /bin/sh
    assert script(("ls -l",), None) == ["/bin/sh", "-c", "ls -l"]
    assert script(("a", " ", "b # c"), "/usr/bin/bash") == [
        "/usr/bin/bash", "-c", "{ a\n} || exit $?\n{ b # c\n} || exit $?\n"]
    assert script(("a",), "bash") == ["bash", "-c", "a"]


def test_script_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_NT", True)
    assert script(("dir", "echo hi"), None) == ["cmd.exe", "/d", "/s", "/c", "dir && echo hi"]
    assert script(("x",), r"C:\Windows\System32\CMD.EXE")[1:] == ["/d", "/s", "/c", "x"]
    ps = script(("a", "b"), "powershell")
    assert ps[:4] == ["powershell", "-NoProfile", "-NonInteractive", "-Command"]
    assert ps[4].startswith("a\nif (-not $?) {") and "\nb\nif (-not $?) {" in ps[4]
    assert "exit $LASTEXITCODE" in ps[4]
    assert script(("Get-Date",), "pwsh.exe")[4] == "Get-Date"


def test_windows_command_line_and_taskkill() -> None:
    line = process._nt_command_line(["C:\\Windows\\cmd.exe", "/d", "/s", "/c", 'echo "a b"'])
    assert line == 'C:\\Windows\\cmd.exe /d /s /c "echo "a b""'
    assert process._nt_command_line(["pwsh", "-Command", "a b"]) == 'pwsh -Command "a b"'
    assert winproc.taskkill_argv(42, "C:\\Windows") == [
        "C:\\Windows\\System32\\taskkill.exe", "/T", "/F", "/PID", "42"]


def test_popen_command_and_process_group_per_platform(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    exit_path, out = tmp_path / "r.exit", tmp_path / "r.out"
    lc = Launch(run_id="run-1", commands=("x",), output_path=out, exit_path=exit_path)
    monkeypatch.setattr(process, "_NT", False)
    command, group = process._command(["/bin/bash", "-c", "x"], lc)
    assert command[:2] == ["/bin/sh", "-c"] and command[3:] == [
        "filerexec-run", str(exit_path), str(out), "oe", "/bin/bash", "-c", "x"]
    assert group == {"start_new_session": True}
    command, _ = process._command(["/bin/sh", "-c", "x"], lc)  # its own shell
    assert command[3:] == ["/bin/sh", str(exit_path), str(out), "oe", "-c", "x"]  # a subshell
    quiet = Launch(run_id="run-1", commands=("x",), output_path=out, exit_path=exit_path,
                   stdout=False, stderr=False)
    assert process._command(["/bin/sh", "-c", "x"], quiet)[0][6] == "-"  # neither kept
    monkeypatch.setattr(process, "_NT", True)
    monkeypatch.setattr(sys, "_base_executable", r"C:\Python\python.exe", raising=False)
    command, group = process._command([r"C:\Windows\System32\cmd.exe", "/d", "/s", "/c", "x"],
                                      lc)
    # The waiting parent: winjob.py by path, isolated, with the job's command line.
    assert command == [r"C:\Python\python.exe", "-I", "-S", winjob.__file__, str(exit_path),
                       "filerexec-run-1", r'C:\Windows\System32\cmd.exe /d /s /c "x"']
    assert group == {"creationflags": 0x200}  # CREATE_NEW_PROCESS_GROUP


def test_the_windows_waiting_parent_records_the_exit_code(tmp_path: Path) -> None:
    """winjob.py as the waiting parent (on POSIX without a Job Object: there is none)."""
    exit_path, program = tmp_path / "r.exit", tmp_path / "seven"
    program.write_text("#!/bin/sh\nexit 7\n")
    program.chmod(0o700)
    line = "cmd.exe /d /c exit 7" if os.name == "nt" else str(program)
    done = subprocess.run([sys.executable, "-I", "-S", winjob.__file__, str(exit_path),
                           winjob.job_name(uuid.uuid4().hex), line], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, timeout=60, check=False)
    assert done.returncode == 7
    assert exit_path.read_bytes() == b"7\n"
    done = subprocess.run([sys.executable, "-I", "-S", winjob.__file__, str(exit_path), "job",
                           str(tmp_path / "missing")], stdin=subprocess.DEVNULL, timeout=30,
                          check=False, capture_output=True)
    assert done.returncode == 127 and process.read_exit(exit_path) == 127
    assert b"cannot start" in done.stderr


def test_windows_terminate_and_kill_end_the_tree_with_taskkill_by_absolute_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(process, "_NT", True)
    monkeypatch.setenv("SYSTEMROOT", r"D:\Win")
    monkeypatch.setattr("filerexec.winproc.subprocess.run", lambda argv, **kw: calls.append(
        argv) or subprocess.CompletedProcess(argv, 0, b"", b""))
    monkeypatch.setattr(os, "killpg", lambda *a: pytest.fail("killpg on Windows"), raising=False)
    monkeypatch.setattr(process, "alive", lambda handle: handle.pid == 42)
    process.terminate(Handle(42, 1.0), "run")
    process.kill(Handle(42, 1.0), "run")
    process.kill(Handle(43, 1.0), "run")  # not alive (or its pid reused): never signalled
    assert calls == [[r"D:\Win\System32\taskkill.exe", "/T", "/F", "/PID", "42"]] * 2


def test_windows_tree_kill_without_taskkill_ends_every_descendant(tmp_path: Path) -> None:
    """Where there is no Job Object and taskkill fails (Wine 8 has no /T) the tree is walked
    by parent pid and ended (on Windows: cmd, the cmd it started, that one's ping)."""
    if os.name == "nt":
        argv, below = ["cmd.exe", "/d", "/c", "cmd /d /c ping -n 300 127.0.0.1"], 2
    else:
        argv, below = ["/bin/sh", "-c", "sleep 300 & (sleep 300 & wait) & wait"], 3
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) as shell:
        pids = wait_for(lambda: len(d := winproc.descendants(shell.pid, winproc._parents()))
                        == below and d, timeout=30, what="the tree to be started")
        tree = [psutil.Process(p) for p in pids]
        assert winproc.kill_tree(shell.pid, "no-job-" + uuid.uuid4().hex,
                                 str(tmp_path / "no-windows")) is None
        shell.wait(30)  # ended (by the kill, or as its children died first)
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                 for p in tree), timeout=30, what="the whole tree to be gone")


def test_windows_tree_order_parents_before_children() -> None:
    parents = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 0: 0}
    assert winproc.descendants(10, parents) == [11, 13, 12]
    assert winproc.descendants(99, parents) == []


@linux_only
def test_a_job_in_the_wrappers_own_shell_runs_in_a_fork_of_it_as_sh_c_would_run_it(
        tmp_path: Path) -> None:
    """One exec per job, not two: /bin/sh jobs run in a subshell of the waiting parent (its
    argv is the wrapper's), and see what `sh -c` shows them: $0, no arguments, none of the
    wrapper's variables, no trap; every other shell is exec'd by the waiting parent."""
    probe = ('echo "$0|$#|${f-unset}|${s-unset}|${c-unset}|${_fx_f-unset}|${_fx_s-unset}|'
             '${_fx_c-unset}|${_fx_go-unset}|$(trap)"')
    own = "read me _ </proc/self/stat; tr '\\0\\n' '  ' </proc/$me/cmdline; echo"
    code, out = run(launch(tmp_path, f"{own}; {probe}; exit 7", env={"f": "1", "c": "2"}))
    cmdline, shown = out.splitlines()
    assert code == 7 and read_exit(tmp_path / "exit") == 7
    wrapper = process._WAITING if AHEAD[0] else process._WRAPPER
    assert cmdline.startswith(f"/bin/sh -c {wrapper.split(chr(10))[0]}")  # the parent, forked
    plain = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, text=True,
                           env={**os.environ, "f": "1", "c": "2"})
    assert shown == plain.stdout.strip() == "/bin/sh|0|1|unset|2|unset|unset|unset|unset|"
    bash = shutil.which("bash")
    if bash is not None:  # another shell: the waiting parent execs it, as before
        (tmp_path / "out.log").unlink()
        code, out = run(launch(tmp_path, own, shell=bash))
        assert code == 0 and out.startswith(f"{bash} -c ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_start_time_read_from_proc_is_the_one_psutil_gives(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "5"])
    try:
        assert process._started(child.pid) == psutil.Process(child.pid).create_time()
        assert process.alive(process.Handle(child.pid, process._started(child.pid)))
    finally:
        child.kill()
        child.wait()
    assert process._started(child.pid) == 0.0  # ended: never alive again
