"""Windows Job Objects: a run's whole process tree, held together and found again by name.

Standard library only, so that it also runs as a bare script (``python -I -S winjob.py``), the
*waiting parent* of every Windows run (process.spawn starts it; the POSIX waiting parent is a
``/bin/sh`` line, see process.py):

    winjob.py EXIT_PATH JOB_NAME COMMAND_LINE

It creates the Job Object JOB_NAME and puts itself in it before it starts anything, so the job's
shell and everything that shell ever starts are members from birth (Windows puts a new process
into its parent's job; membership does not follow parent links, so a grandchild whose parent
exited stays in). It runs COMMAND_LINE, writes the exit code and a newline to EXIT_PATH in one
write, and exits with that code: the code survives a daemon that is stopped meanwhile.

The job's handle is inheritable and the shell inherits it, so the name lives as long as the
waiting parent or any process holding that handle does. A restarted daemon opens the job by name
(``terminate``, ``members``): a Job Object is the kill mechanism that works for an adopted run
too. If the job cannot be created (a very old Windows inside another job), the run goes ahead
without one and the daemon falls back to ``taskkill`` (winproc.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
from typing import Any

JOB_OBJECT_QUERY = 0x0004
JOB_OBJECT_TERMINATE = 0x0008
ERROR_FILE_NOT_FOUND = 2
ERROR_ALREADY_EXISTS = 183
KILLED = 1  # the exit code a killed run's processes get (what taskkill /F gives them)
_BASIC_PROCESS_ID_LIST = 3  # JOBOBJECTINFOCLASS JobObjectBasicProcessIdList
_MAX_MEMBERS = 4096
_EXIT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


class JobError(OSError):
    """A Job Object call failed; ``str(error)`` names the call and Windows' reason."""


def job_name(run_id: str) -> str:
    """The Job Object name of a run (in the session's namespace, like the daemon)."""
    return f"filerexec-{run_id}"


class _SecurityAttributes(ctypes.Structure):
    _fields_ = [("nLength", ctypes.c_uint32), ("lpSecurityDescriptor", ctypes.c_void_p),
                ("bInheritHandle", ctypes.c_int)]


def _kernel32() -> Any:
    if sys.platform != "win32":
        raise JobError("Job Objects exist on Windows only")
    k = ctypes.WinDLL("kernel32", use_last_error=True)
    handle, dword, text = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_wchar_p
    k.CreateJobObjectW.restype = handle
    k.CreateJobObjectW.argtypes = [ctypes.c_void_p, text]
    k.OpenJobObjectW.restype = handle
    k.OpenJobObjectW.argtypes = [dword, ctypes.c_int, text]
    k.AssignProcessToJobObject.argtypes = [handle, handle]
    k.TerminateJobObject.argtypes = [handle, ctypes.c_uint]
    k.QueryInformationJobObject.argtypes = [handle, ctypes.c_int, ctypes.c_void_p, dword,
                                            ctypes.c_void_p]
    k.GetCurrentProcess.restype = handle
    k.CloseHandle.argtypes = [handle]
    return k


def _last_error() -> int:
    return int(getattr(ctypes, "get_last_error")())  # noqa: B009  # ctypes has it on Windows only


def _failed(call: str) -> JobError:
    code = _last_error()
    words = str(getattr(ctypes, "FormatError")(code)).strip()  # noqa: B009  # Windows only
    return JobError(f"{call} failed: {words} (error {code})")


def create(name: str) -> int:
    """Create the inheritable Job Object ``name`` and put this process in it; its handle."""
    k = _kernel32()
    inherit = _SecurityAttributes(ctypes.sizeof(_SecurityAttributes), None, 1)
    handle = k.CreateJobObjectW(ctypes.byref(inherit), name)
    if not handle:
        raise _failed("CreateJobObjectW")
    if _last_error() == ERROR_ALREADY_EXISTS:
        k.CloseHandle(handle)  # someone else's: never join (nor later kill) a stranger's job
        raise JobError(f"a job object named {name} exists already")
    if not k.AssignProcessToJobObject(handle, k.GetCurrentProcess()):
        error = _failed("AssignProcessToJobObject")
        k.CloseHandle(handle)
        raise error
    return int(handle)


def _open(k: Any, name: str, access: int) -> int | None:
    handle = k.OpenJobObjectW(access, 0, name)
    if handle:
        return int(handle)
    if _last_error() == ERROR_FILE_NOT_FOUND:
        return None  # nothing holds it any more: no member that inherited its handle is left
    raise _failed(f"OpenJobObjectW({name})")


def terminate(name: str) -> bool:
    """End every process in the job ``name``; False if no such job exists (any more).

    Raises ``JobError`` with Windows' reason when the job is there but cannot be ended.
    """
    k = _kernel32()
    handle = _open(k, name, JOB_OBJECT_TERMINATE)
    if handle is None:
        return False
    try:
        if not k.TerminateJobObject(handle, KILLED):
            raise _failed(f"TerminateJobObject({name})")
    finally:
        k.CloseHandle(handle)
    return True


class _PidList(ctypes.Structure):
    _fields_ = [("assigned", ctypes.c_uint32), ("listed", ctypes.c_uint32),
                ("pids", ctypes.c_size_t * _MAX_MEMBERS)]


def members(name: str) -> list[int]:
    """The pids of the processes in the job ``name`` now; empty if there is no such job."""
    k = _kernel32()
    handle = _open(k, name, JOB_OBJECT_QUERY)
    if handle is None:
        return []
    found = _PidList()
    try:
        if not k.QueryInformationJobObject(handle, _BASIC_PROCESS_ID_LIST, ctypes.byref(found),
                                           ctypes.sizeof(found), None):
            raise _failed(f"QueryInformationJobObject({name})")
    finally:
        k.CloseHandle(handle)
    return [int(pid) for pid in found.pids[:found.listed]]


def wait_for_run(exit_path: str, name: str, command_line: str) -> int:
    """The waiting parent: run ``command_line`` in the job ``name``, record its exit code."""
    with contextlib.suppress(JobError):  # else run it anyway: the daemon's kill falls back
        create(name)                      # to taskkill and the process table (winproc.py)
    try:
        # close_fds=False: the shell inherits the job's handle (keeping the name alive) and
        # the output handles the daemon gave this process.
        shell = subprocess.Popen(command_line, stdin=0, stdout=1, stderr=2, close_fds=False)
        code = shell.wait()
    except OSError as e:
        os.write(2, f"filerexec: cannot start {command_line}: {e}\n".encode())
        code = 127
    fd = os.open(exit_path, _EXIT_FLAGS, 0o600)
    try:
        os.write(fd, f"{code}\n".encode())  # one write: a reader never sees half of it
    finally:
        os.close(fd)
    return code


if __name__ == "__main__":
    sys.exit(wait_for_run(*sys.argv[1:4]))
