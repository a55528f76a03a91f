"""Who may run a job: signed job files (HMAC), phone codes (TOTP), replay memory. Pure.

A laptop signs a job file with a shared key: a trailing comment line

    # filerexec-signature v1 key=laptop nonce=20261128T065012Z-3f9a1c2b hmac=<64 hex> job=backup

carries an HMAC-SHA256 over the key id, the nonce, the job's name and the exact
bytes before that line. It is checked in constant time *before* the file is parsed,
so nothing an unauthenticated writer puts into the file reaches the YAML parser.
The file stays valid YAML (the line is a comment) and readable on a phone.

A phone cannot compute an HMAC, but an authenticator app computes RFC 6238 codes:
a job carrying ``otp: 123456`` is accepted if the code is one of an enrolled
secret's codes within the window. The code authenticates *that someone holding the
secret acted recently*, not the file's content (see README, Security).

Every accepted signature or code is a *token*, accepted once per host: a token seen
before is a replay, unless it is the same file still in place (a touch, a restart,
a sync client re-delivering it). The token is bound into the run digest, so signing
an unchanged file again, or a fresh code, is a new run request: "sign again to run
again".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from filerexec import APP
from filerexec.policy import policy_problem
from filerexec.spec import JobSpec, SpecError, parse_job

__all__ = [
    "TOTP_DIGITS", "TOTP_STEP", "Keyring", "Rejected", "TokenStore", "admit", "hotp",
    "otpauth_uri", "sign", "split_signature", "totp", "verify_signature",
]

PREFIX = b"# filerexec-signature "
_LINE = re.compile(
    rb"# filerexec-signature v1 key=(?P<key>[A-Za-z0-9._-]{1,64}) nonce=(?P<nonce>[A-Za-z0-9._-]"
    rb"{1,64}) hmac=(?P<mac>[0-9a-f]{64}) job=(?P<job>[^\x00-\x1f\x7f]{1,1024})")
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
TOTP_STEP = 30  # RFC 6238 defaults, the only ones every authenticator app supports
TOTP_DIGITS = 6


NOT_SIGNED = ("the job is not signed, and this host runs only signed jobs (sign it with "
              "`filerexec sign FILE`, or add `otp:` with a code from your authenticator app)")


class Rejected(Exception):
    """The file is not authenticated or not allowed: a reason a person can act on."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """The secrets this host trusts, by key id (one per device; revoked by removal)."""

    hmac: Mapping[str, bytes]
    totp: Mapping[str, bytes]


class TokenStore(Protocol):
    """The host's durable memory of accepted tokens (the ledger)."""

    def token_used(self, token: str) -> bool: ...

    def accepted(self, job: str) -> tuple[str, str] | None:
        """The token and file fingerprint last accepted for ``job`` (cleared on deletion)."""

    def accept(self, job: str, token: str, fingerprint: str, now: float) -> None: ...


# ---- HMAC signatures ---------------------------------------------------------------------


def _mac(secret: bytes, key_id: str, nonce: str, name: str, body: bytes) -> str:
    # Fields joined by newlines, which none of them may contain: unambiguous.
    message = b"filerexec-signature-v1\n%s\n%s\n%s\n" % (
        key_id.encode(), nonce.encode(), name.encode("utf-8", "surrogateescape"))
    return hmac.new(secret, message + body, hashlib.sha256).hexdigest()


def split_signature(data: bytes) -> tuple[bytes, bytes | None]:
    """The bytes before a trailing signature line, and that line (None when unsigned)."""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    start = data.rfind(b"\n", 0, end) + 1
    if data.startswith(PREFIX, start):
        return data[:start], data[start:end]
    return data, None


def sign(data: bytes, name: str, key_id: str, secret: bytes, nonce: str) -> bytes:
    """``data`` with its signature line replaced by a new one for job ``name``."""
    if not KEY_ID.fullmatch(key_id) or not KEY_ID.fullmatch(nonce):
        raise ValueError("a key id and a nonce are letters, digits, '.', '_' and '-'")
    body, _ = split_signature(data)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    mac = _mac(secret, key_id, nonce, name, body)
    line = f"# filerexec-signature v1 key={key_id} nonce={nonce} hmac={mac} job={name}\n"
    return body + line.encode("utf-8", "surrogateescape")


def verify_signature(data: bytes, name: str, keys: Mapping[str, bytes]) -> tuple[bytes, str]:
    """Check a signed file before it is parsed: its body and its token, or Rejected."""
    body, line = split_signature(data)
    if line is None:
        raise Rejected(NOT_SIGNED)
    match = _LINE.fullmatch(line)
    if match is None:
        raise Rejected("the signature line is damaged: sign the file again")
    key_id = match["key"].decode()
    secret = keys.get(key_id)
    if secret is None:
        raise Rejected(f"signed with key {key_id!r}, which this host does not trust "
                       "(never installed, or revoked)")
    mac = _mac(secret, key_id, match["nonce"].decode(), name, body)
    signed_for = match["job"].decode("utf-8", "replace")
    if not hmac.compare_digest(mac.encode(), match["mac"]):
        if signed_for != name:
            raise Rejected(f"the signature is for job {signed_for!r}, not {name!r}: "
                           "a renamed or copied file must be signed again")
        raise Rejected("the signature does not match the content: the file was changed "
                       "after it was signed")
    if signed_for != name:  # the MAC covers the real name; the text must not mislead
        raise Rejected("the signature line is damaged: sign the file again")
    return body, f"hmac:{mac}"


