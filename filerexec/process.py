"""Spawn, signal and inspect job processes: the only module that does.

The daemon owns every clock and decision; this module only acts.

POSIX: a job runs under a tiny ``/bin/sh`` *waiting parent* (the wrapper) started
in a new session, so the wrapper's pid is also the process group id and
``killpg`` reaches the whole tree. The wrapper runs the job's shell as its child
(a job in ``/bin/sh`` itself, the default, in a subshell: one exec per job, not two),
then writes the exit code plus a newline to ``exit_path`` and exits with the same
code — so the code survives a daemon restart without a Python interpreter per job.

- A waiting parent can be started ahead of its run (``prepare``, POSIX): it waits on
  its stdin, then sources its run's script (the job's folder, output, variables and
  commands, written by ``spawn`` into ``exit_path``, which the exit code then replaces:
  a file less per run) and goes on as above. Popen and the shell's own
  start (~1.5 ms here) then happen before a job file arrives, not after.
- TERM to the group: the job stops, and the wrapper (which catches TERM only to
  outlive the job) records 128+15. KILL ends the wrapper too and nothing is
  recorded; the daemon records its own kills. A job killed by a signal nobody
  here sent is recorded as 128+N, as a shell reports it.
- Every job process carries ``FILEREXEC_RUN_ID``; on Linux ``terminate``/``kill``
  also signal processes with that run id that left the group (setsid, double fork).

Windows: the waiting parent is ``winjob.py`` run as a bare script by the daemon's
own Python (``-I -S``: no site, no current folder on its path), in a new process
group. It puts itself and so everything the job starts into a Job Object named
after the run id, runs the job's shell and records its exit code like the POSIX
one. ``winproc.kill_tree`` ends the Job Object (found by name, after a daemon
restart too), falling back to taskkill and the process table; ``find`` lists the
job's members and ``sweep`` ends the jobs of finished runs (their escapees).
``terminate`` is ``kill`` on Windows (console jobs have no graceful tree signal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Protocol

import psutil

from filerexec import winjob, winproc

logger = logging.getLogger(__name__)

RUN_ID_VAR = "FILEREXEC_RUN_ID"
_NT = os.name == "nt"
_LINUX = sys.platform.startswith("linux")
_TICKS = os.sysconf("SC_CLK_TCK") if _LINUX else 100  # /proc's unit of a start time
_CREATE_NEW_PROCESS_GROUP = 0x00000200  # subprocess's constant exists only on Windows
_START_TOLERANCE = 0.05  # seconds; psutil start times are clock-tick (10 ms) precise
_OUT_FLAGS: int = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                   | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0))

# $1 is the exit file, the rest the job's argv. The caught TERM is reset to the
# default in the job (so the group's TERM still stops it) and the shell runs the
# trap only once its foreground job has ended. printf is a builtin: no extra fork,
# and "N\n" lands in one write, so a reader never mistakes a partial file.
# A job whose shell is this very /bin/sh comes as "-c SCRIPT": it runs in a subshell
# (a fork, no second exec: ~3 ms less per job on a busy machine, measured), as
# `sh -c SCRIPT` would run it: $0 is the shell, no positional parameters, none of the
# wrapper's variables, TERM at its default. The wrapper's variables are named so that no
# job's own (env: f, s, c) is taken for them.
# Where a job's stdout and stderr go (to "$_fx_o", the output file, appended), by which of
# them are kept (``_kept``): one rule for _WRAPPER and the script of a parent started ahead.
_REDIRECTS = {"oe": '>>"$_fx_o" 2>&1', "o": '>>"$_fx_o" 2>/dev/null',
              "e": '>/dev/null 2>>"$_fx_o"', "-": '>/dev/null 2>&1'}
_WRAPPER = ("""_fx_f=$1 _fx_o=$2; shift 2
trap : TERM
case $1 in
""" + "".join(f"{kept}) command exec {redirect};;\n" for kept, redirect in _REDIRECTS.items())
            + """esac && shift && unset _fx_o &&
