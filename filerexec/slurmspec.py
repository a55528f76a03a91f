"""Pure Slurm rules (DESIGN §11): the host's ``slurm:`` settings, what ``sbatch`` is asked
for, the batch script, and what ``scontrol`` says of a job. No I/O: slurm.py acts on these.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What a job file's `slurm:` may hold (each only if the host's `allow` lists it): the key,
# how sbatch spells it.
JOB_KEYS: dict[str, str] = {
    "partition": "--partition", "time": "--time", "cpus": "--cpus-per-task", "mem": "--mem",
    "gres": "--gres", "account": "--account", "qos": "--qos", "constraint": "--constraint",
    "nodes": "--nodes",
}
DEFAULT_ALLOW = ("partition", "time", "cpus", "mem", "gres")
HOST_KEYS = ("partition", "sbatch_args", "allow", "poll")
NAME_PREFIX = "filerexec-"  # a run's Slurm job name is this plus its run id


@dataclass(frozen=True, slots=True)
class SlurmConfig:
    """The host's ``slurm:`` settings (used with ``executor: slurm``)."""

    partition: str | None = None
    sbatch_args: tuple[str, ...] = ()
    allow: tuple[str, ...] = DEFAULT_ALLOW
    poll: float = 2.0  # how often the scheduler is asked about the runs

    def shown(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"partition": self.partition, "sbatch_args": list(self.sbatch_args),
                               "allow": list(self.allow), "poll": self.poll}
        return {k: v for k, v in doc.items() if v is not None}


