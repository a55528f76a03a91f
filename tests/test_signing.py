"""Signed jobs, phone codes, replay memory, the allow list and key files, without a daemon."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from filerexec import keystore
from filerexec.ledger import Ledger
from filerexec.machine import Job
from filerexec.policy import allowed, policy_problem
from filerexec.signing import (
    Keyring,
    Rejected,
    admit,
    hotp,
    otpauth_uri,
    sign,
    split_signature,
    totp,
    verify_signature,
)
from filerexec.spec import SpecError, parse_job

KEY = b"k" * 32
PHONE = b"12345678901234567890"  # RFC 6238's SHA-1 test secret
NOW = 1_800_000_000.0
JOB = b"commands: echo hi\n"


def signed(data: bytes = JOB, name: str = "backup", key_id: str = "laptop",
           nonce: str = "n1") -> bytes:
    return sign(data, name, key_id, KEY, nonce)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite")


def keys(**extra: bytes) -> Keyring:
    return Keyring({"laptop": KEY, **extra}, {"phone": PHONE})


# ---- the signature line ----------------------------------------------------------------


def test_signed_file_is_valid_yaml_with_a_trailing_comment() -> None:
    data = signed()
    assert data.startswith(JOB)
    assert data.count(b"\n") == 2 and data.splitlines()[-1].startswith(b"# filerexec-signature")
    assert parse_job(data, "backup").commands == ("echo hi",)
    assert verify_signature(data, "backup", {"laptop": KEY})[0] == JOB


def test_signing_again_replaces_the_line_and_adds_a_missing_newline() -> None:
    once = signed(b"commands: ls")  # no final newline: one is added before the line
    assert once.startswith(b"commands: ls\n#")
    again = sign(once, "backup", "laptop", KEY, "n2")
    assert again.count(b"filerexec-signature") == 1 and b"nonce=n2" in again


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d.replace(b"echo hi", b"rm -rf ~"), "changed after it was signed"),
    (lambda d: b"env: {X: y}\n" + d, "changed after it was signed"),
    (lambda d: d.replace(b"key=laptop", b"key=stolen"), "does not trust"),
    (lambda d: d.replace(b"hmac=", b"hmac=0"), "damaged"),
    (lambda d: d + b"commands: evil\n", "not signed"),  # text after the signature line
    (lambda d: split_signature(d)[0], "not signed"),
])
def test_tampered_unknown_key_damaged_and_unsigned_are_rejected(change: object,
                                                                words: str) -> None:
    assert callable(change)
    with pytest.raises(Rejected, match=words):
        verify_signature(change(signed()), "backup", {"laptop": KEY})


def test_renamed_copy_is_rejected_naming_both_jobs() -> None:
    with pytest.raises(Rejected, match="for job 'backup', not 'backup2'"):
        verify_signature(signed(), "backup2", {"laptop": KEY})
    # The job= text is only for the message: the MAC covers the real name.
    forged = signed().replace(b"job=backup", b"job=backup2")
    with pytest.raises(Rejected):
        verify_signature(forged, "backup2", {"laptop": KEY})


def test_key_id_is_part_of_the_mac() -> None:
    data = signed().replace(b"key=laptop", b"key=other")
    with pytest.raises(Rejected, match="changed"):
        verify_signature(data, "backup", {"laptop": KEY, "other": KEY})


# ---- TOTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "code"), [
    (59, "287082"), (1111111109, "081804"), (1234567890, "005924"), (2000000000, "279037")])
def test_totp_matches_rfc_6238_vectors(when: int, code: str) -> None:
    assert totp(PHONE, when) == code
    assert hotp(PHONE, when // 30, digits=8)[-6:] == code


def test_otpauth_uri() -> None:
    uri = otpauth_uri(PHONE, "phone@office")
    assert uri.startswith("otpauth://totp/filerexec%3Aphone%40office?secret=GEZDGNBVGY3TQOJQ")
    assert "issuer=filerexec" in uri


def otp_job(code: str, extra: str = "") -> bytes:
    return f"commands: df -h\notp: {code}\n{extra}".encode()


def test_code_accepted_within_window_once_per_host(ledger: Ledger) -> None:
    old = totp(PHONE, NOW - 100)
    spec = admit(otp_job(old), "df", "h", keys(), ledger, NOW, window=120)
    assert spec.otp == old and spec.commands == ("df -h",)
    with pytest.raises(Rejected, match="already used"):
        admit(otp_job(old), "other", "h", keys(), ledger, NOW, window=120)
    with pytest.raises(Rejected, match="wrong or older than 60 s"):
        admit(otp_job(totp(PHONE, NOW - 100), "run: 2\n"), "x", "h", keys(), ledger, NOW, 60)


def test_code_in_a_file_still_in_place_survives_its_window(ledger: Ledger) -> None:
    data = otp_job(totp(PHONE, NOW))
    first = admit(data, "df", "h", keys(), ledger, NOW, window=60)
    later = admit(data, "df", "h", keys(), ledger, NOW + 3600, window=60)  # restart, touch
    assert later.digest == first.digest
    # The same code with other content is not the same file.
    with pytest.raises(Rejected):
        admit(data + b"timeout: 5m\n", "df", "h", keys(), ledger, NOW + 3600, window=60)
    # A revoked secret vouches for nothing, not even a file still in place.
    with pytest.raises(Rejected):
        admit(data, "df", "h", Keyring({}, {}), ledger, NOW + 3600, window=60)


def test_fresh_code_is_a_new_run_request_but_not_in_the_spec_digest(ledger: Ledger) -> None:
    a = admit(otp_job(totp(PHONE, NOW)), "df", "h", keys(), ledger, NOW, 60)
    b = admit(otp_job(totp(PHONE, NOW + 30)), "df", "h", keys(), ledger, NOW + 30, 60)
    assert a.digest != b.digest
    assert parse_job(otp_job("111111"), "df").digest == parse_job(otp_job("222222"), "df").digest


def test_code_without_an_enrolled_phone_says_so(ledger: Ledger) -> None:
    with pytest.raises(Rejected, match="no authenticator app is enrolled"):
        admit(otp_job("123456"), "df", "h", Keyring({}, {}), ledger, NOW, 60)


def test_otp_must_be_six_digits() -> None:
    assert parse_job(otp_job("123 456"), "j").otp == "123456"
    with pytest.raises(SpecError, match="six-digit"):
        parse_job(otp_job("12345"), "j")


# ---- admitting: replay, re-read, re-sign, other hosts --------------------------------------


def test_replay_refused_but_the_same_file_in_place_is_not_a_replay(ledger: Ledger) -> None:
    data = signed()
    first = admit(data, "backup", "h", keys(), ledger, NOW, 60)
    assert admit(data, "backup", "h", keys(), ledger, NOW + 1, 60).digest == first.digest
    # The job's deletion is recorded: the same bytes dropped again are a replay.
    ledger.save([Job("backup", deleted=NOW + 2)])
    with pytest.raises(Rejected, match="replay"):
        admit(data, "backup", "h", keys(), ledger, NOW + 3, 60)


def test_edit_v1_v2_v1_replays_v1(ledger: Ledger) -> None:
    v1, v2 = signed(), signed(b"commands: echo two\n", nonce="n2")
    admit(v1, "backup", "h", keys(), ledger, NOW, 60)
    admit(v2, "backup", "h", keys(), ledger, NOW + 1, 60)
    with pytest.raises(Rejected, match="replay"):
        admit(v1, "backup", "h", keys(), ledger, NOW + 2, 60)


def test_replay_memory_survives_a_restart(tmp_path: Path) -> None:
    first = Ledger(tmp_path / "l.sqlite")
    admit(signed(), "backup", "h", keys(), first, NOW, 60)
    first.save([Job("backup", deleted=NOW)])
    first.close()
    with pytest.raises(Rejected, match="replay"):
        admit(signed(), "backup", "h", keys(), Ledger(tmp_path / "l.sqlite"), NOW, 60)


def test_signing_an_unchanged_file_again_is_a_new_request(ledger: Ledger) -> None:
    a = admit(signed(nonce="n1"), "backup", "h", keys(), ledger, NOW, 60)
    b = admit(signed(nonce="n2"), "backup", "h", keys(), ledger, NOW, 60)
    assert a.digest != b.digest and a.commands == b.commands


def test_other_hosts_jobs_are_not_checked_and_spend_no_token(ledger: Ledger) -> None:
    elsewhere = b"commands: ls\nhost: far\n"
    unknown = sign(elsewhere, "j", "theirs", b"x" * 32, "n")
    assert not admit(unknown, "j", "near", keys(), ledger, NOW, 60).targets("near")
    assert not admit(elsewhere, "j", "near", keys(), ledger, NOW, 60).targets("near")
    assert ledger.accepted("j") is None
    with pytest.raises(Rejected, match="does not trust"):
        admit(unknown.replace(b"host: far", b"host: near"), "j", "near", keys(), ledger,
              NOW, 60)


def test_unsigned_job_is_rejected_and_a_bad_body_is_never_parsed(ledger: Ledger) -> None:
    with pytest.raises(Rejected, match="not signed"):
        admit(JOB, "backup", "h", keys(), ledger, NOW, 60)
    # A valid signature over garbage: authenticated, then the parser reports it.
    with pytest.raises(SpecError):
        admit(signed(b"commands: [\n"), "backup", "h", keys(), ledger, NOW, 60)


# ---- the allow list ---------------------------------------------------------------------


@pytest.mark.parametrize(("command", "ok"), [
    ("backup /home", True), ("backup", False), ("df -h", True), ("uptime", True),
    ("backup x; rm -rf ~", False), ("backup $(rm -rf ~)", False), ("backup `id`", False),
    ("backup a | sh", False), ("backup a && reboot", False), ("backup > /etc/passwd", False),
    ("df -h ", True), ("rm -rf /", False), ("backup 'two words'", True),
])
def test_allow_patterns_match_whole_command_lines_not_more_commands(command: str,
                                                                   ok: bool) -> None:
    assert allowed(command, ["backup ?*", "df -h", "uptime"]) is ok


def test_policy_names_the_refused_command_and_refuses_shell_and_env() -> None:
    allow = ["echo *"]
    assert policy_problem(parse_job("commands: [echo a, echo b]", "j"), allow) is None
    problem = policy_problem(parse_job("commands: [echo a, reboot]", "j"), allow)
    assert problem == "the command 'reboot' is not in this host's allow list"
    assert "shell" in (policy_problem(parse_job("commands: echo\nshell: python3", "j"), allow)
                       or "")
    assert "PATH" in (policy_problem(parse_job("commands: echo\nenv: {PATH: /x}", "j"), allow)
                      or "")
    assert policy_problem(parse_job("commands: reboot", "j"), []) is None  # no list: any


def test_allow_list_applies_to_signed_jobs_too(ledger: Ledger) -> None:
    with pytest.raises(Rejected, match="'echo hi' is not in this host's allow list"):
        admit(signed(), "backup", "h", keys(), ledger, NOW, 60, allow=["df -h"])
    assert not ledger.token_used(f"hmac:{signed().split(b'hmac=')[1][:64].decode()}")


# ---- key files --------------------------------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes: Windows has none (os.chmod "
                    "sets only read-only); there the key folder is private by the profile "
                    "folder's access list (%LOCALAPPDATA%)")
def test_keygen_files_are_private(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    laptop = keystore.create_key(key_dir, "laptop")
    phone, _ = keystore.create_totp(key_dir, "phone")
    for path in (laptop, phone):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700


def test_keygen_files_are_named_and_revocable(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    laptop = keystore.create_key(key_dir, "laptop")
    keystore.create_key(key_dir, "ci")
    phone, secret = keystore.create_totp(key_dir, "phone")
    assert laptop.name == "laptop.key" and phone.name == "phone.totp"
    ring = keystore.load(key_dir)
    assert sorted(ring.hmac) == ["ci", "laptop"] and ring.totp == {"phone": secret}
    with pytest.raises(keystore.KeyProblem, match="exists"):
        keystore.create_key(key_dir, "laptop")
    with pytest.raises(keystore.KeyProblem, match="not a usable key name"):
        keystore.create_key(key_dir, "../escape")
    with pytest.raises(keystore.KeyProblem, match="several keys"):
        keystore.signing_key(key_dir, None)
    laptop.unlink()  # revoke
    assert sorted(keystore.load(key_dir).hmac) == ["ci"]
    assert keystore.signing_key(key_dir, None)[0] == "ci"


def test_key_dir_is_beside_the_config_file(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("FILEREXEC_CONFIG", str(tmp_path / "conf" / "config.yaml"))
    assert keystore.default_key_dir() == tmp_path / "conf" / "keys"
    monkeypatch.delenv("FILEREXEC_CONFIG")
    assert keystore.default_key_dir().parent.name == "filerexec"


def test_unusable_key_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not hex\n")
    (tmp_path / "good.key").write_text("ab" * 32)
    os.symlink(tmp_path / "good.key", tmp_path / "link.key")
    assert list(keystore.load(tmp_path).hmac) == ["good"]
