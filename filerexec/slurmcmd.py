"""The Slurm client commands (sbatch, scontrol, scancel): the only module that runs them.

Every call has a timeout: with its controller down, each blocks ~9 s and then fails
("Unable to contact slurm controller"). Such a failure, or a timeout, is `Unreachable`
(try again later: nothing is known); a definite "no" from Slurm is `Refused`. Called only
from the Slurm runner's worker thread, never from the daemon's loop.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from filerexec.slurmspec import JobInfo, parse_jobs

TIMEOUT = 20.0  # seconds: longer than a down controller's ~9 s, short enough to retry
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out",
                "Zero Bytes were transmitted", "Connection refused", "Communication connection")


class Unreachable(Exception):
    """The controller did not answer (down, or too slow): nothing is known; try again."""


class Refused(Exception):
    """Slurm said no (a bad partition, a limit): a sentence for the job's status."""


def _run(argv: Sequence[str], stdin: str | None = None, timeout: float = TIMEOUT) -> str:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Unreachable(f"{argv[0]} did not answer within {timeout:g}s") from None
    except FileNotFoundError:
        raise Unreachable(f"{argv[0]} is not on the daemon's PATH") from None
    except OSError as e:
        raise Unreachable(f"{argv[0]} cannot be run: {e.strerror}") from None
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}")
        message = " ".join(message.split())
        if any(m in message for m in _UNREACHABLE):
            raise Unreachable(message)
        raise Refused(message)
    return done.stdout


def submit(args: Sequence[str], script: str) -> str:
    """``sbatch --parsable ARGS`` with the script on stdin → the job id."""
    out = _run(["sbatch", *args], stdin=script).strip()
    job_id = out.split(";")[0].strip()
    if not job_id.isdigit():
        raise Refused(f"sbatch printed no job id: {out!r}")
    return job_id


def jobs() -> dict[str, JobInfo]:
    """Every job the controller still knows (finished ones for ~MinJobAge seconds)."""
    out = _run(["scontrol", "-o", "show", "job"])
    return parse_jobs(out)


def cancel(job_id: str, force: bool, queued: bool) -> None:
    """End a job as a local job's process group is ended: TERM (KILL with ``force``) to a
    running job's batch script (``scancel --batch --signal``), which passes TERM on to
    every process of the job (slurmspec.batch_script), and on whose end Slurm kills what
    is left at once. A job still in the queue is cancelled (it takes no signal)."""
    if queued:
        argv = ["scancel", job_id]
    else:
        argv = ["scancel", "--batch", f"--signal={'KILL' if force else 'TERM'}", job_id]
    try:
        _run(argv)
    except Refused as e:
        if "already completing or completed" not in str(e) and "Invalid job id" not in str(e):
            raise