if [ "$1" = -c ]; then (trap - TERM; unset _fx_f; _fx_s=$2; set --; eval "unset _fx_s; $_fx_s")
else "$@"; fi
_fx_c=$?
printf '%d\\n' "$_fx_c" >"$_fx_f"
exit "$_fx_c"
""")
# ($2 is the output file, $3 which of stdout and stderr go there.) The waiting parent opens
# the job's output itself: creating a file took ~1.5 ms of the daemon's loop per job in a
# burst (measured), and the parent does it beside the loop. `command` keeps a redirection
# that fails from ending the shell: the run fails with its status, and the shell's message
# goes to the daemon's log.
# The waiting parent started ahead (``prepare``): $1 is its run's script, in the run's exit
# file. A newline on stdin says the script is written; end of file (the daemon gone, the
# parent retired) that nothing is to run. The script sets _fx_f (that same file, which the
# code then replaces: read_exit never takes a script for a code), enters the job's folder,
# opens its output and runs it as _WRAPPER does (``_run_script``).
_WAITING = """trap : TERM
IFS= read -r _fx_go || exit 0
exec </dev/null
. "$1"
_fx_c=$?
printf '%d\\n' "$_fx_c" >"$_fx_f"
exit "$_fx_c"
"""
# Variables a running shell gives a meaning that a new shell would not take from its
# environment: a job setting one is started the usual way, as `sh -c` would see them.
_SHELL_OWN = frozenset({"IFS", "PWD", "OLDPWD", "PPID", "OPTIND", "OPTARG", "PS1", "PS2", "PS4",
                        "ENV", "LINENO", RUN_ID_VAR})
_WRAPPER_SHELL = "/bin/sh"


class SpawnError(OSError):
    """A job could not be started; ``str(error)`` is a sentence for its status file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """Everything needed to start one run of a job."""

    run_id: str                      # unique per run, e.g. "20261128T060102-ab12cd"
    commands: tuple[str, ...]        # run in order in one shell; the first failure ends it
    output_path: Path                # the job writes its output straight into this file
    exit_path: Path                  # the waiting parent records the exit code here
    shell: str | None = None         # None: /bin/sh (cmd.exe on Windows); a name or a path
    cwd: str | None = None           # None: the user's home; "~" is expanded
    env: Mapping[str, str] = field(default_factory=dict)  # on top of os.environ
    stdout: bool = True              # False: the job's stdout goes to the null device
    stderr: bool = True
    parent: Parent | None = None     # a waiting parent started for this run id (``prepare``)


@dataclass(frozen=True, slots=True)
class Handle:
    """Finds a job's process again, even after a daemon restart (kept in the ledger)."""

    pid: int
    create_time: float  # psutil start time: a reused pid never matches it


class Child:
    """A job this daemon spawned: its ``handle`` and a blocking ``wait``."""

    def __init__(self, popen: subprocess.Popen[bytes], handle: Handle) -> None:
        self._popen = popen
        self.handle = handle

    def wait(self, timeout: float | None = None) -> int:
        """Block until the job ends and return its exit code (128+N if signal N ended it).

        Raises ``subprocess.TimeoutExpired`` if ``timeout`` passes first.
        """
        code = self._popen.wait(timeout)
        return 128 - code if code < 0 else code

    def poll(self) -> int | None:
        """The exit code if the job has ended (and is reaped now), else None."""
        return None if self._popen.poll() is None else self.wait()


class Parent:
    """A waiting parent started ahead of its run (``prepare``); ``spawn`` hands it the job."""

    def __init__(self, run_id: str, popen: subprocess.Popen[bytes], handle: Handle,
                 script: Path, fd: int) -> None:
        self.run_id = run_id
        self.script = script  # the run's script file, open for writing as ``fd``
        self.handle = handle
        self._popen = popen
        self._fd: int | None = fd

    def go(self, text: str) -> Child:
        """Write the run's script and let the parent run it; OSError if it is gone."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise OSError("this waiting parent was used or retired")
        try:
            os.write(fd, os.fsencode(text))
        finally:
            os.close(fd)
        assert self._popen.stdin is not None
        self._popen.stdin.write(b"\n")
        self._popen.stdin.close()  # the flush is the signal; BrokenPipeError if it died
        return Child(self._popen, self.handle)

    def retire(self, wait: float = 0.0) -> bool:
        """Let an unused parent end without running anything (waiting up to ``wait`` seconds
        for it); True once it has ended."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.script.unlink(missing_ok=True)
        if self._popen.stdin is not None and not self._popen.stdin.closed:
            with contextlib.suppress(OSError):
                self._popen.stdin.close()  # end of file: it exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(wait)
        return self._popen.poll() is not None


