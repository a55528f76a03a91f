"""One daemon's life on one spool: the lock, the pid file, restart records, safe mode.

- **Lock and pid file**: one daemon per spool per host (filelock in the state dir);
  a second one is refused with the first one's pid in the message.
- **Clean stops**: a daemon that stopped cleanly (every status file written, the
  ledger holding everything) lets the next one skip re-reading unchanged job files.
- **Restart storms**: a job that crashes or restarts its daemon, or a daemon that dies
  on something in its spool, restarts under a service manager again and again. Past
  ``storm_starts`` starts within ``storm_window`` seconds the daemon enters *safe
  mode*: it adopts, finishes and kills as usual but starts nothing new, until a person
  deletes the ``safe-mode`` file in the state folder (its text says why and how).
  Starts are remembered in the ledger's meta table.
- **Draining** (`filerexec drain`): running jobs finish, nothing new starts, until
  `filerexec resume`. The ``drain`` file in the state folder is the switch, so a
  drain outlasts restarts and needs no running daemon to be set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from pathlib import Path

from filelock import FileLock, Timeout

from filerexec import __version__
from filerexec.config import Settings
from filerexec.ledger import FileKey, Ledger

logger = logging.getLogger(__name__)

SAFE_MODE_FILE = "safe-mode"
DRAIN_FILE = "drain"
DRAINING = "this host is draining: it starts nothing new until `filerexec resume`"
STARTS_KEY = "starts"
CLEAN_STOP, READER = "clean_stop", "reader"  # ledger meta keys (see Lifecycle.restorable)


class AlreadyRunning(Exception):
    """Another daemon serves this spool on this host."""


# --- pure rules -------------------------------------------------------------------


def recent_starts(recorded: str | None, now: float, window: float) -> list[float]:
    """The start times (as stored in the ledger) within ``window`` seconds before ``now``."""
    try:
        times = json.loads(recorded) if recorded else []
    except ValueError:
        times = []
    if not isinstance(times, list):
        return []
    return [float(t) for t in times
            if isinstance(t, int | float) and now - window <= float(t) <= now]


def storm(starts: list[float], limit: int, window: float) -> str | None:
    """Why ``starts`` is a restart storm, or None if it is not."""
    if len(starts) <= limit:
        return None
    return (f"restart storm: {len(starts)} daemon starts within {window / 60:g} minutes "
            f"(more than {limit})")


def setup_warnings(settings: Settings, key_dir: Path) -> list[str]:
    """What weakens this host's security and its owner should fix (shown in host.yaml)."""
    warnings = []
    if getattr(os, "geteuid", lambda: -1)() == 0:
        warnings.append("running as root: every job runs as root; run filerexec as "
                        "an ordinary user")
    resolved = key_dir.resolve()
    if settings.spool.resolve() in (resolved, *resolved.parents):
        warnings.append(f"the key folder {key_dir} is inside the synced folder: "
                        "whoever can read the spool can sign jobs; move it")
    return warnings


# --- the safe-mode file -----------------------------------------------------------


def enter_safe_mode(state_dir: Path, why: str) -> str:
    """Write the safe-mode file; return the sentence for host.yaml and the log."""
    path = state_dir / SAFE_MODE_FILE
    reason = f"{why}; no new job is started until a person deletes {path}"
    if not path.exists():
        path.write_text(reason + "\n")
    return reason


def current_safe_mode(state_dir: Path) -> str | None:
    """The safe-mode reason while the file exists, else None."""
    try:
        return (state_dir / SAFE_MODE_FILE).read_text().strip() or "safe mode"
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"safe mode (its file cannot be read: {e.strerror})"


# --- the drain file -----------------------------------------------------------------


def drain(state_dir: Path, now: float) -> bool:
    """Start draining (False if it already was); the daemon sees it at its next step."""
    path = state_dir / DRAIN_FILE
    if path.exists():
        return False
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(f"draining since {now:.0f} (filerexec drain); filerexec resume ends it\n")
    return True


