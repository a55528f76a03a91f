"""When a failed run runs again (DESIGN §10 ``retry:``): the policy a job file states, and the rule.

Pure: the machine asks ``retry_delay`` when a run ends and keeps the answer (a
deadline) in the job record, so that a retry survives a restart of the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMEOUT = "timeout"  # in ``on``: a run killed by its ``timeout:`` is retried too


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Run a failed job up to ``max`` more times, ``delay * backoff^(k-1)`` after failure k."""

    max: int
    on: tuple[int | str, ...] = ()  # exit codes (and TIMEOUT) that retry; () = any non-zero
    delay: float = 0.0
    backoff: float = 1.0

    @property
    def attempts(self) -> int:
        """How many runs there are at most: the first and its retries."""
        return self.max + 1

    def canonical(self) -> list[object]:
        """The policy as plain data, for the job's digest."""
        return [self.max, sorted(self.on, key=str), self.delay, self.backoff]


def retry_delay(policy: RetryPolicy | None, attempt: int, code: int | None,
                timed_out: bool) -> float | None:
    """Seconds until attempt ``attempt + 1`` after attempt ``attempt`` ended; None: it is final.

    ``code`` is the exit code (negative: ended by a signal; None: it never started or
    vanished). A timeout retries only when ``on`` lists it; an exit code when ``on``
    lists it, or any non-zero one when ``on`` is empty.
    """
    if policy is None or attempt >= policy.attempts:
        return None
    if timed_out:
        wanted = TIMEOUT in policy.on
    elif code is None or code == 0:
        wanted = False
    else:
        wanted = not policy.on or code in policy.on
    return policy.delay * policy.backoff ** (attempt - 1) if wanted else None


def attempt_text(policy: RetryPolicy | None, attempt: int) -> str | None:
    """``2 of 3`` for the status file, or None for a job that does not retry."""
    return None if policy is None else f"{attempt} of {policy.attempts}"
