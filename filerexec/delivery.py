"""The delivery worker: sends the outbox's events on a thread of its own.

The daemon's loop only records events (in the ledger, with the state they report) and
wakes this worker; sending, waiting for slow receivers and backing off never happen on
the loop. A target that fails is tried again after ``retry`` seconds, doubling up to
``MAX_BACKOFF``, for ``GIVE_UP`` at most; meanwhile ``problems()`` says what it answered
last (host.yaml shows it). Its other events wait behind it, in order.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filerexec.config import Settings
from filerexec.machine import Job
from filerexec.notify import (
    RUN_ENDS,
    TAIL_BYTES,
    Outgoing,
    cap_tail,
    choice_of,
    make_event,
    target_problems,
    targets_for,
)
from filerexec.outbox import Outbox, Row
from filerexec.render import timestamp
from filerexec.sender import DeliveryError, apprise_available, send

logger = logging.getLogger(__name__)

MAX_BACKOFF = 900.0  # a target down for hours is tried every 15 minutes
GIVE_UP = 3 * 86400.0  # an event not taken for this long is given up (kept, with its error)

Send = Callable[[str, Mapping[str, Any]], str]


class Delivery:
    """Sends pending events to their targets, with back-off per target."""

    def __init__(self, settings: Settings, output_path: Callable[[str], Path],
                 on_change: Callable[[], None] = lambda: None, sender: Send = send,
                 clock: Callable[[], float] = time.time) -> None:
        self.outbox: Outbox | None = None  # opened by start
        self.notices = Notices(settings, output_path)
        self.targets = settings.targets
        self.retry = settings.notify_retry
        self.on_change = on_change  # host.yaml's notify: changed (wakes the daemon's loop)
        self.sender = sender
        self.clock = clock
        self._cond = threading.Condition()
        self._woken = True  # look at the outbox at once: a restart may have left events
        self._closed = False
        self._backoff: dict[str, tuple[float, float]] = {}  # target → (next try, delay)
        self._problems: dict[str, str] = {}
        self._thread: threading.Thread | None = None

    def start(self, ledger: Path) -> None:
        """Open the outbox in the ledger at ``ledger`` and start sending."""
        self.outbox = Outbox(ledger)
        for name, problem in self.notices.problems().items():  # a set-up error: said at once
            logger.error("notify target %s: %s", name, problem)
            self._problems[name] = problem
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New events were committed."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the event being sent (what is left is sent after the next start)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.outbox is not None and (self._thread is None or not self._thread.is_alive()):
            self.outbox.close()

    def problems(self) -> tuple[tuple[str, str], ...]:
        """Each failing target's last error, for host.yaml."""
        with self._cond:
            return tuple(sorted(self._problems.items()))

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._woken or self._closed, self._wait())
                if self._closed:
                    return
                self._woken = False
            try:
                self.deliver_due()
            except sqlite3.Error as e:  # the ledger is unwritable: try again later
                logger.warning("notifications: cannot read or mark the outbox: %s", e)
                self._note("(outbox)", str(e))

    def _wait(self) -> float | None:
        """Seconds until the first target in back-off is due again (None: until woken)."""
        if not self._backoff:
            return None
        return max(0.0, min(t for t, _ in self._backoff.values()) - self.clock())

    def deliver_due(self) -> int:
        """One pass over the outbox: send what is due; how many were sent."""
        assert self.outbox is not None, "start() first"
        sent = 0
        blocked: set[str] = set()  # a target that failed in this pass: its others wait
        for row in self.outbox.pending():
            if self._closed:
                break
            now = self.clock()
            due = self._backoff.get(row.target, (0.0, 0.0))[0]
            if row.target in blocked or now < due:
                continue
            if self._deliver(row, now):
                sent += 1
            else:
                blocked.add(row.target)
        if "(outbox)" in self._problems:
            self._note("(outbox)", None)
        return sent

    def _deliver(self, row: Row, now: float) -> bool:
        assert self.outbox is not None
        url = self.targets.get(row.target)
        if url is None:
            self.outbox.failed(row, "no such target in the host's config", now, give_up=True)
            logger.warning("notification %s: target %r is no longer configured; given up",
                           row.id, row.target)
            return True
        try:
            answer = self.sender(url, row.event)
        except DeliveryError as e:
            give_up = now - row.created >= GIVE_UP
            self.outbox.failed(row, str(e), now, give_up)
            _, delay = self._backoff.get(row.target, (0.0, self.retry / 2))
            delay = min(delay * 2, MAX_BACKOFF)
            self._backoff[row.target] = (now + delay, delay)
            state = "given up" if give_up else f"retrying in {delay:g}s"
            logger.warning("notify %s: %s (%s)", row.target, e, state)
            self._note(row.target, f"{e} (at {timestamp(now)}; {state})")
            return False
        self.outbox.sent(row, now)
        self._backoff.pop(row.target, None)
        logger.info("notify %s: %s %s sent (%s)", row.target, row.event.get("job"),
                    row.event.get("state"), answer)
        self._note(row.target, None)
        return True

    def _note(self, target: str, problem: str | None) -> None:
        with self._cond:
            before = self._problems.get(target)
            if problem is None:
                self._problems.pop(target, None)
            else:
                self._problems[target] = problem
        if (before is None) != (problem is None):
            self.on_change()


class Notices:
    """The events a job's new state causes, for ``JobTable.commit`` (on the daemon's loop).

    The only I/O is reading the end of the run's raw output for ``log_tail`` (capped).
    """

    def __init__(self, settings: Settings, output_path: Callable[[str], Path]) -> None:
        self.settings = settings
        self.output_path = output_path

    def __call__(self, job: Job, now: float) -> list[Outgoing]:
        s = self.settings
        names = targets_for(job, choice_of(job), s.notify_default, s.notify_on, s.targets)
        if not names:
            return []
        event = make_event(job, s.host, cap_tail(self._tail(job), s.notify_log_tail))
        return [Outgoing(event["id"], name, event, now) for name in names]

    def problems(self) -> dict[str, str]:
        """What is wrong with the host's targets, by name."""
        s = self.settings
        return target_problems(s.targets, s.notify_default, apprise_available())

    def _tail(self, job: Job) -> bytes:
        run = job.run
        if run is None or self.settings.notify_log_tail <= 0 or job.state not in RUN_ENDS:
            return b""
        try:
            with open(self.output_path(run.run_id), "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
                return f.read(TAIL_BYTES)
        except OSError:
            return b""
