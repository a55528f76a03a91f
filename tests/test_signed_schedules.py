"""Signed jobs keep their guarantees with schedules and retries (issue 16, item 5): a signed
or phone-code version accepted once runs its later slots and retries without a new
signature; a replayed or re-dropped signature is still refused; a revoked key stops it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from filerexec import keystore
from filerexec.signing import sign, totp
from tests.conftest import Host
from tests.test_daemon import started_runs
from tests.util import wait_for


@pytest.fixture
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir()
    config.write_text("require_signature: true\n")
    monkeypatch.setenv("FILEREXEC_CONFIG", str(config))  # the daemon inherits it
    keys = config.parent / "keys"
    keystore.create_key(keys, "laptop")
    return keys


def signed(key_dir: Path, text: str, name: str, nonce: str, key: str = "laptop") -> str:
    secret = keystore.load(key_dir).hmac[key]
    return sign(text.encode(), name, key, secret, nonce).decode()


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_signed_slots_and_retries_run_until_the_key_is_revoked(
        host: Host, key_dir: Path, tmp_path: Path) -> None:
    ticks, tries = tmp_path / "ticks", tmp_path / "tries"
    host.start()
    host.drop("tick.yaml", signed(key_dir, f"commands: echo t >> {ticks}\nevery: 2s\n",
                                  "tick", "n1"))
    # Fails twice, then succeeds: each retry runs on the one signature.
    host.drop("try.yaml", signed(key_dir, f"commands: echo x >> {tries}; "
                                 f"[ $(wc -l < {tries}) -ge 3 ]\nretry: {{max: 3, delay: 1s}}\n",
                                 "try", "n2"))
    wait_for(lambda: len(lines(ticks)) >= 3, timeout=20, what="three slots on one signature")
    doc = host.wait_state("try", "succeeded", timeout=20)
    assert doc["attempt"] == "3 of 4" and started_runs(host, "try") == 3
    host.stop()  # a clean restart re-reads the files: no replay, the slots go on
    host.start()
    before = started_runs(host, "tick")
    wait_for(lambda: started_runs(host, "tick") >= before + 2, timeout=20,
             what="two more slots after a restart")

    # The same bytes dropped again after a deletion: a replay, refused even for a schedule.
    original = (host.spool / "jobs" / "tick.yaml").read_text()
    (host.spool / "jobs" / "tick.yaml").unlink()
    wait_for(lambda: (host.status("tick") or {}).get("deleted"), what="the deletion")
    runs = started_runs(host, "tick")
    host.drop("tick.yaml", original)
    doc = host.wait_state("tick", "rejected")
    assert "replay" in doc["reason"] and "next" not in doc
    host.drop("tick.yaml", signed(key_dir, f"commands: echo t >> {ticks}\nevery: 2s\n",
                                  "tick", "n3"))  # signed again: scheduled again
    wait_for(lambda: started_runs(host, "tick") >= runs + 2, timeout=20,
             what="the newly signed version's slots")

    # Revoked: the next slot is refused and the schedule stops.
    keystore.create_key(key_dir, "desk")
    host.drop("tock.yaml", signed(key_dir, "commands: 'true'\nevery: 2s\n", "tock", "n4",
                                  key="desk"))
    wait_for(lambda: started_runs(host, "tock") >= 1, what="tock's first slot")
    (key_dir / "laptop.key").unlink()
    doc = host.wait_state("tick", "rejected", timeout=10)
    assert "does not trust" in doc["reason"] and "next" not in doc
    stopped, tocks = started_runs(host, "tick"), started_runs(host, "tock")
    # tock, signed with a key still trusted, keeps its slots: two of them pass meanwhile.
    wait_for(lambda: started_runs(host, "tock") >= tocks + 2, timeout=20, what="tock's slots")
    assert started_runs(host, "tick") == stopped
    assert (host.status("tick") or {})["state"] == "rejected"


@pytest.mark.slow
def test_a_phone_code_job_runs_its_slots_until_the_phone_is_unenrolled(
        host: Host, key_dir: Path, tmp_path: Path) -> None:
    path, secret = keystore.create_totp(key_dir, "phone")
    ticks = tmp_path / "ticks"
    host.start()
    code = totp(secret, time.time())
    host.drop("tick.yaml", f"commands: echo t >> {ticks}\nevery: 2s\notp: {code}\n")
    wait_for(lambda: len(lines(ticks)) >= 3, timeout=20, what="three slots on one code")
    host.drop("again.yaml", f"commands: echo t >> {ticks}\nevery: 2s\notp: {code}\n")
    assert "already used" in host.wait_state("again", "rejected")["reason"]
    path.unlink()  # the phone is no longer enrolled
    doc = host.wait_state("tick", "rejected", timeout=10)
    assert "next" not in doc
