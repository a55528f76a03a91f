"""Ending a Windows job's process tree (process.py's Windows half; this module only acts).

First ``taskkill /T /F`` by absolute path (real Windows, Wine 10). Where it fails (Wine 8's has
no ``/T``; access denied; a vanished pid) the tree is walked by parent pid from the process table
and each process is ended with TerminateProcess (psutil), deepest first. Both follow parent
links: a grandchild whose parent already exited escapes them (see README, Portability).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import PureWindowsPath

import psutil

logger = logging.getLogger(__name__)


def taskkill_argv(pid: int, system_root: str) -> list[str]:
    """taskkill's command line; by absolute path, so a taskkill.exe on PATH or in the current
    folder never runs as us."""
    exe = PureWindowsPath(system_root, "System32", "taskkill.exe")
    return [str(exe), "/T", "/F", "/PID", str(pid)]


def kill_tree(pid: int, system_root: str) -> str | None:
    """End ``pid`` and its descendants; None when none is left, else why some are."""
    argv = taskkill_argv(pid, system_root)
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              check=False, timeout=30)
        said = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode == 0:
            return None
        why = f"taskkill exited {done.returncode}: {said or 'no message'}"
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"taskkill failed: {e}"
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