def parse_config(value: object) -> SlurmConfig:
    """``slurm:`` in the host's config file. Raises ValueError in words for the person."""
    if value is None or value is True:
        return SlurmConfig()
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of {', '.join(HOST_KEYS)}, not {value!r}")
    unknown = sorted(str(k) for k in value if k not in HOST_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; known: {', '.join(HOST_KEYS)}")
    args = value.get("sbatch_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"`sbatch_args` must be a list of texts, not {args!r}")
    allow = value.get("allow", list(DEFAULT_ALLOW))
    if not isinstance(allow, list) or any(a not in JOB_KEYS for a in allow):
        raise ValueError(f"`allow` must be a list of {', '.join(JOB_KEYS)}, not {allow!r}")
    poll = value.get("poll", 2.0)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll < 0.2:
        raise ValueError(f"`poll` must be a number of seconds of at least 0.2, not {poll!r}")
    partition = value.get("partition")
    return SlurmConfig(None if partition is None else str(partition), tuple(args), tuple(allow),
                       float(poll))


def job_problem(requested: Mapping[str, str], config: SlurmConfig) -> str | None:
    """Why this host refuses a job's `slurm:` keys (those its `allow` does not list)."""
    refused = sorted(k for k in requested if k not in config.allow)
    if not refused:
        return None
    allowed = ", ".join(config.allow) or "none"
    return (f"this host does not let job files set slurm: {', '.join(refused)} "
            f"(its slurm.allow: {allowed})")


def time_limit(seconds: float) -> str:
    """A duration as ``--time`` takes it: whole minutes (Slurm's unit), rounded up, at least one."""
    return str(max(1, math.ceil(seconds / 60)))


def backstop(timeout: float) -> str:
    """``--time`` for a job's ``timeout:``: one minute more, so that while the daemon watches,
    its own kill (to the second, with its reason) comes first."""
    return str(int(time_limit(timeout)) + 1)


def sbatch_args(name: str, output: str, cwd: str, config: SlurmConfig,
                requested: Mapping[str, str], timeout: float | None) -> list[str]:
    """Every sbatch argument of one run: the host's, then the job's, then ours."""
    args = ["--parsable", f"--job-name={name}", f"--output={output}", f"--chdir={cwd}",
            "--export=ALL"]
    if config.partition:
        args.append(f"--partition={config.partition}")
    args.extend(config.sbatch_args)
    args.extend(f"{JOB_KEYS[k]}={v}" for k, v in sorted(requested.items()))
    if timeout is not None and "time" not in requested:
        # A backstop for while no daemon watches: the daemon's own timeout is to the second.
        args.append(f"--time={backstop(timeout)}")
    return args


def batch_script(argv: list[str], exit_path: str, env: Mapping[str, str],
                 stdout: bool, stderr: bool) -> str:
    """The batch script: the job's environment, its shell line, its exit code to a file.

    Slurm signals the batch script alone (a cancel, ``scancel --batch``) and kills whatever
    is left once it ends. So the script passes TERM on to its whole process group (its
    own: slurmstepd makes it a group leader) and waits for the job's shell: the job's
    commands get TERM and the grace to clean up, as a local job's process group does,
    until KILL (the daemon's after its grace, or Slurm's after KillWait)."""
    lines = ["#!/bin/sh", """trap 'trap "" TERM; kill -TERM 0 2>/dev/null' TERM"""]
    lines.extend(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    if not stdout:
        lines.append("exec >/dev/null")
    if not stderr:
        lines.append("exec 2>/dev/null")
    lines.append(shlex.join(argv) + " </dev/null &")
    lines.append("child=$!")
    # A trapped TERM ends a `wait` early: wait again while the job's shell is still there.
    lines.append('while :; do wait "$child"; c=$?; kill -0 "$child" 2>/dev/null || break; done')
    q = shlex.quote(exit_path)
    lines.append(f"printf '%d\\n' \"$c\" >{shlex.quote(exit_path + '.tmp')} && mv -f "
                 f"{shlex.quote(exit_path + '.tmp')} {q}")
    lines.append('exit "$c"')
    return "\n".join(lines) + "\n"


# --- what scontrol says -----------------------------------------------------------

_FIELD = re.compile(r"(\w+)=(\S*)")
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
                    "RESV_DEL_HOLD"})
ACTIVE = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING",
                    "RESIZING"})


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One Slurm job as ``scontrol -o show job`` describes it."""

    job_id: str
    name: str
    state: str
    reason: str = ""
    exit_code: str = "0:0"

    @property
    def queued(self) -> bool:
        return self.state in QUEUED

    @property
    def ended(self) -> bool:
        return self.state not in QUEUED and self.state not in ACTIVE

    @property
    def code(self) -> int:
        """The exit code as a shell reports it: N, or 128+S when signal S ended it."""
        code, _, sig = self.exit_code.partition(":")
        if sig.isdigit() and int(sig):
            return 128 + int(sig)
        return int(code) if code.isdigit() else 1


def parse_jobs(text: str) -> dict[str, JobInfo]:
    """``scontrol -o show job`` (one line per job) → job id → JobInfo."""
    jobs = {}
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobId" not in fields:
            continue
        state = fields.get("JobState", "UNKNOWN").split("+")[0]
        jobs[fields["JobId"]] = JobInfo(fields["JobId"], fields.get("JobName", ""), state,
                                        fields.get("Reason", ""), fields.get("ExitCode", "0:0"))
    return jobs


def ended_reason(state: str) -> str | None:
    """A run Slurm ended on its own: the reason it is `killed`, or None (an exit)."""
    return {"TIMEOUT": "timeout: Slurm's time limit ended it",
            "CANCELLED": "cancelled in Slurm (scancel)",
            "PREEMPTED": "preempted by Slurm",
            "NODE_FAIL": "its Slurm node failed",
            "DEADLINE": "Slurm's deadline passed",
            "OUT_OF_MEMORY": "out of memory (Slurm)"}.get(state)


def waiting_reason(info: JobInfo) -> str:
    """What a queued run's status says: Slurm's own reason (Priority, Resources, …)."""
    reason = info.reason if info.reason and info.reason != "None" else info.state.lower()
    return f"queued in Slurm: {reason}"
