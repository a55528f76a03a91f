"""The reconciler: what is in ``jobs/`` now, turned into events for the state machine.

The listing is the truth; watcher hints only say when to look and which files
arrived complete. A file is read only when its stat changed, and only once it
is complete (moved into place, closed, or still for ``settle`` seconds). What
it reads becomes a `Version` (valid, invalid, rejected, not ready, or for other
hosts) in a ``FileRead`` event; a job whose file is gone gets ``FileMissing``.
It returns what it observed and never changes a job: the job table applies the
events. This module owns what was seen of the folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from filerexec.admission import Verdict
from filerexec.config import Settings
from filerexec.ledger import FileKey
from filerexec.machine import (
    FileMissing,
    FileRead,
    Job,
    Observed,
    Phase,
    Readiness,
    Version,
    phase,
)
from filerexec.names import Spellings
from filerexec.spec import JobSpec
from filerexec.spool import (
    FileStat,
    Listing,
    NotReady,
    Refused,
    Unavailable,
    list_jobs,
    read_job_file,
    stat_file,
    unchanged,
)
from filerexec.watch import Hint

logger = logging.getLogger(__name__)

# However well the watcher and the folders' stats say nothing changed, jobs/ is listed in
# full this often: the backstop for a file written in place whose events were lost.
FULL_LISTING = 600.0

Admit = Callable[[str, bytes, float], Verdict]  # what a file's bytes are (admission.py)


@dataclass(slots=True)
class Observations:
    """What one look at ``jobs/`` found: events for the job table, statuses to rewrite."""

    events: list[Observed] = field(default_factory=list)
    restatus: set[str] = field(default_factory=set)  # jobs whose conflicted copies changed


@dataclass(slots=True)
class _Unsettled:
    """A file written in place: read it once its stat stayed the same for a while."""

    key: FileKey
    since: float


class Reconciler:
    """Compares listings of ``jobs/`` with what was read before, and reports the difference."""

    def __init__(self, settings: Settings, jobs: Mapping[str, Job], admit: Admit) -> None:
        self.settings = settings
        self.jobs = jobs  # the job table's jobs, read only
        self.admit = admit
        self.conflicts: dict[str, list[str]] = {}  # job → its conflicted copies
        self.refused: dict[str, str] = {}  # files under jobs/ whose names cannot be jobs
        self.spool_problem: str | None = None  # why jobs/ cannot be listed, if so
        self.last_scan: float | None = None
        self.known: dict[str, FileKey] = {}  # stat key of each file read
        self._unsettled: dict[str, _Unsettled] = {}
        self._listing: Listing | None = None  # the last full listing
        self._spellings = Spellings()  # the job names the last listing accepted
        self._seen: dict[str, tuple[str, float]] = {}  # job → (digest, first seen), ledger
        self._restored: dict[str, FileKey] = {}  # files whose verdict the ledger holds
        self._full_due = 0.0  # the backstop: a full listing, whatever else says

    def restore(self, seen: dict[str, tuple[str, float]], files: dict[str, FileKey]) -> None:
        """What the ledger remembers: first-seen times, and files not to read again."""
        self._seen, self._restored = seen, files

    @property
    def spool_available(self) -> bool:
        return self.spool_problem is None

    @property
    def settling(self) -> list[float]:
        """When each file written in place will have stood still long enough."""
        return [u.since + self.settings.settle for u in self._unsettled.values()]

    def settle_due(self, now: float) -> bool:
        return any(now >= t for t in self.settling)

    def _look(self, now: float, trusted: bool) -> bool:
        """Whether ``jobs/`` must be listed now, found the cheap way where that is enough.

        With a ``trusted`` watcher (running since the last listing, no event lost) a file
        written in place announces itself, so what a periodic listing could find that the
        watcher did not is an entry created, deleted or renamed while events were lost:
        each changes its folder's stat, and one lstat per folder shows it. Listed anyway:
        after a lost event or without a watcher, while a file waits to settle or to be
        readable, while part of jobs/ could not be listed, and every ``FULL_LISTING``.
        """
        listing = self._listing
        if not trusted or listing is None or now >= self._full_due:
            return True
        if self._unsettled or listing.unlisted or not self.known.keys() >= listing.jobs.keys():
            return True  # something waits to be read again: the listing retries it
        if unchanged(self.settings.jobs_dir, listing):
            self.last_scan = now
            return False
        return True

    def reconcile(self, now: float, hints: dict[str, Hint], trusted: bool = False) -> Observations:
        """List ``jobs/`` and report the difference with what was seen before.

        Without ``hints`` from a ``trusted`` watcher, only where a look says it must
        (``_look``): a periodic rescan of 10,000 files is one lstat per folder.
        """
        if not hints and not self._look(now, trusted):
            return Observations()
        listing: Listing | None = None
        problem: str | None = None
        try:
            listing = list_jobs(self.settings.jobs_dir)
        except Unavailable as e:
            problem = str(e)
        self.last_scan = now
        self._full_due = now + max(FULL_LISTING, self.settings.scan_interval)
        seen = Observations()
        if problem != self.spool_problem:
            if problem is not None:
                logger.warning("spool unavailable: %s; no job is touched", problem)
            else:
                logger.info("spool available again: %s", self.settings.jobs_dir)
            self.spool_problem = problem
        if listing is None:
            self._listing = None  # nor may a hint be read before jobs/ is listed again
            return seen
        self._spellings = self._refuse_clashes(listing)
        self._listing = listing
        seen.restatus = self._update_conflicts(listing)
        if listing.refused != self.refused:
            for rel in listing.refused.keys() - self.refused.keys():
                logger.warning("%r: %s", rel, listing.refused[rel])
            self.refused = dict(listing.refused)
        for name, info in listing.jobs.items():
            self._consider(name, info, now, hints.get(info.where), seen.events)
        for name in list(self.jobs):
            if name not in listing.jobs and not listing.holds(name):
                self.known.pop(name, None)
                self._unsettled.pop(name, None)
                if self.jobs[name].deleted is None:
                    seen.events.append(Observed(name, FileMissing(now)))
        self._restored = {}  # only the first listing after the start may use them
        return seen

    def fast(self, now: float, hints: dict[str, Hint]) -> tuple[list[Observed], dict[str, Hint]]:
        """Read files that arrived complete before listing all of jobs/: what they are, and
        the hints only a listing can settle (the listing follows soon either way: events stay
        hints; the listing is the truth).

        Listing 10,000 files takes ~45 ms, all of it added to a job's start. A file moved
        into place decides its job alone when the last listing knew no other file for that
        name (another suffix, a conflicted copy); otherwise it waits for the listing.
        """
        listing = self._listing
        events: list[Observed] = []
        if listing is None or self._restored:
            return events, hints
        left = {}
        for path, hint in hints.items():
            found = stat_file(self.settings.jobs_dir, path) if hint is Hint.COMPLETE else None
            if found is None:
                left[path] = hint
                continue
            name, info = found
            known = listing.jobs.get(name)
            if name in listing.conflicts or (known is not None and known.where != info.where) \
                    or self._spellings.add(name) is not None:  # its spelling is taken from now
                left[path] = hint  # the listing refuses it, or decides between its files
                continue
            listing.jobs[name] = info
            self._consider(name, info, now, hint, events)
        return events, left

    def recheck(self, names: Iterable[str], now: float) -> list[Observed]:
        """On a host that runs only signed jobs, read these jobs' files again right before
        they launch: a later slot or a retry runs only while the signature accepted once
        still verifies (a key revoked since makes it ``rejected``); an unchanged signed file
        is no replay, so nothing else changes. Only files the last listing knows, as read."""
        if not self.settings.require_signature or self._listing is None:
            return []
        events = []
        for name in names:
            info = self._listing.jobs.get(name)
            if info is not None and self.known.get(name) == info.key:
                events.append(Observed(name, FileRead(self._read(name, info, now), now)))
        return events

    def _refuse_clashes(self, listing: Listing) -> Spellings:
        """Refuse each listed job whose host files would collide with another job's on a
        case-insensitive, normalising filesystem (a phone's, a laptop's). Jobs the host
        already knows keep their names; of new ones the first in code-point order does,
        so the choice is the same after a restart. A refused job is neither run nor killed.
        """
        spellings = Spellings()
        for name in sorted(self.jobs):
            spellings.add(name)
        for name in sorted(listing.jobs):
            other = spellings.add(name) if name not in self.jobs else spellings.clash(name)
            if other is not None:
                info = listing.jobs.pop(name)
                rel = os.path.relpath(info.where, self.settings.jobs_dir).replace(os.sep, "/")
                gone = "" if other in listing.jobs else " (deleted: its status stays until " \
                    "its retention ends)"
                listing.refuse(rel, f"not a job: its status file would be the same file as "
                               f"job {other!r}'s{gone} on a case-insensitive filesystem "
                               "(macOS, Windows); rename it")
        return spellings

    def _consider(self, name: str, info: FileStat, now: float, hint: Hint | None,
                  events: list[Observed]) -> None:
        """Read the job's file if its stat changed (and it is complete); feed the machine."""
        if self.known.get(name) == info.key:
            return
        if self._unchanged_since_restart(name, info):
            self.known[name] = info.key
            return
        if not self._settled(name, info, now, hint):
            return
        self.known[name] = info.key
        version = self._read(name, info, now)
        if version.readiness is Readiness.OTHER_HOST and name not in self.jobs:
            return  # none of this host's business
        events.append(Observed(name, FileRead(version, now)))

    def _unchanged_since_restart(self, name: str, info: FileStat) -> bool:
        """A finished job whose file is still the very file (stat key) of the version it ran.

        Reading it again could change nothing: not the machine's decision (nothing runs
        without a new digest) and not its status file (the version's digest is the run's,
        and its mtime and first-seen time are what the file already shows).
        """
        job = self.jobs.get(name)
        if self._restored.pop(name, None) != info.key or job is None:
            return False
        if phase(job) is not Phase.IDLE or job.missing_since is not None \
                or job.next_run is not None:  # a schedule's slots need the version's spec
            return False
        seen = self._seen.get(name)
        return job.run is not None and seen is not None and seen[0] == job.run.digest

    def _settled(self, name: str, info: FileStat, now: float, hint: Hint | None) -> bool:
        """Read a file that arrived complete at once; one written in place once it is still."""
        if hint is Hint.COMPLETE or now - info.mtime_ns / 1e9 >= self.settings.settle:
            self._unsettled.pop(name, None)
            return True
        seen = self._unsettled.get(name)
        if seen is None or seen.key != info.key:
            self._unsettled[name] = _Unsettled(info.key, now)
            return False
        if now - seen.since >= self.settings.settle:
            del self._unsettled[name]
            return True
        return False

    def _read(self, name: str, info: FileStat, now: float) -> Version:
        mtime = info.mtime_ns / 1e9
        try:
            data = read_job_file(info, self.settings.max_job_bytes, self.settings.jobs_dir)
        except Refused as e:
            return Version(Readiness.INVALID, problem=f"refused: {e}", mtime=mtime, seen=now)
        except (NotReady, OSError) as e:
            problem = str(e) if isinstance(e, NotReady) else f"waiting for the sync client: {e}"
            self.known.pop(name, None)  # retry on the next rescan
            return Version(Readiness.NOT_READY, problem=problem, mtime=mtime, seen=now)
        verdict = self.admit(name, data, now)
        if verdict.readiness is Readiness.NOT_READY:
            self.known.pop(name, None)  # not decided yet: read it again on the next rescan
        if verdict.readiness is Readiness.VALID and verdict.spec is not None:
            seen = self._first_seen(name, verdict.spec, now)
        else:
            seen = now
        return Version(verdict.readiness, verdict.spec, verdict.problem, mtime=mtime, seen=seen)

    def _first_seen(self, name: str, spec: JobSpec, now: float) -> float:
        """A touch or an identical re-delivery keeps the time this version was first seen."""
        job = self.jobs.get(name)
        previous = job.version if job else None
        if previous and previous.digest == spec.digest and previous.seen is not None:
            return previous.seen
        if previous is None:  # after a restart: the ledger remembers it
            digest, seen = self._seen.pop(name, ("", 0.0))
            if digest == spec.digest:
                return seen
        return now

    def _update_conflicts(self, listing: Listing) -> set[str]:
        """Remember each job's conflicted copies; the jobs whose copies changed."""
        changed = set()
        for name in set(self.conflicts) | set(listing.conflicts):
            new = sorted(listing.conflicts.get(name, []))
            if self.conflicts.get(name, []) != new:
                if new:
                    self.conflicts[name] = new
                else:
                    self.conflicts.pop(name, None)
                if name in self.jobs:
                    changed.add(name)
                    self._restored.pop(name, None)  # read it: its status is rewritten
                if new:
                    logger.info("conflicted copies of %s never run: %s", name, ", ".join(new))
        return changed
