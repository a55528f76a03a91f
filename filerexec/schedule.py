"""When a scheduled job's slots come (DESIGN §10 ``every:``, ``cron:``): pure, no clock.

Cron expressions are evaluated by cronsim (the library healthchecks.io runs on),
which follows Debian cron across daylight-saving changes: a slot in the hour that
does not exist runs when the clocks have jumped, one in the hour that happens
twice runs once. ``every:`` slots are the version's first sight plus whole
intervals: the first one is at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

MISSED_AFTER = 60.0  # a slot the host reaches later than this was missed (the host was down)
NAMES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
         "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
         "@hourly": "0 * * * *"}
CATCH_UP = ("latest", "none")
OVERLAP = ("skip", "queue", "kill")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A job's slots: ``every`` seconds from ``anchor``, or the times ``cron`` names."""

    every: float | None = None
    cron: str | None = None  # five fields (an @name is translated)
    timezone: str | None = None  # None: the host's
    catch_up: str = "latest"
    overlap: str = "skip"

    def _zone(self) -> tzinfo | None:
        return ZoneInfo(self.timezone) if self.timezone else datetime.now().astimezone().tzinfo

    def next_after(self, after: float, anchor: float) -> float:
        """The first slot strictly after ``after`` (``anchor``: when ``every`` counts from)."""
        if self.every is not None:
            if after < anchor:
                return anchor
            return anchor + (math.floor((after - anchor) / self.every) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(math.floor(after), self._zone())
        return next(CronSim(self.cron, start)).timestamp()

    def last_until(self, now: float, anchor: float) -> float | None:
        """The last slot at or before ``now``; None if there was none."""
        if self.every is not None:
            return None if now < anchor else anchor + math.floor((now - anchor) / self.every) \
                * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(math.floor(now) + 1, self._zone())
        try:
            return next(CronSim(self.cron, start, reverse=True)).timestamp()
        except StopIteration:  # pragma: no cover - cronsim looks back for years
            return None

    def due_slot(self, due: float, now: float, anchor: float) -> float | None:
        """The slot to run now that the slot at ``due`` has come; None: skip (missed)."""
        latest = self.last_until(now, anchor)
        latest = due if latest is None or latest < due else latest
        if latest == due and now - due <= MISSED_AFTER:
            return due  # on time
        return latest if self.catch_up == "latest" else None

    def words(self) -> str:
        """The schedule in words: ``every 2h``, ``At 03:00 on Monday (Europe/Zurich)``."""
        if self.every is not None:
            return f"every {duration(self.every)}"
        assert self.cron is not None
        text = CronSim(self.cron, datetime(2000, 1, 1)).explain()
        return f"{text} ({self.timezone or 'host time'})"


def duration(seconds: float) -> str:
    """A duration as a phone shows it: 90 → 90s, 120 → 2m, 7200 → 2h."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def cron_expression(text: str) -> str:
    """A five-field expression (or an @name) checked and normalised; ValueError if wrong."""
    expr = NAMES.get(text.strip().casefold(), " ".join(text.split()))
    if len(expr.split()) != 5:
        raise ValueError(f"a cron expression has five fields, {expr!r} has {len(expr.split())}")
    try:
        CronSim(expr, datetime(2000, 1, 1))
    except CronSimError as e:
        raise ValueError(f"{expr!r} is not a cron expression: {e}") from None
    return expr
