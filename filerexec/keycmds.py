"""``filerexec keygen`` and ``filerexec sign``: make a signing key or a phone's TOTP secret,
and sign job files with a key (the rules are signing.py's, the key files keystore.py's)."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

from filerexec import keystore, signing
from filerexec.config import default_host
from filerexec.names import job_name
from filerexec.safefile import atomic_write
from filerexec.spec import SpecError, as_utf8, parse_job


def keygen(name: str, totp: bool) -> bool:
    """``filerexec keygen``: a signing key for ``name``, or (``totp``) a phone's TOTP secret."""
    key_dir = keystore.default_key_dir()
    try:
        if not totp:
            path = keystore.create_key(key_dir, name)
            print(f"created {path} (readable by you only)")
            print("Copy it to the keys/ folder of every host that should trust it, over a "
                  "channel you trust (not the synced folder). Revoke it by removing the file.")
            return True
        path, secret = keystore.create_totp(key_dir, name)
    except keystore.KeyProblem as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return False
    uri = signing.otpauth_uri(secret, f"{name}@{default_host()}")
    print(f"created {path} (readable by you only); scan this with your authenticator app:")
    try:
        import segno  # only here: the daemon never needs it
    except ImportError:  # pragma: no cover - segno is a dependency
        print("(no QR code: the segno library is missing; type the secret from the URI)")
    else:
        segno.make(uri, error="m").terminal(compact=True)
    print(uri)
    print("Then put `otp: CODE` into a job file. This secret lives on this host only; "
          "revoke it by removing the file.")
    return True


def sign(files: list[Path], key: str | None, name_given: str | None) -> bool:
    """``filerexec sign``: each file signed in place; False if any could not be."""
    try:
        key_id, secret = keystore.signing_key(keystore.default_key_dir(), key)
    except keystore.KeyProblem as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return False
    ok = True
    for path in files:
        name = name_given or _job_name_of(path)
        if name is None:
            print(f"{path}: not a job file name (NAME.yaml); give the job's name with --name")
            ok = False
            continue
        try:
            data = as_utf8(raw := path.read_bytes())
            parse_job(signing.split_signature(data)[0], name)
        except OSError as e:
            print(f"{path}: cannot read: {e.strerror}")
            ok = False
            continue
        except SpecError as e:
            print(f"{path}: not signed, fix it first: {e}")
            ok = False
            continue
        # A fresh nonce each time: signing an unchanged file again makes a new run request.
        nonce = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
        signed = signing.sign(data, name, key_id, secret, nonce)
        atomic_write(path, signed)
        print(f"{path}: signed as job {name!r} with key {key_id!r}"
              + (", and saved as UTF-8" if data != raw else ""))
    return ok


def _job_name_of(path: Path) -> str | None:
    """The job a file is (or will be): its path below the nearest jobs/, else its own name."""
    parts = path.resolve().parts
    if "jobs" in parts:
        below = parts[len(parts) - parts[::-1].index("jobs"):]
        return job_name("/".join(below))
    return job_name(path.name)

