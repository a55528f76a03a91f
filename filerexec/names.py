"""Which paths under ``jobs/`` are jobs, and which are what sync services leave behind.

Sync services put conflicted copies, partial downloads and metadata beside the
files they carry (SYNC-ENGINES.md lists them). Most put a conflict marker
*before* the last extension, so a conflicted copy still ends in ``.yaml``: a job
is never recognised by its extension alone. Every rule lives in the tables
below, checked in order; nothing else in the project decides what a name means.

All functions are pure: they look at the name only, never at the filesystem.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Classified", "Kind", "Spellings", "classify", "is_skipped_dir", "job_name",
           "refusal"]


class Kind(StrEnum):
    """What a file under ``jobs/`` is."""

    JOB = "job"
    CONFLICT = "conflict"  # a sync service's conflicted copy of a job: listed, never run
    TEMP = "temp"  # a partial download or an editor's scratch file: never read
    META = "meta"  # a sync service's or an OS's bookkeeping: ignored quietly
    OTHER = "other"  # anything else (README.txt, notes.md, an unsafe name): not a job


@dataclass(frozen=True, slots=True)
class Classified:
    """The verdict on one path: its kind, and for JOB or CONFLICT the job's name."""

    kind: Kind
    job: str | None = None


# Folders a scan never descends into: sync-service version stores, staging areas,
# recycle bins. Every hidden folder is skipped as well (see is_skipped_dir).
_SKIPPED_DIRS = frozenset({
    ".stversions",  # Syncthing file versions
    ".dropbox.cache",  # Dropbox staging and deleted files
    ".sync",  # Resilio
    ".tmp.drivedownload",  # Google Drive for desktop
    ".git",
    "@eaDir",  # Synology thumbnails and metadata, present in every folder
    "#recycle",  # Synology recycle bin
    "$RECYCLE.BIN",  # Windows
    "System Volume Information",  # Windows
})

_S = re.DOTALL  # file names may hold any character but "/"; ".*" must cross them all
_I = re.DOTALL | re.IGNORECASE

# Names that are not jobs, matched against the whole base name, first match wins.
_NOISE: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    # Metadata. Hidden names are META anyway; the dotted ones are listed to document them.
    (Kind.META, re.compile(r"\.st(?:folder|ignore|versions)", _S)),  # Syncthing
    (Kind.META, re.compile(r"\.dropbox(?:\.cache|\.attr)?", _S)),  # Dropbox
    (Kind.META, re.compile(r"\._?sync_[0-9a-f]+\.db(?:-wal|-shm)?", _I)),  # Nextcloud/ownCloud
    (Kind.META, re.compile(r"\.(?:owncloud|nextcloud)sync\.log", _I)),  # Nextcloud/ownCloud
    (Kind.META, re.compile(r"\.sync|\.Sync(?:ID|Ignore|Archive)", _S)),  # Resilio / BitTorrent Sync
    (Kind.META, re.compile(r"desktop\.ini|e?thumbs\.db", _I)),  # Windows Explorer
    (Kind.META, re.compile(r"\.DS_Store|Icon\r|\._.*", _S)),  # macOS Finder, AppleDouble forks
    # Temporary and partial files: a sync or an editor is still writing them.
    (Kind.TEMP, re.compile(r"\.syncthing\..*\.tmp|~syncthing~.*\.tmp", _S)),  # Syncthing
    (Kind.TEMP, re.compile(r"\..*\.~[0-9a-f]+", _I)),  # Nextcloud/ownCloud download
    (Kind.TEMP, re.compile(r".*\.!sync", _S)),  # Resilio
    (Kind.TEMP, re.compile(r"\.unison\..*", _S)),  # Unison
    (Kind.TEMP, re.compile(r".*\.partial", _I)),  # rclone NAME.<hex>.partial, OneDrive (Linux)
    (Kind.TEMP, re.compile(r"\..*\.icloud", _S)),  # iCloud placeholders
    (Kind.TEMP, re.compile(r"\..*\.sw[a-p]", _S)),  # vim swap files
    (Kind.TEMP, re.compile(r".*~", _S)),  # editor backups, Seafile
    (Kind.TEMP, re.compile(r"\.#.*|#.*#", _S)),  # emacs lock and auto-save files
    (Kind.TEMP, re.compile(r"~\$.*|\.~lock\..*#", _S)),  # MS Office owner files, LibreOffice locks
    (Kind.TEMP, re.compile(r"\.goutputstream-.*", _S)),  # GNOME's atomic save
    (Kind.TEMP, re.compile(r".*\.(?:crdownload|part|download|tmp|temp)", _I)),  # browsers, generic
)