def resume(state_dir: Path) -> bool:
    """Stop draining (False if it was not)."""
    try:
        (state_dir / DRAIN_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def is_draining(state_dir: Path) -> bool:
    return (state_dir / DRAIN_FILE).exists()


class Lifecycle:
    """The lock, pid file, start records and safe mode of one daemon on one spool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.safe_mode: str | None = None  # why no new job is started, if so
        self.draining = False  # a person asked for no new job (filerexec drain)
        self.clean_start = False  # the previous daemon stopped cleanly (see restorable)
        self._lock: FileLock | None = None

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "daemon.lock"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "daemon.pid"

    def acquire(self) -> None:
        """Take the per-spool lock and write the pid file; AlreadyRunning if taken."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise AlreadyRunning(self._already_running_message()) from None
        self._lock = lock
        self.pid_path.write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _already_running_message(self) -> str:
        try:
            pid = self.pid_path.read_text().strip()
        except OSError:
            pid = "unknown"
        return (f"filerexec is already running for {self.settings.spool} on this host "
                f"(pid {pid}; lock {self.lock_path})")

    def restorable(self, ledger: Ledger) -> dict[str, FileKey]:
        """Stat keys of job files the ledger's records already reflect.

        At start-up such a file, unchanged since, is neither re-read nor re-parsed, and
        its status file not rebuilt: with 10,000 finished jobs that is most of a cold
        start. Only after a clean stop (every status file was written) and with the same
        reader (version, host name, size limit); otherwise every file is read again.
        """
        st = self.settings  # anything that changes what a file reads as
        reader = repr((__version__, st.host, st.labels, st.max_job_bytes, st.require_signature,
                       st.allow))
        self.clean_start = ledger.get_meta(CLEAN_STOP) == "1"
        ok = self.clean_start and ledger.get_meta(READER) == reader
        ledger.set_meta(CLEAN_STOP, "0")
        ledger.set_meta(READER, reader)
        return dict(ledger.files) if ok else {}

    def mark_clean_stop(self, ledger: Ledger) -> None:
        with contextlib.suppress(sqlite3.Error, OSError):
            ledger.set_meta(CLEAN_STOP, "1")

    def record_start(self, ledger: Ledger, now: float) -> None:
        """Remember this start in the ledger; too many recent ones mean safe mode."""
        window = self.settings.storm_window
        starts = recent_starts(ledger.get_meta(STARTS_KEY), now, window)
        starts.append(now)
        try:
            ledger.set_meta(STARTS_KEY, json.dumps(starts))
        except (sqlite3.Error, OSError) as e:
            logger.error("cannot record this start in the ledger: %s", e)
        why = storm(starts, self.settings.storm_starts, window)
        if why is not None and current_safe_mode(self.state_dir) is None:
            try:
                enter_safe_mode(self.state_dir, why)
            except OSError as e:
                logger.error("%s, but safe mode cannot be entered: %s", why, e)

    @property
    def hold(self) -> str | None:
        """Why no new job starts now (safe mode, a drain), or None: jobs start."""
        if self.safe_mode is not None:
            return f"safe mode: {self.safe_mode}"
        return DRAINING if self.draining else None

    def drain_state(self, running: bool) -> str | None:
        """What host.yaml says of a drain: ``draining`` while jobs run, then ``drained``."""
        if not self.draining:
            return None
        return "draining" if running else "drained"

    def check(self, ledger: Ledger, now: float) -> None:
        """Once a step: has safe mode or a drain begun or ended?"""
        self.check_safe_mode(ledger, now)
        draining = is_draining(self.state_dir)
        if draining != self.draining:
            logger.warning("%s", DRAINING if draining else "drain ended: starting jobs again")
        self.draining = draining

    def check_safe_mode(self, ledger: Ledger, now: float) -> bool:
        """Safe mode lasts while its file exists (a person ends it by deleting the file).

        True if it began or ended just now (host.yaml has news).
        """
        reason = current_safe_mode(self.state_dir)
        if reason == self.safe_mode:
            return False
        if reason is not None:
            logger.error("safe mode: %s", reason)
        else:
            logger.warning("safe mode ended (its file was deleted): starting jobs again")
            with contextlib.suppress(sqlite3.Error, OSError):  # a fresh count from now on
                ledger.set_meta(STARTS_KEY, json.dumps([now]))
        self.safe_mode = reason
        return True
