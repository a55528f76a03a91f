"""``filerexec import``: the seed's one ``filerexec.yaml`` becomes one job file per job.

The seed kept every job in one file, ``name: {commands, operation, stdout,
stderr}``, rewritten from both ends. Here each job gets its own file under
``jobs/``. Everything is checked before anything is written: either every job
is written, or none is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from filerexec.names import job_name
from filerexec.safefile import atomic_write
from filerexec.spec import KEYS, SpecError, parse_job
from filerexec.spool import scan

SEED_KEYS = ("commands", "operation", "stdout", "stderr")


class ImportRefused(Exception):
    """Nothing was written; ``str(error)`` says why."""


@dataclass(frozen=True, slots=True)
class Converted:
    """One seed job as a job file of its own."""

    name: str
    text: str
    operation: str
    dropped: tuple[str, ...] = ()  # seed keys with no meaning here (e.g. what the seed wrote)


def convert(text: str, source: str = "filerexec.yaml") -> list[Converted]:
    """Split the seed file's text into job files, each checked by ``parse_job``.

    Pure. Keys the job format knows are kept; others are dropped and reported.
    Raises ImportRefused listing every problem found.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ImportRefused(f"{source} is not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not doc:
        raise ImportRefused(f"{source} is not a mapping of job names to jobs")
    jobs, problems = [], []
    for raw_name, body in doc.items():
        name = str(raw_name)
        if job_name(f"{name}.yaml") != name:
            problems.append(f"{name!r}: not usable as a job file name")
            continue
        if isinstance(body, str):
            body = {"commands": body}
        if not isinstance(body, dict):
            problems.append(f"{name}: expected commands, operation, stdout, stderr")
            continue
        kept: dict[str, Any] = {k: body[k] for k in (*SEED_KEYS, *sorted(KEYS)) if k in body}
        dropped = tuple(sorted(str(k) for k in body if k not in KEYS))
        job_text = (f"# imported from {source} by filerexec import\n"
                    + yaml.safe_dump(kept, sort_keys=False, allow_unicode=True, width=1000))
        try:
            spec = parse_job(job_text, name)
        except SpecError as e:
            problems.append(f"{name}: {e}")
            continue
        jobs.append(Converted(name, job_text, spec.operation, dropped))
    if problems:
        raise ImportRefused("nothing imported:\n  " + "\n  ".join(problems))
    return jobs


def import_seed(old: Path, spool: Path, force: bool = False) -> str:
    """Write every job of the seed file ``old`` into ``spool/jobs/``; return a report.

    Refuses (writing nothing) if a job of that name exists, unless ``force``; then the
    existing file is replaced, whatever its suffix, so one job never has two files.
    """
    try:
        text = old.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ImportRefused(f"cannot read {old}: {e}") from None
    jobs = convert(text, old.name)
    jobs_dir = spool / "jobs"
    listing = scan(jobs_dir)
    existing = {name: info.path for name, info in (listing.jobs if listing else {}).items()}
    clashes = [str(existing[j.name]) for j in jobs if j.name in existing]
    if clashes and not force:
        raise ImportRefused("nothing imported: these jobs exist (use --force to overwrite):\n  "
                            + "\n  ".join(clashes))
    lines = []
    for job in jobs:
        target = existing.get(job.name, jobs_dir / f"{job.name}.yaml")
        verb = "replaced" if job.name in existing else "wrote"
        atomic_write(target, job.text.encode())  # renamed into place: never read half-written
        note = f" (dropped: {', '.join(job.dropped)})" if job.dropped else ""
        lines.append(f"{verb} {target}{note}")
    starting = [j.name for j in jobs if j.operation == "start"]
    if starting:
        lines.append(f"hosts serving {spool} run these as soon as they see them: "
                     + ", ".join(starting))
    return "\n".join(lines) + "\n"