# Conflict markers, each removed from a name to get back the file it is a copy of.
# A marker must sit before an extension or at the end, and must not start the name.
_END = r"(?=\.|\Z)"
_DATE = r"\d{4}-\d{2}-\d{2}"
_IN_PARENS = r"(?:[^()]|\(\d+\))*"  # Dropbox numbers repeated copies: "(… 2018-09-21 (1))"
# Every language Dropbox writes "conflicted copy" in has one of these words.
_CONFLICT_WORD = (  # Turkish "çak\u0131\u015fan" is escaped: its dotless i looks like an i
    "(?:conflict|conflit|konflik|конфликт|конфлікт|\u00e7ak\u0131\u015fan|競合|冲突|衝突|충돌|ขัดแย้ง)")
_CONFLICT_MARKERS: tuple[re.Pattern[str], ...] = (
    # Syncthing: "job.sync-conflict-20261128-050429-5TKYFLG.yaml"
    re.compile(r"\.sync-conflict-\d{8}-\d{6}-[0-9A-Z]{7}" + _END),
    # Dropbox in any language: "job (Jane's conflicted copy 2018-09-21).yaml";
    # Nextcloud/ownCloud: "job (conflicted copy alice 2025-04-10 093612).yaml";
    # Seafile: "job (SFConflict a@b.c 2026-08-22-14-31-07).yaml";
    # Unison: "job (conflict_on_2024-05-01).yaml".
    # A date is required so that "job (conflict test).yaml" stays a job.
    re.compile(rf" \((?={_IN_PARENS}{_CONFLICT_WORD}){_IN_PARENS}{_DATE}{_IN_PARENS}\){_END}", _I),
    # Dropbox name clashes.
    re.compile(r" \((?:Case|Unicode Encoding|Selective Sync) Conflict(?: \d+)?\)" + _END, _I),
    # Nextcloud/ownCloud: names that differ only in case; the older conflict form.
    re.compile(rf" \(case clash from {_DATE} \d{{6}}\){_END}", _I),
    re.compile(r"_conflict-\d{8}-\d{6}" + _END),
    # Resilio: "job.Conflict.yaml", "job.Conflict1.yaml" (capitalised, unlike rclone's).
    re.compile(r"\.Conflict\d*" + _END),
    # rclone bisync: "job.yaml.conflict1" (>= 1.66), "job.yaml..path1" (older).
    re.compile(r"\.conflict\d+" + _END),
    re.compile(r"\.\.path[12]" + _END),
)
_MAX_MARKERS = 4  # a copy of a copy carries two; the cap keeps hostile names cheap

# What a job file is called: the phone-editor forms ".yaml.txt"/".yml.txt" included.
# Numbered duplicates ("job (1).yaml", "job 2.yaml" from Google Drive, iCloud, Box) and
# OneDrive's device suffix ("job-DESKTOP-ABC123.yaml") match this too, on purpose: they
# cannot be told from names a person chose, so guessing would silently drop real jobs.
# They run as jobs of their own; the status folder makes them visible.
_JOB_FILE = re.compile(r"(?P<stem>.+)\.ya?ml(?:\.txt)?", _I)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NAME_MAX = 255  # bytes in one file name: Linux, macOS and Windows (in UTF-16 units) alike
_LONGEST_SUFFIX = ".yaml"  # of the files the host writes per job: NAME.yaml, NAME.log


def is_skipped_dir(dirname: str) -> bool:
    """True for a folder a scan of ``jobs/`` never descends into (any hidden one included)."""
    return dirname.startswith(".") or dirname in _SKIPPED_DIRS


def classify(relpath: str) -> Classified:
    """Say what the file at ``relpath`` (POSIX, relative to ``jobs/``) is.

    A JOB's name is ``relpath`` without its suffix (``nightly/db.yaml`` → ``nightly/db``);
    a CONFLICT names the job it is a copy of, in the same folder.
    """
    parts = relpath.split("/")
    # Refuse what could escape the status folder or name no file; a job name must be
    # safe to use as a path below status/HOST/.
    if any(part in ("", ".", "..") for part in parts):
        return Classified(Kind.OTHER)
    folders, base = parts[:-1], parts[-1]
    if any(is_skipped_dir(folder) for folder in folders):
        # Files inside a version store or staging area belong to the sync service.
        return Classified(Kind.META)
    verdict = _classify_base(base)
    if verdict.job is None:
        return verdict
    job = "/".join([*folders, verdict.job])
    if _name_problem(job):
        return Classified(Kind.OTHER)
    return Classified(verdict.kind, job)


# The host's own files in status/HOST/: no job's status may land on them, and no job's
# folder may take their names (a folder `index.md/` would block index.md for good).
_RESERVED_JOBS = frozenset({"host"})  # status/HOST/host.yaml is the heartbeat
_RESERVED_FOLDER = re.compile(r".*\.(?:yaml|log)|index\.md", re.DOTALL | re.IGNORECASE)