# ---- TOTP (RFC 6238) -----------------------------------------------------------------------


def hotp(secret: bytes, counter: int, digits: int = TOTP_DIGITS) -> str:
    """RFC 4226: the code of ``counter`` (SHA-1, dynamic truncation)."""
    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def totp(secret: bytes, now: float) -> str:
    """RFC 6238: the code an authenticator app shows at ``now``."""
    return hotp(secret, int(now // TOTP_STEP))


def _totp_token(code: str, keys: Mapping[str, bytes], now: float, window: float,
                store: TokenStore) -> str:
    """The token of an unused enrolled code valid at ``now``; codes up to ``window`` old count
    (sync takes time), and one step ahead (clocks drift)."""
    if not keys:
        raise Rejected("the job carries `otp:`, but no authenticator app is enrolled on this "
                       "host (filerexec keygen --totp)")
    newest, oldest = int(now // TOTP_STEP) + 1, int((now - window) // TOTP_STEP)
    seen_used = False
    for key_id in sorted(keys):
        for counter in range(newest, oldest - 1, -1):
            if hmac.compare_digest(hotp(keys[key_id], counter), code):
                token = f"totp:{key_id}:{counter}"
                if not store.token_used(token):
                    return token
                seen_used = True
    if seen_used:
        raise Rejected("this code was already used on this host: put a fresh code in `otp:`")
    raise Rejected(f"the code in `otp:` is wrong or older than {window:g} s: put a fresh "
                   "code in (sync may have taken too long)")


def otpauth_uri(secret: bytes, account: str, issuer: str = APP) -> str:
    """What an authenticator app scans: ``otpauth://totp/ISSUER:ACCOUNT?secret=…``."""
    label = urllib.parse.quote(f"{issuer}:{account}")
    # SHA1, 6 digits, 30 s are the defaults every app assumes: left out, the QR code is smaller.
    query = urllib.parse.urlencode({
        "secret": base64.b32encode(secret).decode().rstrip("="), "issuer": issuer})
    return f"otpauth://totp/{label}?{query}"


# ---- admitting a job file -------------------------------------------------------------------


def bind(spec: JobSpec, token: str) -> JobSpec:
    """The spec whose digest includes the token: a new signature or code is a new request."""
    digest = hashlib.sha256(f"{spec.digest}\n{token}".encode()).hexdigest()
    return replace(spec, digest=digest)


def admit(data: bytes, name: str, host: str, keys: Keyring, store: TokenStore, now: float,
          window: float, allow: Sequence[str] = (), labels: Sequence[str] = ()) -> JobSpec:
    """Authenticate, parse and check a job file for ``host``; record its token.

    Raises Rejected or SpecError. A job addressed to other hosts is returned as
    parsed, unchecked: it is none of this host's business and spends no token here.
    """
    fingerprint = hashlib.sha256(data).hexdigest()
    body, line = split_signature(data)
    if line is not None:
        try:
            body, token = verify_signature(data, name, keys.hmac)  # before any parsing
        except Rejected:
            # Parsed only to stay quiet about other hosts' jobs (signed with their keys).
            if (elsewhere := _elsewhere(body, name, host, labels)) is not None:
                return elsewhere
            raise
    spec = parse_job(body, name)
    if not spec.targets(host, labels):
        return spec
    if line is None:
        if spec.otp is None:
            raise Rejected(NOT_SIGNED)
        token = _reread_token(spec.otp, name, fingerprint, keys.totp, store) or _totp_token(
            spec.otp, keys.totp, now, window, store)
    problem = policy_problem(spec, allow)
    if problem:
        raise Rejected(problem)
    if store.token_used(token):
        if store.accepted(name) != (token, fingerprint):
            raise Rejected("this signature was already used on this host (a replay): sign "
                           "the file again to run it again")
    else:
        store.accept(name, token, fingerprint, now)
    return bind(spec, token)


def _elsewhere(body: bytes, name: str, host: str, labels: Sequence[str]) -> JobSpec | None:
    try:
        spec = parse_job(body, name)
    except SpecError:
        return None
    return None if spec.targets(host, labels) else spec


def _reread_token(code: str | None, name: str, fingerprint: str, keys: Mapping[str, bytes],
                  store: TokenStore) -> str | None:
    """The token of a code-carrying file still in place, whatever its age (a re-read)."""
    last = store.accepted(name)
    if code is None or last is None or last[1] != fingerprint:
        return None
    match = re.fullmatch(r"totp:([A-Za-z0-9._-]+):([0-9]+)", last[0])
    if match is None or match[1] not in keys:  # a revoked secret no longer vouches for it
        return None
    return last[0] if hmac.compare_digest(hotp(keys[match[1]], int(match[2])), code) else None
