"""Safe file primitives for a folder others can write to: atomic replace, no links.

Every write is atomic: a temp file named ``.~filerexec-*.tmp`` (a pattern Dropbox
and Office-aware clients skip, and Syncthing users put in .stignore), fsync (unless
the caller can rebuild the file after a power loss: ``durable=False``), rename over
the target. Below a trusted ``base`` no folder on the way may be a symbolic
link (the synced tree is writable by others). Used by the status writer, ``cli``
(submit, sign) and ``migrate`` (import).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

from filerexec import APP

logger = logging.getLogger(__name__)

TEMP_PREFIX = f".~{APP}-"
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes, base: Path | None = None,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename.

    Without ``durable`` there is no fsync: a power loss may leave the old content or an
    empty file (never a mix), for files their writer rebuilds (the status files).

    With ``base``, no folder between ``base`` and ``path`` may be a symbolic link: the
    synced tree is writable by others, and a link planted at ``status/HOST/nightly``
    must not make the host write (or delete) anywhere else. On POSIX the folders are
    walked with O_NOFOLLOW descriptors, so no race with the link's creation exists.
    """
    if base is not None and _DIR_FD:
        _write_below(base, path, data, durable)
        return
    if base is not None:
        _check_no_links(base, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DIR_FD = {os.open, os.mkdir, os.rename, os.unlink} <= os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def _open_folder(base: Path, folder: Path, create: bool) -> int:
    """A descriptor of ``folder``, reached from ``base`` without following any link."""
    fd = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in folder.relative_to(base).parts:
            try:
                below = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                below = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:  # ELOOP or ENOTDIR: a link, or a file, where a folder must be
                raise OSError(e.errno, f"{folder}: {part!r} is not a plain folder "
                              "(a symbolic link?); not writing through it") from None
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_below(base: Path, path: Path, data: bytes, durable: bool) -> None:
    folder = _open_folder(base, path.parent, create=True)
    tmp = f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(tmp, flags, 0o600, dir_fd=folder), "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.rename(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)  # replaces on POSIX
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    finally:
        os.close(folder)


def _check_no_links(base: Path, folder: Path) -> None:
    """Where descriptors cannot be walked (Windows): refuse a link found on the way."""
    current = base
    for part in folder.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            raise OSError(f"{current} is a symbolic link; not writing through it")


def remove_below(base: Path, path: Path) -> bool:
    """Remove ``path`` if it exists, never through a link below ``base``.

    True if it is gone (or was never there); False if it could not be removed (a link or
    a file where a folder must be, a read-only or failing folder): the caller retries.
    """
    try:
        if not _DIR_FD:
            _check_no_links(base, path.parent)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return True
        try:
            folder = _open_folder(base, path.parent, create=False)
        except FileNotFoundError:
            return True
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as e:  # a link on the way: whatever it points to is not ours to remove
        logger.warning("not removing %s: %s", path, e)
        return False
    return True


def holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a plain file holding exactly ``data``.

    Never follows a link nor opens a FIFO planted in the synced folder (it would block).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        return os.read(fd, len(data) + 1) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def read_tail(base: Path, path: Path, size: int) -> bytes:
    """The last ``size`` bytes of the plain file ``path``; b"" if it is not one.

    Never through a link below ``base`` (a planted link would show another file's content
    on the status page), never blocking on a FIFO.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        if _DIR_FD:
            folder = _open_folder(base, path.parent, create=False)
            try:
                fd = os.open(path.name, flags, dir_fd=folder)
            finally:
                os.close(folder)
        else:
            _check_no_links(base, path.parent)
            fd = os.open(path, flags)
    except OSError:
        return b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b""
        os.lseek(fd, max(0, st.st_size - size), os.SEEK_SET)
        return os.read(fd, size)
    except OSError:
        return b""
    finally:
        os.close(fd)
