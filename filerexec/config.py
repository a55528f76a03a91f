"""Settings of one daemon: defaults, environment, command-line flags.

Where the host keeps its private state: platformdirs' state directory (or
``--state-dir`` / ``FILEREXEC_STATE_DIR``), one sub-folder per spool, so one
host can serve several spools and two daemons never share a ledger.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP = "filerexec"


def default_host() -> str:
    """This machine's short host name: what ``host:`` in a job file is matched against."""
    return socket.gethostname().split(".")[0] or "localhost"


def state_base(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("FILEREXEC_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir(APP))


def spool_state_dir(base: Path, spool: Path) -> Path:
    """The state folder of one spool: readable name plus a hash of its absolute path."""
    resolved = str(spool.resolve())
    tag = re.sub(r"[^A-Za-z0-9._-]", "_", spool.resolve().name)[:40] or "spool"
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:10]
    return base / "spools" / f"{tag}-{digest}"


@dataclass(frozen=True, slots=True)
class Settings:
    spool: Path
    host: str
    state_dir: Path  # this spool's own state folder (ledger, lock, raw run output)
    poll: bool = False  # no filesystem events: rely on the rescan, every poll_interval
    rescan_interval: float = 10.0
    poll_interval: float = 1.0
    heartbeat_interval: float = 30.0
    max_parallel: int = 16
    delete_grace: float = 2.0
    kill_grace: float = 5.0
    settle: float = 1.0  # a file written in place is read once it stayed still this long
    log_cap: int = 1024 * 1024
    max_job_bytes: int = 64 * 1024
    storm_starts: int = 5  # more daemon starts than this within storm_minutes → safe mode
    storm_minutes: float = 2.0

    @property
    def jobs_dir(self) -> Path:
        return self.spool / "jobs"

    @property
    def scan_interval(self) -> float:
        return self.poll_interval if self.poll else self.rescan_interval
