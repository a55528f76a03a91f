"""The spool on disk: its layout, listing ``jobs/`` and reading job files.

Only reads under ``jobs/`` (the host never writes there). A listing is the
truth about which jobs exist; watcher events only say when to look.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filerexec.names import Kind, classify, is_skipped_dir, refusal

# classify() is pure and a rescan meets the same names every time: remember the verdicts
# (a rescan of 10,000 files spent half its time in it).
_classify = functools.lru_cache(maxsize=65536)(classify)

# When two files name one job (backup.yaml and backup.yml), the first suffix wins.
_SUFFIX_RANK = (".yaml", ".yml", ".yaml.txt", ".yml.txt")
_NT = os.name == "nt"

EXAMPLE_JOB = """\
# A filerexec job: drop a file like this into jobs/ and the host runs it.
# Delete the file to kill the job. Results appear in status/HOST/.
commands: """ + ("echo hello from %COMPUTERNAME% & ver\n" if os.name == "nt"
                 else 'echo "hello from $(hostname)"; uptime\n')


def init(spool: Path) -> list[Path]:
    """Create jobs/, status/ and an example job; return what was created."""
    created = []
    for folder in (spool / "jobs", spool / "status"):
        if not folder.is_dir():
            folder.mkdir(parents=True)
            created.append(folder)
    example = spool / "jobs" / "hello.yaml"
    if not any((spool / "jobs").iterdir()):
        example.write_text(EXAMPLE_JOB)
        created.append(example)
    return created


@dataclass(frozen=True, slots=True)
class FileStat:
    """Enough of a stat to notice a change without reading the file."""

    where: str  # the path as listed; ``path`` makes a Path of it only when asked
    size: int
    mtime_ns: int
    ino: int
    mode: int
    nlink: int
    placeholder: bool = False  # an online-only file: full size, no local data yet
    ctime_ns: int = 0

    @classmethod
    def of(cls, where: str, st: os.stat_result) -> FileStat:
        return cls(where, st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode, st.st_nlink,
                   is_placeholder(st), st.st_ctime_ns)

    @property
    def path(self) -> Path:
        return Path(self.where)

    @property
    def key(self) -> tuple[int, int, int, int]:
        # ctime too: sync clients set mtime to the sender's, and a same-size edit within
        # one mtime tick that reuses the inode would otherwise look unchanged. Nothing can
        # set ctime back; every write and rename moves it.
        return (self.size, self.mtime_ns, self.ino, self.ctime_ns)


FolderKey = tuple[int, int, int, int, int]  # dev, ino, mode, mtime_ns, ctime_ns
# A folder changed this close to its listing may change again within the same timestamp
# tick without its stat showing it (mtime and ctime are coarse): list it again next time.
RACY_NS = 3_000_000_000


@dataclass(slots=True)
class Listing:
    """One pass over ``jobs/``: job files by job name, conflicted copies by job name."""

    jobs: dict[str, FileStat] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # unsafe job-like names → why
    # Entries and folders that could not be examined: the jobs in them are not missing.
    unlisted: set[str] = field(default_factory=set)
    # Each folder walked ("" is jobs/ itself, "a/b/" one below), as it was before its
    # entries were read: a folder whose stat is still this has the same entries.
    folders: dict[str, FolderKey] = field(default_factory=dict)
    listed_ns: int = 0  # the wall clock when the listing began

    def refuse(self, rel: str, why: str) -> None:
        """An entry (a folder ends in "/") that cannot be listed: refused, never missing."""
        self.refused[rel] = why
        self.unlisted.add(rel)

    def holds(self, name: str) -> bool:
        """Whether job ``name`` may be in a part of jobs/ that could not be listed."""
        return any(name.startswith(rel) if rel.endswith("/") else _classify(rel).job == name
                   for rel in self.unlisted)


def _folder_key(st: os.stat_result) -> FolderKey:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)


def unchanged(jobs_dir: Path, listing: Listing) -> bool:
    """Whether every folder of ``listing`` still has the entries it had: no file was
    created, deleted or renamed in (or into, or out of) any of them since.

    One lstat per folder, where a listing stats every file. It cannot see a file written
    in place (its folder does not change): the watcher's events say so, and a full
    listing now and then is the backstop. Racy folders (changed just before the
    listing) count as changed.
    """
    racy = listing.listed_ns - RACY_NS
    for rel, key in listing.folders.items():
        if max(key[3], key[4]) >= racy:
            return False
        try:
            if _folder_key(os.lstat(os.path.join(jobs_dir, rel.rstrip("/")))) != key:
                return False
        except OSError:
            return False
    return bool(listing.folders)


class Unavailable(Exception):
    """``jobs/`` as a whole cannot be listed: missing, a link, not a folder, unreadable."""


def scan(jobs_dir: Path) -> Listing | None:
    """List every job file under ``jobs_dir``; None when the folder is unavailable."""
    try:
        return list_jobs(jobs_dir)
    except Unavailable:
        return None


# The walk holds a descriptor of each folder and opens the next one below it without
# following a link, so that no link (planted, or swapped in for a folder mid-walk) ever
# leads a listing out of jobs/. Where descriptors cannot be walked (Windows) each folder
# is checked with lstat first.
_BY_FD = os.scandir in os.supports_fd and os.open in os.supports_dir_fd
_DIR_FLAGS = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_CLOEXEC", 0))
MAX_DEPTH = 32  # folders inside jobs/: far more than anyone sorts jobs into
# A job's status path (status/HOST/NAME.yaml) must fit the system's limit as its file does;
# this leaves room for the host's folder name beside the longest path a listing accepts.
MAX_PATH = 4096 - 256
Folder = int | str  # a descriptor, or a path where descriptors cannot be walked


def list_jobs(jobs_dir: Path) -> Listing:
    """Every job file under ``jobs_dir``, never following a link; Unavailable if it cannot
    be listed at all. An entry or folder that cannot be examined is listed as refused."""
    listing = Listing(listed_ns=time.time_ns())
    top = _open_top(jobs_dir)
    try:
        listing.folders[""] = _folder_key(os.fstat(top) if isinstance(top, int)
                                          else os.lstat(top))
        with os.scandir(top) as entries:
            _walk(top, entries, str(jobs_dir), "", listing, {})
    except OSError as e:
        raise Unavailable(f"{jobs_dir} cannot be listed ({_words(e)})") from None
    finally:
        if isinstance(top, int):
            os.close(top)
    return listing


def _open_top(jobs_dir: Path) -> Folder:
    try:
        st = os.lstat(jobs_dir)
    except FileNotFoundError:
        raise Unavailable(f"{jobs_dir} is missing") from None
    except OSError as e:
        raise Unavailable(f"{jobs_dir} cannot be examined ({_words(e)})") from None
    if stat.S_ISLNK(st.st_mode):
        raise Unavailable(f"{jobs_dir} is a symbolic link; jobs are never read through a "
                          "link: make jobs/ a real folder again") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Unavailable(f"{jobs_dir} is not a folder")
    if not _BY_FD:
        return str(jobs_dir)
    try:
        return os.open(jobs_dir, _DIR_FLAGS)
    except OSError as e:  # ELOOP: replaced by a link since the lstat
        raise Unavailable(f"{jobs_dir} cannot be opened as a folder ({_words(e)})") from None


def _words(e: OSError) -> str:
    """An error in words, without the path (which can be thousands of characters long)."""
    return e.strerror or type(e).__name__


def _walk(folder: Folder, entries: Iterator[os.DirEntry[str]], where: str, prefix: str,
          listing: Listing, chosen: dict[str, str]) -> None:
    for entry in entries:
        rel, path = prefix + entry.name, where + os.sep + entry.name
        try:
            # Windows' DirEntry.stat() leaves st_ino and st_nlink 0: the read's fstat would
            # never match it. lstat there is what stat_file and the read see.
            st = os.lstat(path) if _NT else entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # vanished between listing and stat
        except OSError as e:
            listing.refuse(rel, f"it cannot be examined: {_words(e)}")
            continue
        if len(path) * 4 > MAX_PATH and len(os.fsencode(path)) > MAX_PATH:  # 4: UTF-8's most
            listing.refuse(rel, f"its path is longer than {MAX_PATH} bytes; move it up")
        elif stat.S_ISDIR(st.st_mode):
            if not is_skipped_dir(entry.name):
                _walk_below(folder, entry.name, path, rel + "/", listing, chosen)
        else:
            _list_file(rel, FileStat.of(path, st), listing, chosen)


def _walk_below(folder: Folder, name: str, where: str, prefix: str, listing: Listing,
                chosen: dict[str, str]) -> None:
    """List a sub-folder; one that cannot be listed is refused, and its jobs kept as they are."""
    if prefix.count("/") > MAX_DEPTH:
        listing.refuse(prefix, f"it is more than {MAX_DEPTH} folders deep; move it up")
        return
    try:
        below: Folder = (os.open(name, _DIR_FLAGS, dir_fd=folder) if isinstance(folder, int)
                         else _checked_dir(where))
    except FileNotFoundError:
        return
    except OSError as e:  # ELOOP: a folder swapped for a link since it was listed
        listing.refuse(prefix, f"the folder cannot be opened: {_words(e)}")
        return
    try:
        listing.folders[prefix] = _folder_key(os.fstat(below) if isinstance(below, int)
                                              else os.lstat(below))
        with os.scandir(below) as entries:
            _walk(below, entries, where, prefix, listing, chosen)
    except OSError as e:
        listing.refuse(prefix, f"the folder cannot be listed: {_words(e)}")
    finally:
        if isinstance(below, int):
            os.close(below)


def _checked_dir(where: str) -> str:
    if not stat.S_ISDIR(os.lstat(where).st_mode):
        raise OSError(errno.ELOOP, "not a plain folder (a link?)")
    return where


def _list_file(rel: str, info: FileStat, listing: Listing, chosen: dict[str, str]) -> None:
    found = _classify(rel)
    if found.kind is Kind.CONFLICT and found.job:
        listing.conflicts.setdefault(found.job, []).append(rel)
    elif found.kind is Kind.OTHER and (why := refusal(rel)):
        listing.refused[rel] = why
    elif found.kind is Kind.JOB and found.job:
        name = found.job
        current = chosen.get(name)
        if current is not None and _rank(current) <= _rank(rel):
            listing.conflicts.setdefault(name, []).append(rel)
            return
        if current is not None:
            listing.conflicts.setdefault(name, []).append(current)
        chosen[name] = rel
        listing.jobs[name] = info


def stat_file(jobs_dir: Path, path: str) -> tuple[str, FileStat] | None:
    """The job whose file ``path`` (under ``jobs_dir``) is, with its stat, as ``scan`` would
    list it if it were the only file for that job; None if it is no job file or is gone."""
    rel = os.path.relpath(path, jobs_dir)
    parts = rel.split(os.sep)
    if rel.startswith("..") or os.path.isabs(rel) or any(is_skipped_dir(p) for p in parts[:-1]):
        return None
    found = _classify("/".join(parts))
    if found.kind is not Kind.JOB or not found.job:
        return None
    where = os.path.join(jobs_dir, *parts)
    if len(os.fsencode(where)) > MAX_PATH or len(parts) > MAX_DEPTH:
        return None  # the listing refuses it
    try:
        st = _lstat_below(jobs_dir, parts)
    except (OSError, Unavailable):
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    return found.job, FileStat.of(where, st)


def _lstat_below(jobs_dir: Path, parts: list[str]) -> os.stat_result:
    """The stat of ``jobs_dir/parts…``, reached without following a link on the way."""
    folder = _open_parent(jobs_dir, parts)
    if not isinstance(folder, int):
        return os.lstat(os.path.join(jobs_dir, *parts))
    try:
        return os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
    finally:
        os.close(folder)


def _open_parent(jobs_dir: Path, parts: list[str]) -> Folder:
    """The folder holding ``jobs_dir/parts…``, reached without following a link: a
    descriptor, or (where descriptors cannot be walked) its path, each folder checked."""
    folder = _open_top(jobs_dir)
    if not isinstance(folder, int):
        for i in range(len(parts) - 1):
            _checked_dir(os.path.join(jobs_dir, *parts[: i + 1]))
        return os.path.join(jobs_dir, *parts[:-1])
    try:
        for part in parts[:-1]:
            below = os.open(part, _DIR_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = below
    except BaseException:
        os.close(folder)
        raise
    return folder


def _rank(rel: str) -> int:
    lower = rel.lower()
    return next((i for i, s in enumerate(_SUFFIX_RANK) if lower.endswith(s)), len(_SUFFIX_RANK))


# Online-only files: macOS "dataless" (st_flags SF_DATALESS), Windows cloud files
# (st_file_attributes RECALL_ON_DATA_ACCESS / RECALL_ON_OPEN / OFFLINE). Reading one
# makes the sync client download it, which can block for as long as the network takes.
_SF_DATALESS = 0x40000000
_WINDOWS_ONLINE_ONLY = 0x00400000 | 0x00040000 | 0x00001000


def is_placeholder(st: os.stat_result) -> bool:
    """Whether a stat says the file is a placeholder whose data is not on this machine."""
    flags = getattr(st, "st_flags", 0) or 0
    attributes = getattr(st, "st_file_attributes", 0) or 0
    return bool(flags & _SF_DATALESS or attributes & _WINDOWS_ONLINE_ONLY)


class NotReady(Exception):
    """The file exists but cannot be read yet (permissions, placeholder, still arriving)."""


class Refused(Exception):
    """The file is not something a job may be read from (symlink, FIFO, too large…)."""


def read_job_file(info: FileStat, max_bytes: int, jobs_dir: Path | None = None) -> bytes:
    """Read a job file safely: never follow a link, never block on a FIFO, never read too much.

    With ``jobs_dir`` no folder between it and the file is followed if it is a link: a
    folder swapped for a link since the listing cannot lead the read out of jobs/.
    """
    mode = info.mode
    if stat.S_ISLNK(mode):
        raise Refused("it is a symbolic link; job files must be plain files")
    if not stat.S_ISREG(mode):
        raise Refused("it is not a plain file (a FIFO, socket or device)")
    if info.nlink > 1:
        raise Refused("it is a hard link to another file; job files must be plain files")
    if info.size > max_bytes:
        raise Refused(f"it is {info.size} bytes; job files may be at most {max_bytes} bytes")
    if info.placeholder:
        raise NotReady("waiting for the sync client: the file is online-only (a placeholder); "
                       "make jobs/ always available on this device")
    # O_BINARY: Windows would read in text mode (CRLF as LF: fewer bytes than st_size).
    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_BINARY", 0))
    try:
        fd = _open_file(info.where, flags, jobs_dir)
    except Unavailable as e:
        raise NotReady(f"waiting for the spool: {e}") from e
    except PermissionError as e:
        raise NotReady("waiting for the sync client: the file cannot be read yet") from e
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW met a link (a folder's: ENOTDIR)
            raise Refused("it or a folder above it is a symbolic link; job files must be "
                          "plain files in plain folders") from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_ino != info.ino:
            raise NotReady("waiting for the sync client: the file changed while it was read")
        if st.st_size != info.size:  # written to since it was listed: not complete yet
            raise NotReady("waiting for the sync client: the file is still arriving")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise Refused(f"it is larger than {max_bytes} bytes")
    if len(data) != st.st_size:
        raise NotReady("waiting for the sync client: the file is still arriving")
    return data


def _open_file(where: str, flags: int, jobs_dir: Path | None) -> int:
    if jobs_dir is None:
        return os.open(where, flags)
    parts = os.path.relpath(where, jobs_dir).split(os.sep)
    folder = _open_parent(jobs_dir, parts)
    if not isinstance(folder, int):
        return os.open(where, flags)
    try:
        return os.open(parts[-1], flags, dir_fd=folder)
    finally:
        os.close(folder)
