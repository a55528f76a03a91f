"""Small helpers shared by the tests: poll a condition, never sleep a guess."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | Literal[False] | None], timeout: float = 10.0,
             interval: float = 0.02, what: str = "condition") -> T:
    """Call predicate until it returns something truthy; return that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def holds(predicate: Callable[[], object], seconds: float, interval: float = 0.1,
          what: str = "condition") -> None:
    """Check that predicate stays true for ``seconds`` of real time (for what a real
    program outside the test's clock, such as a Slurm controller, must keep doing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(interval)
