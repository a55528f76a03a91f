"""Ending a Windows run's process tree (process.py's Windows half; this module only acts).

First the run's Job Object (winjob.py), opened by name: every process the run ever started is in
it, a grandchild whose parent already exited included, and a restarted daemon finds it by the run
id. Where there is none (a run started by an older filerexec, or where the job could not be
made) or it cannot be ended, ``taskkill /T /F`` by absolute path (real Windows, Wine 10); where
that fails too (Wine 8's has no ``/T``; access denied; a vanished pid) the tree is walked by
parent pid from the process table and each process is ended with TerminateProcess (psutil),
deepest first. The last two follow parent links: only the Job Object reaches an orphan.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import PureWindowsPath

import psutil

from filerexec import winjob

logger = logging.getLogger(__name__)


def taskkill_argv(pid: int, system_root: str) -> list[str]:
    """taskkill's command line; by absolute path, so a taskkill.exe on PATH or in the current
    folder never runs as us."""
    exe = PureWindowsPath(system_root, "System32", "taskkill.exe")
    return [str(exe), "/T", "/F", "/PID", str(pid)]


def kill_tree(pid: int | None, run_id: str, system_root: str) -> str | None:
    """End the run ``run_id`` (its waiting parent ``pid``, None if that is gone already) and
    everything it started; None when it is done, else why processes may be left."""
    try:
        if winjob.terminate(winjob.job_name(run_id)):
            return None
        why = "it has no job object"
    except winjob.JobError as e:
        why = str(e)
    if pid is None:
        return None if why == "it has no job object" else why
    argv = taskkill_argv(pid, system_root)
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              check=False, timeout=30)
        said = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode == 0:
            return None
        why += f"; taskkill exited {done.returncode}: {said or 'no message'}"
    except (OSError, subprocess.TimeoutExpired) as e:
        why += f"; taskkill failed: {e}"
    logger.info("pid %d: %s; ending the tree by parent pid", pid, why)
    left = _terminate_descendants(pid)
    return None if not left else f"{why}; still running: {', '.join(map(str, left))}"


def _terminate_descendants(pid: int) -> list[int]:
    """TerminateProcess on ``pid`` and every process below it; the pids still alive after."""
    procs, denied = [], []
    for p in [*reversed(descendants(pid, _parents())), pid]:
        try:
            proc = psutil.Process(p)
            proc.kill()
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
        except psutil.Error as e:
            logger.warning("cannot end pid %d: %s", p, e)
            denied.append(p)
    _, alive = psutil.wait_procs(procs, timeout=5)
    return [*denied, *(p.pid for p in alive)]


def _parents() -> dict[int, int]:
    parents = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if isinstance(ppid, int):
            parents[proc.pid] = ppid
    return parents


def descendants(pid: int, parents: dict[int, int]) -> list[int]:
    """Every pid below ``pid`` in a pid → parent pid table, parents before their children."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        if child != parent:
            children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            if child not in found and child != pid:
                found.append(child)
                todo.append(child)
    return found