def _name_problem(job: str) -> str | None:
    """Why ``job`` cannot name a job: it must be safe as a path below status/HOST/."""
    if _CONTROL.search(job):
        return "its name contains a control character"
    if "\\" in job:
        return "its name contains a backslash, which Windows reads as a folder separator"
    size = len((job.rsplit("/", 1)[-1] + _LONGEST_SUFFIX).encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        return (f"its status file would be named with {size} bytes, more than the "
                f"{NAME_MAX} a file name may have; shorten the name")
    *folders, last = job.split("/")
    if not folders and last.casefold() in _RESERVED_JOBS:
        return f"the job name {last!r} is reserved: status/HOST/{last}.yaml is the heartbeat"
    for folder in folders:
        if _RESERVED_FOLDER.fullmatch(folder):
            return (f"the folder name {folder!r} is reserved: it would clash with a status "
                    "file of this name")
    return None


def refusal(relpath: str) -> str | None:
    """Why a path named like a job file is not a job for safety's sake; None if it is not."""
    parts = relpath.split("/")
    base = parts[-1]
    match = _JOB_FILE.fullmatch(base)
    if match is None or _noise(base) is not None:
        return None
    if any(part in ("", ".", "..") for part in parts):
        return "its path has an empty, '.' or '..' part"
    if any(is_skipped_dir(folder) for folder in parts[:-1]):
        return None
    problem = _name_problem("/".join([*parts[:-1], match["stem"]]))
    return None if problem is None else f"not a job: {problem}; rename the file"


def job_name(relpath: str) -> str | None:
    """The job's name if ``relpath`` is a job file, else None."""
    verdict = classify(relpath)
    return verdict.job if verdict.kind is Kind.JOB else None


def _classify_base(base: str) -> Classified:
    """Classify a base name; ``job`` is the name's own part, without the folder."""
    noise = _noise(base)
    if noise is not None:
        return Classified(noise)
    original = _strip_conflict_markers(base)
    if original is not None:
        # A conflicted copy of something that is not a job (notes.md) is not our business.
        if _noise(original) is None and (match := _JOB_FILE.fullmatch(original)):
            return Classified(Kind.CONFLICT, match["stem"])
        return Classified(Kind.OTHER)
    match = _JOB_FILE.fullmatch(base)
    return Classified(Kind.JOB, match["stem"]) if match else Classified(Kind.OTHER)


def _noise(base: str) -> Kind | None:
    for kind, pattern in _NOISE:
        if pattern.fullmatch(base):
            return kind
    # A hidden name is never a job, whatever it ends in.
    return Kind.META if base.startswith(".") else None


def _strip_conflict_markers(base: str) -> str | None:
    """The name ``base`` is a conflicted copy of, or None when it carries no marker."""
    name, found = base, False
    for _ in range(_MAX_MARKERS):
        for marker in _CONFLICT_MARKERS:
            match = marker.search(name, 1)  # from 1: something must come before the marker
            if match:
                name, found = name[: match.start()] + name[match.end() :], True
                break
        else:
            break
    return name if found else None


# --- names a case-insensitive, normalising filesystem would make one -------------------


@functools.lru_cache(maxsize=65536)
def folded(name: str) -> str:
    """``name`` as macOS and Windows compare names: NFC-normalised, case-folded."""
    return unicodedata.normalize("NFC", name).casefold()


class Spellings:
    """Job names, and the folders in them, as a phone's or laptop's filesystem sees them.

    Two jobs whose names differ only by case or Unicode normalisation (``Backup`` and
    ``backup``, NFC and NFD ``café``) have status files that are one file on macOS and
    Windows: the sync service would make a conflicted copy of the host's own files. The
    first name added keeps its spelling; a later one that would collide is told with which.
    """

    def __init__(self) -> None:
        self._files: dict[str, str] = {}  # folded job name → the job name
        self._folders: dict[str, tuple[str, str]] = {}  # folded folder → (folder, its job)

    def clash(self, name: str) -> str | None:
        """The name already added that ``name`` would collide with; None if none."""
        parts = name.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            spelt = self._folders.get(folded(folder))
            if spelt is not None and spelt[0] != folder:
                return spelt[1]
        other = self._files.get(folded(name))
        return other if other is not None and other != name else None

    def add(self, name: str) -> str | None:
        """Add ``name`` unless it collides; the name it collides with, if it does."""
        other = self.clash(name)
        if other is None:
            parts = name.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                self._folders.setdefault(folded(folder), (folder, name))
            self._files.setdefault(folded(name), name)
        return other
