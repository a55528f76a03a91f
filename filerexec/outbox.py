"""The notification outbox: the ledger's ``outbox`` table, as the delivery worker uses it.

Rows are written by ``Ledger.save`` in the same transaction as the state they report;
this connection of the worker's own (SQLite in WAL mode allows it beside the daemon's)
reads what is still to send and marks what was sent or given up. A row is marked sent
only after the receiver answered, so a crash in between sends it once more after the
restart: delivery is at least once, and the event's ``id`` lets a receiver drop the copy.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filerexec.ledger import SCHEMA

KEEP_SENT = 7 * 86400.0  # sent rows are deleted after this long


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    target: str
    event: dict[str, Any]
    created: float
    attempts: int


class Outbox:
    """The outbox table, through a connection of its own (one thread uses it)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def pending(self) -> list[Row]:
        """Every event not yet sent nor given up, oldest first."""
        cursor = self._db.execute(
            "SELECT id, target, event, created, attempts FROM outbox"
            " WHERE sent IS NULL AND gave_up IS NULL ORDER BY created, rowid")
        return [Row(i, t, json.loads(e), c, a) for i, t, e, c, a in cursor.fetchall()]

    def sent(self, row: Row, now: float) -> None:
        self._db.execute("UPDATE outbox SET sent = ?, attempts = attempts + 1, last_error = NULL"
                         " WHERE id = ? AND target = ?", (now, row.id, row.target))
        self._db.execute("DELETE FROM outbox WHERE sent < ?", (now - KEEP_SENT,))

    def failed(self, row: Row, error: str, now: float, give_up: bool) -> None:
        self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, gave_up = ?"
                         " WHERE id = ? AND target = ?",
                         (error, now if give_up else None, row.id, row.target))
