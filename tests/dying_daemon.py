"""``filerexec`` whose process API kills the daemon right before a spawn (exit code 70).

Run as ``python -m tests.dying_daemon serve …``: the daemon has committed "starting"
and dies before the job exists — the narrowest crash window there is. The fault is
injected through the process API that ``cli.main`` hands to the daemon, not through
anything production code reads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from pathlib import Path

from filerexec import cli, process

DIED_BEFORE_SPAWN = 70


class DieBeforeSpawn:
    """The real process API, except that ``spawn`` ends this whole process first."""

    def prepare(self, run_id: str, script: Path) -> process.Parent | None:
        return process.prepare(run_id, script)  # a real one, waiting when the daemon dies

    def spawn(self, launch: process.Launch) -> process.Started:
        print(f"dying before the spawn of run {launch.run_id}", file=sys.stderr, flush=True)
        os._exit(DIED_BEFORE_SPAWN)

    def alive(self, handle: process.Handle) -> bool:
        return process.alive(handle)

    def read_exit(self, exit_path: Path) -> int | None:
        return process.read_exit(exit_path)

    def terminate(self, handle: process.Handle, run_id: str) -> str | None:
        return process.terminate(handle, run_id)

    def kill(self, handle: process.Handle, run_id: str) -> str | None:
        return process.kill(handle, run_id)

    def find(self, run_id: str) -> process.Handle | None:
        return process.find(run_id)

    def sweep(self, run_ids: Collection[str]) -> None:
        process.sweep(run_ids)


if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:], procs=DieBeforeSpawn()))