def prepare(run_id: str, script: Path) -> Parent | None:
    """Start the waiting parent of a future run ``run_id`` (POSIX; None elsewhere, or if it
    cannot start): in its own session, carrying the run id, its script file ``script`` (the
    run's exit path) created and kept open. ``spawn`` of a ``Launch`` with this ``parent``
    and that ``exit_path`` hands it the job."""
    if _NT:
        return None
    try:
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        popen = subprocess.Popen(
            [_WRAPPER_SHELL, "-c", _WAITING, _WRAPPER_SHELL, str(script)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,  # stderr: ours, as _WRAPPER's
            env={**os.environ, RUN_ID_VAR: run_id}, start_new_session=True)
    except OSError as e:
        os.close(fd)
        script.unlink(missing_ok=True)
        logger.warning("cannot start a waiting parent ahead (%s); jobs start the usual way", e)
        return None
    return Parent(run_id, popen, Handle(popen.pid, _started(popen.pid)), script, fd)


def _run_script(launch: Launch, argv: list[str], cwd: str) -> str | None:
    """The script a waiting parent sources to run ``launch`` as ``spawn`` would start it;
    None where it cannot say the same (a variable the shell itself gives a meaning)."""
    if not _SHELL_OWN.isdisjoint(launch.env):
        return None
    q = _sh_quote
    exports = " ".join(f"{k}={q(v)}" for k, v in launch.env.items())
    run = f"eval {q(argv[2])}" if _own_shell(argv) else "exec " + " ".join(q(a) for a in argv)
    return (f"set --; unset _fx_go; _fx_f={q(str(launch.exit_path))} "
            f"_fx_o={q(str(launch.output_path))}\n"
            f"cd -P -- {q(os.path.abspath(cwd))} && command exec {_REDIRECTS[_kept(launch)]} && "
            f"(trap - TERM; unset _fx_f _fx_o _fx_c{'; export ' + exports if exports else ''};"
            f" {run})\n")


def _kept(launch: Launch) -> str:
    """Which of the job's stdout and stderr go to its output file: a key of _REDIRECTS."""
    return ("o" if launch.stdout else "") + ("e" if launch.stderr else "") or "-"


def _own_shell(argv: list[str]) -> bool:
    """Whether ``argv`` is ``/bin/sh -c SCRIPT``: run in a subshell of the waiting parent."""
    return len(argv) == 3 and argv[1] == "-c" and _same_shell(argv[0])


def _sh_quote(text: str) -> str:
    if "\0" in text:
        raise ValueError("embedded null byte")
    return "'" + text.replace("'", "'\\''") + "'"


def _started(pid: int) -> float:
    """psutil's start time of ``pid``; 0.0 if it has already ended (never alive again)."""
    if _LINUX:  # psutil's own sum of two reads, at ~a third of its cost: once per spawn
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open("/proc/stat", "rb") as f:
                boot = next(line for line in f if line.startswith(b"btime "))
            ticks = int(stat[stat.rfind(b")") + 2:].split()[19])
            return ticks / _TICKS + float(boot.split()[1])
        except (OSError, StopIteration, IndexError, ValueError):
            pass  # gone, or not as expected: psutil says which
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def default_shell() -> str:
    """The shell of a job that names none, where the host's config names none either."""
    return "cmd.exe" if _NT else "/bin/sh"


def script(commands: tuple[str, ...], shell: str | None) -> list[str]:
    """The argv that runs ``commands`` in order in one shell, stopping at the first failure.

    Pure: the shell is named as given ("/bin/sh" or "cmd.exe" for None); ``spawn``
    resolves it. Blank items are dropped; one command is passed through unchanged.
    POSIX shells get ``{ ITEM\\n} || exit $?`` per item, so a failing line ends the
    script with its own code and later lines do not run.
    """
    items = [c for c in commands if c.strip()]
    name = shell or default_shell()
    kind = _kind(name)
    if kind == "cmd":
        return [name, "/d", "/s", "/c", " && ".join(items)]
    if kind == "powershell":
        check = "if (-not $?) { if ($LASTEXITCODE) { exit $LASTEXITCODE }; exit 1 }"
        body = items[0] if len(items) == 1 else "".join(f"{c}\n{check}\n" for c in items)
        return [name, "-NoProfile", "-NonInteractive", "-Command", body]
    # The newline before "}" ends a trailing comment or here-document in the item.
    body = items[0] if len(items) == 1 else "".join(f"{{ {c}\n}} || exit $?\n" for c in items)
    return [name, "-c", body]


def spawn(launch: Launch) -> Child:
    """Start a run in its own process group, its output appended to ``launch.output_path``.

    Raises ``SpawnError`` with a readable message when the working directory or the
    shell does not exist or the output file cannot be opened.
    """
    cwd = os.path.expanduser(launch.cwd or "~")
    if not os.path.isdir(cwd):
        what = "is not a directory" if os.path.exists(cwd) else "does not exist"
        raise SpawnError(f"working directory {launch.cwd or cwd} {what}")
    argv = script(launch.commands, launch.shell)
    if _NT or argv[0] != _WRAPPER_SHELL:  # POSIX's wrapper shell: if missing, nothing starts
        path = launch.env.get("PATH", os.environ.get("PATH"))
        found = shutil.which(os.path.expanduser(argv[0]), path=path)
        if found is None:
            raise SpawnError(f"shell '{launch.shell or argv[0]}' not found")
        argv[0] = found
    if not launch.exit_path.parent.is_dir():
        raise SpawnError(f"state directory {launch.exit_path.parent} does not exist")
    parent = launch.parent if launch.parent and launch.parent.run_id == launch.run_id else None
    if parent is not None:
        text = _run_script(launch, argv, cwd) if parent.script == launch.exit_path else None
        if text is not None:
            try:
                child = parent.go(text)
                logger.debug("run %s handed to its waiting parent %d: %r", launch.run_id,
                             child.handle.pid, argv)
                return child
            except OSError as e:  # it was killed meanwhile: start the usual way
                logger.info("run %s: its waiting parent is gone (%s)", launch.run_id, e)
        parent.retire()
    try:  # an old record must not pass for this run's (a spare file is kept: emptied)
        os.truncate(launch.exit_path, 0)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise SpawnError(f"cannot empty {launch.exit_path}: {e.strerror}") from e
    env = {**os.environ, **launch.env, RUN_ID_VAR: launch.run_id}  # a waiting parent has its own
    fd: int | None = None
    out: int | None = subprocess.DEVNULL  # POSIX: the waiting parent opens the output itself
    err: int | None = None  # (_WRAPPER); what it says before that goes to our log
    if _NT:
        fd = _open_output(launch)
        out = fd if launch.stdout else subprocess.DEVNULL
        err = fd if launch.stderr else subprocess.DEVNULL
    try:
        command, group = _command(argv, launch)
        popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 cwd=cwd, env=env, **group)
    except OSError as e:
        raise SpawnError(f"cannot start {argv[0]}: {e.strerror or e}") from e
    finally:
        if fd is not None:
            os.close(fd)  # the job has its own copy; holding ours would only leak it
    logger.debug("run %s started as pid %d: %r", launch.run_id, popen.pid, argv)
    return Child(popen, Handle(popen.pid, _started(popen.pid)))


