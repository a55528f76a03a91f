"""Security end to end: hostile files, signed jobs, phone codes, the allow list, root.

Every test here goes through a real `filerexec serve` (tests/conftest.py Host).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from filerexec import cli, keystore, safefile
from filerexec.config import Settings
from filerexec.daemon import Daemon
from filerexec.machine import Job, State
from filerexec.names import Kind, classify
from filerexec.render import job_status
from filerexec.signing import sign, totp
from filerexec.spool import scan
from filerexec.writer import StatusDir
from tests.conftest import Host
from tests.util import index_states, wait_for

TOUCH = "commands: touch {marker}\n"


def heartbeat(host: Host) -> dict[str, Any]:
    doc = yaml.safe_load((host.status_dir / "host.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


# ---- hostile files: never run, never block, never escape ------------------------------


def test_hostile_files_are_refused_and_nothing_is_written_outside_status_host(
        host: Host, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    jobs = host.spool / "jobs"
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    target = outside / "target.yaml"
    target.write_text(TOUCH.format(marker=marker))
    (outside / "dir" / "x.yaml").write_text(TOUCH.format(marker=marker))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files_under(outside)}

    # The synced status folder is writable by others too: a link planted there must not
    # carry the host's writes elsewhere.
    host.status_dir.mkdir(parents=True)
    os.symlink(outside / "dir", host.status_dir / "nightly")
    host.start()
    host.drop("nightly/db.yaml", "commands: 'true'\n")
    os.symlink(target, jobs / "link.yaml")
    os.link(target, jobs / "hard.yaml")
    os.mkfifo(jobs / "fifo.yaml")
    has_device = True
    try:
        os.mknod(jobs / "dev.yaml", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        has_device = False  # no CAP_MKNOD here: the mode check is the same as for a FIFO
    os.symlink(outside / "dir", jobs / "sub")  # a symlinked folder is never followed
    host.drop("big.yaml", "commands: echo big\n" + "#" * (65 * 1024) + "\n")
    host.drop("deep.yaml", "commands: " + "[" * 60 + "x" + "]" * 60 + "\n")
    host.drop("bomb.yaml", 'a: &a ["lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\n'
                           "c: &c [*b,*b,*b,*b,*b,*b,*b,*b]\ncommands: *c\n")
    host.drop("pytag.yaml", f"commands: !!python/object/apply:os.system ['touch {marker}']\n")
    host.drop("anytag.yaml", f"commands: !sh touch {marker}\n")
    host.drop("bad\x01name.yaml", TOUCH.format(marker=marker))
    host.drop("a\\..\\..\\escape.yaml", TOUCH.format(marker=marker))
    host.drop("host.yaml", TOUCH.format(marker=marker))  # would overwrite the heartbeat
    host.drop("index.md/x.yaml", TOUCH.format(marker=marker))  # would block index.md
    host.drop("last.yaml", "commands: echo alive\n")
    host.wait_state("last", "succeeded")  # never blocked, never crashed

    expect = {
        "link": "symbolic link", "hard": "hard link", "fifo": "not a plain file",
        "big": "bytes", "deep": "nested too deeply", "bomb": "anchors and aliases",
        "pytag": "tags", "anytag": "tags",
    }
    if has_device:
        expect["dev"] = "not a plain file"
    for name, words in expect.items():
        doc = host.wait_state(name, "invalid")
        assert words in doc["reason"], (name, doc["reason"])
    refused = wait_for(lambda: {r["file"]: r["reason"] for r in heartbeat(host).get("refused", [])}
                       if len(heartbeat(host).get("refused", [])) == 4 else None,
                       what="host.yaml to list the refused names")
    assert "control character" in refused["bad\x01name.yaml"]
    assert "backslash" in refused["a\\..\\..\\escape.yaml"]
    assert "reserved" in refused["host.yaml"] and "reserved" in refused["index.md/x.yaml"]
    assert heartbeat(host)["host"] == "testhost" and "job" not in heartbeat(host)
    wait_for(lambda: "last" in index_states((host.status_dir / "index.md").read_text()),
             what="index.md")
    host.stop()

    assert not marker.exists()
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files_under(outside)} == before
    written = files_under(host.spool) - files_under(jobs)
    assert written and all(host.status_dir in p.parents for p in written), written
    assert not [p for p in host.status_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    assert "not a plain folder" in host.log.read_text()  # nightly/db's status: not written
    # Outside the spool the host writes only its state folder (and the test's daemon log).
    assert {p.name for p in tmp_path.iterdir()} <= {
        "spool", "state", "outside", "config", "daemon-testhost.log"}


def test_symlinked_folder_is_not_followed_by_scan(tmp_path: Path) -> None:
    jobs, elsewhere = tmp_path / "jobs", tmp_path / "elsewhere"
    jobs.mkdir()
    elsewhere.mkdir()
    (elsewhere / "x.yaml").write_text("commands: ls\n")
    os.symlink(elsewhere, jobs / "sub")
    os.symlink(elsewhere, jobs / "evil.yaml")  # a link to a folder, named like a job
    listing = scan(jobs)
    assert listing is not None and "sub/x" not in listing.jobs
    assert stat.S_ISLNK(listing.jobs["evil"].mode)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/x", "a\x01", "a\\..\\b", "host",
                                  "HOST", "index.md/x", "b.yaml/x", "a.log/x", "", "a//b"])
def test_status_paths_are_built_only_from_safe_names(tmp_path: Path, name: str) -> None:
    assert classify(f"{name}.yaml").kind is not Kind.JOB
    with pytest.raises(ValueError, match="not a safe job name"):
        StatusDir(tmp_path, "h").job_path(name)
    with pytest.raises(ValueError):
        StatusDir(tmp_path, "h").log_path(name)


@pytest.mark.parametrize("dir_fd", [True, False])  # False: the path check Windows uses
def test_status_writes_and_removals_never_pass_through_a_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dir_fd: bool) -> None:
    monkeypatch.setattr(safefile, "_DIR_FD", dir_fd)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "db.yaml").write_text("precious")
    status = StatusDir(tmp_path / "spool", "h")
    status.root.mkdir(parents=True)
    os.symlink(outside, status.root / "nightly")
    with pytest.raises(OSError, match="symbolic link"):
        status.write_job(Job("nightly/db"))
    status.remove_job("nightly/db")
    assert [p.read_text() for p in outside.iterdir()] == ["precious"]
    # The host's own folder replaced by a link: refused as well.
    status.root.rename(tmp_path / "moved")
    os.symlink(outside, status.root)
    with pytest.raises(OSError):
        status.write_host({"host": "h"})
    assert [p.name for p in outside.iterdir()] == ["db.yaml"]


def test_nested_names_like_the_hosts_files_are_fine(tmp_path: Path) -> None:
    status = StatusDir(tmp_path, "h")
    assert status.job_path("x/host") == tmp_path / "status" / "h" / "x" / "host.yaml"
    assert status.job_path("index") == tmp_path / "status" / "h" / "index.yaml"


# ---- no secrets in the synced folder ---------------------------------------------------


def test_status_files_hold_no_environment_values(host: Host) -> None:
    host.start()
    host.drop("env.yaml", "commands: 'true'\nenv: {API_TOKEN: s3cr3t-value-42}\n")
    host.wait_state("env", "succeeded")
    wait_for(lambda: "env" in index_states((host.status_dir / "index.md").read_text()),
             what="index.md")
    host.stop()  # nothing is being written (a temp file listed, then renamed, raced the read)
    for path in files_under(host.status_dir):
        assert b"s3cr3t-value-42" not in path.read_bytes(), path
    spec_env = Job("env", state=State.SUCCEEDED)
    assert "env" not in job_status(spec_env, "h")


# ---- running as root ----------------------------------------------------------------------


def test_root_is_warned_about_in_the_log_and_host_yaml(host: Host) -> None:
    host.start()
    warnings = heartbeat(host).get("warnings") or []
    if os.geteuid() == 0:
        assert any("root" in w for w in warnings)
        assert "SECURITY WARNING: running as root" in host.log.read_text()
    else:
        assert not any("root" in w for w in warnings)


def test_root_warning_whatever_user_runs_the_tests(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for uid, warned in ((0, True), (1000, False)):
        monkeypatch.setattr(os, "geteuid", lambda uid=uid: uid)
        daemon = Daemon(Settings(spool=tmp_path / "spool", host="h",
                                 state_dir=tmp_path / "s", key_dir=tmp_path / "k"))
        daemon._check_setup()
        assert any("running as root" in w for w in daemon.warnings) is warned


def test_keys_inside_the_spool_are_warned_about(tmp_path: Path) -> None:
    daemon = Daemon(Settings(spool=tmp_path, host="h", state_dir=tmp_path / "s",
                             key_dir=tmp_path / "jobs" / "keys"))
    daemon._check_setup()
    assert any("inside the synced folder" in w for w in daemon.warnings)


# ---- signed jobs and phone codes --------------------------------------------------------


@pytest.fixture
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir()
    config.write_text("")  # a config file named by FILEREXEC_CONFIG must exist
    monkeypatch.setenv("FILEREXEC_CONFIG", str(config))  # the daemon inherits it
    return config.parent / "keys"


def signed(key_dir: Path, text: str, name: str, nonce: str, key: str = "laptop") -> str:
    secret = keystore.load(key_dir).hmac.get(key, b"z" * 32)
    return sign(text.encode(), name, key, secret, nonce).decode()


@pytest.mark.slow  # 4-8 s: kept out of the inner loop
def test_only_signed_jobs_run_and_replays_are_refused(host: Host, key_dir: Path,
                                                      tmp_path: Path) -> None:
    keystore.create_key(key_dir, "laptop")
    out = tmp_path / "out.txt"
    job = f"commands: echo run >> {out}\n"
    host.start("--require-signature")
    host.drop("a.yaml", signed(key_dir, job, "a", "n1"))
    host.wait_state("a", "succeeded")
    host.drop("plain.yaml", job)
    host.drop("tampered.yaml", signed(key_dir, job, "tampered", "n2").replace("echo", "eval"))
    host.drop("copy.yaml", signed(key_dir, job, "a", "n3"))
    host.drop("stranger.yaml", signed(key_dir, job, "stranger", "n4", key="stolen"))
    reasons = {name: host.wait_state(name, "rejected")["reason"]
               for name in ("plain", "tampered", "copy", "stranger")}
    assert "not signed" in reasons["plain"]
    assert "changed after it was signed" in reasons["tampered"]
    assert "for job 'a', not 'copy'" in reasons["copy"]
    assert "'stolen'" in reasons["stranger"]

    # A restart re-reads the file: neither a replay nor a new run.
    host.stop()
    host.start("--require-signature")
    host.drop("b.yaml", signed(key_dir, "commands: 'true'\n", "b", "n5"))
    host.wait_state("b", "succeeded")
    assert host.status("a")["state"] == "succeeded"  # type: ignore[index]

    # Deleted, then the same bytes dropped again: a replay. Signed again: runs again.
    original = (host.spool / "jobs" / "a.yaml").read_text()
    (host.spool / "jobs" / "a.yaml").unlink()
    wait_for(lambda: (host.status("a") or {}).get("deleted"), what="the deletion")
    host.drop("a.yaml", original)
    assert "replay" in host.wait_state("a", "rejected")["reason"]
    host.drop("a.yaml", signed(key_dir, job, "a", "n6"))  # same content, new signature
    host.wait_state("a", "succeeded")
    assert out.read_text().split() == ["run", "run"]

    # Revoked: the key's file is removed, and its next job is refused.
    (key_dir / "laptop.key").unlink()
    host.drop("c.yaml", sign(b"commands: 'true'\n", "c", "laptop", b"k" * 32, "n7").decode())
    assert "does not trust" in host.wait_state("c", "rejected")["reason"]


def test_phone_code_runs_once_per_host(host: Host, key_dir: Path) -> None:
    _, secret = keystore.create_totp(key_dir, "phone")
    # Set in the config file this time, as an owner would.
    (key_dir.parent / "config.yaml").write_text("require_signature: true\ntotp_window: 2m\n")
    host.start()
    code = totp(secret, time.time())
    host.drop("df.yaml", f"commands: echo from-phone\notp: {code}\n")
    host.wait_state("df", "succeeded")
    host.drop("again.yaml", f"commands: echo again\notp: {code}\n")
    assert "already used" in host.wait_state("again", "rejected")["reason"]
    host.drop("wrong.yaml", f"commands: echo x\notp: {int(code) ^ 1:06d}\n")
    assert "wrong or older" in host.wait_state("wrong", "rejected")["reason"]


def test_allow_list_rejects_other_commands_naming_them(host: Host) -> None:
    host.start("--allow", "echo *", "--allow", "true")
    host.drop("ok.yaml", "commands: [echo hi, 'true']\n")
    host.drop("no.yaml", "commands: [echo hi, reboot now]\n")
    host.wait_state("ok", "succeeded")
    doc = host.wait_state("no", "rejected")
    assert doc["reason"] == "the command 'reboot now' is not in this host's allow list"
    assert "runs" not in doc or doc["runs"] == 0


# ---- the command line ---------------------------------------------------------------------


def test_keygen_and_sign_commands(key_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keygen", "--name", "laptop"]) == cli.OK
    assert stat.S_IMODE((key_dir / "laptop.key").stat().st_mode) == 0o600
    assert cli.main(["keygen", "--name", "laptop"]) == cli.FAILURE  # never overwritten
    job = tmp_path / "spool" / "jobs" / "nightly" / "db.yaml"
    job.parent.mkdir(parents=True)
    job.write_text("commands: echo db\n")
    assert cli.main(["sign", str(job)]) == cli.OK
    first = job.read_text()
    assert "key=laptop" in first and first.endswith("job=nightly/db\n")
    assert cli.main(["sign", str(job)]) == cli.OK  # signing again: a new nonce, one line
    assert job.read_text() != first and job.read_text().count("filerexec-signature") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("commands: [\n")
    assert cli.main(["sign", str(bad)]) == cli.FAILURE
    assert cli.main(["validate", str(job)]) == cli.OK
    capsys.readouterr()
    assert cli.main(["keygen", "--totp", "--name", "phone"]) == cli.OK
    out = capsys.readouterr().out
    assert "otpauth://totp/filerexec%3Aphone" in out and "█" in out  # the URI and a QR code


# ---- the threat model is written down --------------------------------------------------


def test_readme_states_what_the_defences_do_not_stop() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    for words in ("Deletion is unauthenticated", "compromised host account defeats everything",
                  "sync provider reads the commands", "A phone code is a race",
                  "require_signature: true", "otp: 123456", "allow:", "warnings:",
                  "Keeping secrets out of the synced folder", "Sign again to run again"):
        assert words in section, words
