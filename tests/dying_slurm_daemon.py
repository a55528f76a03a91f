"""``filerexec`` that dies (exit code 71) right after ``sbatch`` took a job, before the
daemon learnt its Slurm id: the crash window between submitting and recording.

Run as ``python -m tests.dying_slurm_daemon serve …`` with ``executor: slurm``. The fault
is injected by wrapping the one function that runs sbatch (slurmcmd.submit) in this test
entry, not through anything production code reads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from filerexec import cli, slurmcmd

DIED_AFTER_SBATCH = 71
_submit = slurmcmd.submit


def submit_then_die(args: Sequence[str], script: str) -> str:
    job_id = _submit(args, script)
    print(f"dying after sbatch made Slurm job {job_id}", file=sys.stderr, flush=True)
    os._exit(DIED_AFTER_SBATCH)


if __name__ == "__main__":
    slurmcmd.submit = submit_then_die
    sys.exit(cli.main(sys.argv[1:]))