def _open_output(launch: Launch) -> int:
    """The run's output file, opened for the job (Windows: the waiting parent gets the fd)."""
    try:
        fd = os.open(launch.output_path, _OUT_FLAGS, 0o600)
    except OSError as e:
        raise SpawnError(f"cannot open output file {launch.output_path}: {e.strerror}") from e
    os.lseek(fd, 0, os.SEEK_END)  # Windows children ignore the CRT's O_APPEND emulation
    return fd


def _command(argv: list[str], launch: Launch) -> tuple[list[str], dict[str, Any]]:
    """What ``Popen`` runs for a job's ``argv``, and how it gets a process group of its own.

    POSIX: the waiting parent in a new session. Windows: the waiting parent (winjob.py,
    by the base interpreter: a virtualenv's python.exe is a launcher that would sit
    between) with the job's command line, in a new process group.
    """
    exit_path = str(launch.exit_path)
    if _NT:
        python = getattr(sys, "_base_executable", "") or sys.executable
        return ([python, "-I", "-S", winjob.__file__, exit_path, winjob.job_name(launch.run_id),
                 _nt_command_line(argv)], {"creationflags": _CREATE_NEW_PROCESS_GROUP})
    group = {"start_new_session": True}
    head = [_WRAPPER_SHELL, "-c", _WRAPPER]
    files = [exit_path, str(launch.output_path), _kept(launch)]
    if _own_shell(argv):
        return [*head, argv[0], *files, "-c", argv[2]], group
    return [*head, "filerexec-run", *files, *argv], group


