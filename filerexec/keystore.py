"""The host's and the signer's keys on disk: one file per device, 0600, never in the spool.

``KEYDIR/NAME.key`` holds an HMAC-SHA256 key (hex) that ``filerexec sign`` uses
and the host verifies with; ``KEYDIR/NAME.totp`` a TOTP secret (base32) enrolled in
an authenticator app. KEYDIR is ``keys/`` beside the config file: platformdirs'
user config directory, or the folder of ``FILEREXEC_CONFIG``. Revoking a device is
removing its file; the daemon re-reads the folder for every job it checks.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
from pathlib import Path

import platformdirs

from filerexec import APP
from filerexec.signing import KEY_ID, Keyring

logger = logging.getLogger(__name__)

_FILE = re.compile(r"(?P<id>[A-Za-z0-9._-]{1,64})\.(?P<kind>key|totp)")


def default_key_dir() -> Path:
    """``keys/`` beside the config file (``FILEREXEC_CONFIG`` names that file)."""
    config = os.environ.get("FILEREXEC_CONFIG")
    base = Path(config).parent if config else Path(platformdirs.user_config_dir(APP))
    return base / "keys"


class KeyProblem(Exception):
    """A key cannot be created or used: what to do about it."""


def _create(path: Path, text: str) -> None:
    """Write a new secret file readable by its owner only; never replace one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyProblem(f"{path} exists: pick another --name, or remove it to revoke it "
                        "first") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)  # whatever the umask said


def create_key(key_dir: Path, name: str) -> Path:
    """A new HMAC key for device ``name``."""
    _check_name(name)
    path = key_dir / f"{name}.key"
    _create(path, secrets.token_hex(32) + "\n")
    return path


def create_totp(key_dir: Path, name: str) -> tuple[Path, bytes]:
    """A new TOTP secret for device ``name`` (160 bits, as RFC 4226 recommends)."""
    _check_name(name)
    secret = secrets.token_bytes(20)
    path = key_dir / f"{name}.totp"
    _create(path, base64.b32encode(secret).decode() + "\n")
    return path, secret


def _check_name(name: str) -> None:
    if not KEY_ID.fullmatch(name):
        raise KeyProblem(f"{name!r} is not a usable key name: letters, digits, '.', '_' and '-'")


def load(key_dir: Path) -> Keyring:
    """Every key in ``key_dir`` (none if it does not exist); unreadable files are skipped."""
    hmac_keys: dict[str, bytes] = {}
    totp_keys: dict[str, bytes] = {}
    try:
        entries = sorted(os.scandir(key_dir), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return Keyring({}, {})
    for entry in entries:
        match = _FILE.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            text = Path(entry.path).read_text().strip()
            if match["kind"] == "key":
                hmac_keys[match["id"]] = bytes.fromhex(text)
            else:
                totp_keys[match["id"]] = base64.b32decode(text + "=" * (-len(text) % 8))
        except (OSError, ValueError, binascii.Error) as e:
            logger.warning("key file %s is not usable: %s", entry.path, e)
    return Keyring(hmac_keys, totp_keys)


def signing_key(key_dir: Path, name: str | None) -> tuple[str, bytes]:
    """The key ``filerexec sign`` uses: ``name``, or the only one there is."""
    keys = load(key_dir).hmac
    if name is not None:
        if name not in keys:
            raise KeyProblem(f"no key {name!r} in {key_dir} (create it: filerexec keygen "
                            f"--name {name})")
        return name, keys[name]
    if len(keys) == 1:
        return next(iter(keys.items()))
    if not keys:
        raise KeyProblem(f"no key in {key_dir}: create one with `filerexec keygen`")
    raise KeyProblem(f"several keys in {key_dir} ({', '.join(sorted(keys))}): choose one "
                    "with --key NAME")
