"""Admission: what a job file's bytes mean for this host, decided in one place.

parse → authenticate → policy → targeting → notification targets, once per read: the
reconciler hands over the bytes it read and gets a `Verdict` back (valid, for other hosts,
invalid, rejected, or not decidable yet). With ``require_signature`` the signature is
checked before the bytes reach the parser (signing.py); without it, the file is
parsed and the allow list applied to jobs meant for this host.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from filerexec import keystore, signing
from filerexec.config import Settings
from filerexec.machine import Readiness
from filerexec.policy import policy_problem
from filerexec.signing import Rejected, TokenStore
from filerexec.slurmspec import job_problem
from filerexec.spec import JobSpec, SpecError, parse_job
from filerexec.speckeys import unknown_target

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a file's bytes are for this host."""

    readiness: Readiness
    spec: JobSpec | None = None  # set for VALID and OTHER_HOST
    problem: str | None = None  # why it is invalid, rejected or not decidable yet


class Admission:
    """Parses, authenticates, applies the allow list and decides whom a job is for."""

    def __init__(self, settings: Settings, key_dir: Path, store: TokenStore | None) -> None:
        self.settings = settings
        self.key_dir = key_dir
        self.store = store  # the replay memory (the ledger); needed for signed jobs only

    def __call__(self, name: str, data: bytes, now: float) -> Verdict:
        try:
            spec = self._spec(name, data, now)
        except Rejected as e:
            logger.warning("job %s rejected: %s", name, e)
            return Verdict(Readiness.REJECTED, problem=str(e))
        except SpecError as e:
            return Verdict(Readiness.INVALID, problem=str(e))
        except (sqlite3.Error, OSError) as e:  # replay memory unwritable: decide later
            return Verdict(Readiness.NOT_READY,
                           problem=f"cannot check its signature yet (the ledger: {e})")
        if not spec.targets(self.settings.host, self.settings.labels):
            return Verdict(Readiness.OTHER_HOST, spec)
        if (unknown := unknown_target(spec.notify, self.settings.targets)) is not None:
            return Verdict(Readiness.INVALID, problem=str(unknown))
        return Verdict(Readiness.VALID, spec)

    def _spec(self, name: str, data: bytes, now: float) -> JobSpec:
        s = self.settings
        if s.require_signature:
            assert self.store is not None, "signed jobs need the ledger's replay memory"
            return signing.admit(data, name, s.host, keystore.load(self.key_dir), self.store,
                                 now, s.totp_window, s.allow, s.labels)
        spec = parse_job(data, name)
        if spec.targets(s.host, s.labels) and (problem := policy_problem(spec, s.allow)
                                                 or self._slurm_problem(spec)):
            raise Rejected(problem)
        return spec

    def _slurm_problem(self, spec: JobSpec) -> str | None:
        """On a Slurm host, a job may ask sbatch only for what the host allows."""
        s = self.settings
        return job_problem(dict(spec.slurm), s.slurm) if s.executor == "slurm" else None