def _same_shell(shell: str) -> bool:
    """Whether a job's shell is the wrapper's own: /bin/sh under the name sh (a bash that is
    /bin/sh runs in POSIX mode only under that name, so only the name sh counts)."""
    if os.path.basename(shell) != "sh":
        return False
    try:
        return shell == _WRAPPER_SHELL or os.path.samefile(shell, _WRAPPER_SHELL)
    except OSError:
        return False


def alive(handle: Handle) -> bool:
    """True if the handle's process exists, is not a zombie and started when recorded."""
    try:
        proc = psutil.Process(handle.pid)
        return (abs(proc.create_time() - handle.create_time) <= _START_TOLERANCE
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:  # gone, or not ours to inspect: either way not ours to signal
        return False


def read_exit(exit_path: Path) -> int | None:
    """The exit code recorded in ``exit_path``; None if none is (completely) recorded yet."""
    try:
        data = exit_path.read_bytes()
    except OSError:
        return None
    if not data.endswith(b"\n"):
        return None
    try:
        return int(data)
    except ValueError:
        return None


def terminate(handle: Handle, run_id: str) -> str | None:
    """Ask the run's whole tree to stop (SIGTERM); returns at once.

    None when it was done (or there was nothing left to signal), else why it could not be.
    """
    if _NT:
        return _nt_kill(handle, run_id)
    return _signal_tree(handle, run_id, signal.SIGTERM)


def kill(handle: Handle, run_id: str) -> str | None:
    """Kill the run's whole tree (SIGKILL); returns at once. None, or why it could not."""
    if _NT:
        return _nt_kill(handle, run_id)
    return _signal_tree(handle, run_id, signal.SIGKILL)


def find(run_id: str) -> Handle | None:
    """The waiting parent of ``run_id``, found by its mark (Linux): for a run whose pid
    was never recorded because the daemon died right after spawning it.

    The waiting parent is the oldest session leader carrying the run id (a ``setsid``
    escapee is a session leader too, but started later); on Windows, the oldest member
    of the run's Job Object.
    """
    if _NT:
        return _oldest(_nt_members(run_id))
    leaders = []
    for pid in _carriers(run_id):
        try:
            if os.getsid(pid) != pid:
                continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                leaders.append(pid)
        except (OSError, psutil.Error):
            continue
    return _oldest(leaders)


def _oldest(pids: list[int]) -> Handle | None:
    handles = []
    for pid in pids:
        try:
            handles.append(Handle(pid, psutil.Process(pid).create_time()))
        except psutil.Error:
            continue
    return min(handles, key=lambda h: h.create_time, default=None)


def sweep(run_ids: Collection[str]) -> None:
    """Kill every process still carrying one of ``run_ids`` (escapees of runs that are over).

    One pass over /proc for all of them: a deletion of many jobs costs one scan. On
    Windows each run's Job Object is ended, if anything still holds it.
    """
    if _NT:
        for run_id in run_ids:
            _nt_kill(None, run_id)
        return
    for pid in _carriers(*run_ids):
        try:
            os.kill(pid, signal.SIGKILL)
            logger.info("killed leftover pid %d of a deleted job", pid)
        except OSError:
            continue


def _signal_tree(handle: Handle, run_id: str, sig: signal.Signals) -> str | None:
    group = alive(handle)  # never signal a group whose leader's pid was reused
    if group:
        try:
            os.killpg(handle.pid, sig)
        except ProcessLookupError:
            group = False
        except OSError as e:  # EPERM: a member changed its user (a setuid program)
            return f"{sig.name} to process group {handle.pid}: {e.strerror or e}"
    # Carriers of the run id: escapees, and group members left after the leader died.
    for pid in _carriers(run_id):
        try:
            if group and os.getpgid(pid) == handle.pid:
                continue  # already signalled once; some programs treat a second as "force"
            os.kill(pid, sig)
            logger.info("run %s: sent %s to pid %d outside its group", run_id, sig.name, pid)
        except OSError:
            continue
    return None


def _carriers(*run_ids: str) -> list[int]:
    """Pids other than ours whose environment carries one of ``run_ids`` (Linux; best-effort)."""
    if not sys.platform.startswith("linux") or not run_ids:
        return []
    needles = {f"{RUN_ID_VAR}={run_id}".encode() for run_id in run_ids}
    me = os.getpid()  # a daemon started by a job inherits the job's run id
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if not needles.isdisjoint(f.read().split(b"\0")):
                    found.append(int(name))
        except OSError:  # another user's process, or gone meanwhile
            continue
    return found


def _kind(shell: str) -> str:
    """"cmd", "powershell" or "posix", from the shell's file name on either platform."""
    name = PureWindowsPath(shell).name.lower().removesuffix(".exe")
    if name == "cmd":
        return "cmd"
    return "powershell" if name in ("powershell", "pwsh") else "posix"


def _nt_command_line(argv: list[str]) -> str:
    """The Windows command line for ``argv``.

    cmd.exe ignores list2cmdline's backslash escapes; with /s it runs everything
    between the first and the last quote verbatim, so the script is only wrapped.
    """
    if _kind(argv[0]) == "cmd":
        return f'{subprocess.list2cmdline(argv[:-1])} "{argv[-1]}"'
    return subprocess.list2cmdline(argv)


def _nt_kill(handle: Handle | None, run_id: str) -> str | None:
    """End a Windows run's tree; None when done, else why processes may be left."""
    pid = handle.pid if handle is not None and alive(handle) else None
    failed = winproc.kill_tree(pid, run_id, os.environ.get("SYSTEMROOT", r"C:\Windows"))
    if failed:
        logger.error("run %s: could not kill it: %s", run_id, failed)
    return failed


def _nt_members(run_id: str) -> list[int]:
    try:
        return winjob.members(winjob.job_name(run_id))
    except winjob.JobError as e:
        logger.warning("run %s: %s", run_id, e)
        return []


def run_tool(argv: list[str]) -> int:
    """Run a system tool (systemctl, launchctl, schtasks) in the foreground; its exit code.

    Its output goes to ours: the person installing a service sees what the tool said.
    """
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as e:
        logger.error("cannot run %s: %s", argv[0], e.strerror or e)
        return 127


def run_hook(argv: list[str], env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """Run a notification program (a ``command:`` target) to its end: exit code, output.

    Its own session, so a timeout kills whatever it started too; OSError if it cannot start.
    """
    kwargs: dict[str, Any] = ({"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
                              if sys.platform == "win32" else {"start_new_session": True})
    with subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            if sys.platform == "win32":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return -9, f"killed after {timeout:g}s"
    return proc.returncode, out.decode("utf-8", "replace")[-500:].strip()


class Started(Protocol):
    """What the daemon needs of a spawned run (``Child``, or a test's fake)."""

    @property
    def handle(self) -> Handle: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def poll(self) -> int | None: ...


class Api(Protocol):
    """This module's functions as the daemon uses them, so tests can inject fake processes."""

    def prepare(self, run_id: str, script: Path) -> Parent | None: ...

    def spawn(self, launch: Launch) -> Started: ...

    def alive(self, handle: Handle) -> bool: ...

    def read_exit(self, exit_path: Path) -> int | None: ...

    def terminate(self, handle: Handle, run_id: str) -> str | None: ...

    def kill(self, handle: Handle, run_id: str) -> str | None: ...

    def find(self, run_id: str) -> Handle | None: ...

    def sweep(self, run_ids: Collection[str]) -> None: ...
