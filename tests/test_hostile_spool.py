"""Whatever arrives in the spool, the daemon keeps running and never leaves the spool.

Each test plays one attack from issue #17 against a real daemon: jobs/ replaced by a
link (to a folder outside, to /, to itself), jobs/ unreadable, folders nested past
PATH_MAX, a sub-folder that cannot be listed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from filerexec.spool import MAX_PATH, Unavailable, list_jobs
from tests.conftest import Host, pid_alive
from tests.util import wait_for

# Tests run as root, and root lists a mode-000 folder. The daemon is started without
# the capabilities that let root ignore permissions, so it meets a real EACCES.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None,
                                   reason="needs setpriv (util-linux)")


def unavailable_because(host: Host, words: str) -> str:
    """Wait for host.yaml to say "spool unavailable" with ``words`` in its reason."""
    def check() -> str | None:
        doc = host.heartbeat()
        reason = str(doc.get("reason", ""))
        return reason if doc.get("state") == "spool unavailable" and words in reason else None
    try:
        return wait_for(check, what=f"host.yaml: spool unavailable ({words})")
    except AssertionError:
        raise AssertionError(f"host.yaml: {host.heartbeat()}\n"
                             f"{host.log.read_text()[-2000:]}") from None


def serving(host: Host) -> None:
    wait_for(lambda: host.heartbeat().get("state") == "serving", what="host.yaml: serving")


@pytest.mark.slow
def test_jobs_replaced_by_a_link_is_unavailable_nothing_read_run_or_killed(
        host: Host, tmp_path: Path) -> None:
    host.start()
    host.drop("live.yaml", "commands: sleep 60\n")
    pid = host.wait_state("live", "running")["pid"]
    elsewhere, marker = tmp_path / "elsewhere", tmp_path / "ran-from-outside"
    elsewhere.mkdir()
    (elsewhere / "outside.yaml").write_text(f"commands: touch {marker}\n")
    jobs = host.spool / "jobs"
    jobs.rename(host.spool / "jobs.real")
    jobs.symlink_to(elsewhere)
    reason = unavailable_because(host, "symbolic link")
    assert "make jobs/ a real folder" in reason
    assert not marker.exists() and host.status("outside") is None
    assert pid_alive(pid) and (host.status("live") or {})["state"] == "running"
    # The real folder comes back: serving again, the running job untouched, its kill works.
    jobs.unlink()
    (host.spool / "jobs.real").rename(jobs)
    serving(host)
    assert (host.status("live") or {})["state"] == "running"
    (jobs / "live.yaml").unlink()
    assert host.wait_state("live", "killed")["reason"] == "job file deleted"
    assert not marker.exists()


@pytest.mark.parametrize("target", ["/", "self"])
def test_jobs_a_link_to_root_or_itself_at_start(host: Host, target: str) -> None:
    jobs = host.spool / "jobs"
    jobs.rmdir()
    jobs.symlink_to(jobs if target == "self" else Path(target))
    host.start()
    unavailable_because(host, "symbolic link")
    assert host.proc is not None and host.proc.poll() is None
    assert {p.name for p in host.status_dir.iterdir()} <= {"host.yaml", "index.md", "index.html"}
    jobs.unlink()
    jobs.mkdir()
    serving(host)
    host.drop("ok.yaml", "commands: 'true'\n")
    host.wait_state("ok", "succeeded")


@needs_setpriv
def test_unreadable_jobs_folder_is_unavailable_then_serves(host: Host) -> None:
    host.prefix = NO_DAC if os.geteuid() == 0 else []
    jobs = host.spool / "jobs"
    (jobs / "early.yaml").write_text("commands: 'true'\n")
    jobs.chmod(0)
    try:
        host.start()
        unavailable_because(host, "Permission denied")
        assert host.proc is not None and host.proc.poll() is None
    finally:
        jobs.chmod(0o755)
    serving(host)
    host.wait_state("early", "succeeded")


@pytest.mark.slow
@needs_setpriv
def test_unreadable_sub_folder_is_refused_and_its_jobs_are_not_killed(host: Host) -> None:
    host.prefix = NO_DAC if os.geteuid() == 0 else []
    host.start()
    host.drop("team/long.yaml", "commands: sleep 60\n")
    pid = host.wait_state("team/long", "running")["pid"]
    team = host.spool / "jobs" / "team"
    team.chmod(0)
    try:
        refused = wait_for(lambda: {r["file"]: r["reason"] for r in
                                    host.heartbeat().get("refused", [])}.get("team/"),
                           what="team/ under refused:")
        assert "Permission denied" in refused
        host.drop("after.yaml", "commands: 'true'\n")  # the daemon goes on
        host.wait_state("after", "succeeded")
        assert pid_alive(pid) and (host.status("team/long") or {})["state"] == "running"
    finally:
        team.chmod(0o755)
    wait_for(lambda: "refused" not in host.heartbeat(), what="team/ no longer refused")
    (team / "long.yaml").unlink()  # listed again: deleting it kills it, as ever
    assert host.wait_state("team/long", "killed")["reason"] == "job file deleted"


def _nest(top: Path, depth: int, width: int) -> Path:
    """``depth`` folders of ``width``-character names below ``top``, made by descriptors
    (the path is too long for any call that takes a path)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        name = chr(ord("a") + i % 26) * width
        os.mkdir(name, dir_fd=fd)
        below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    job = os.open("deep.yaml", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(job, b"commands: touch /tmp/never\n")
    os.close(job)
    os.close(fd)
    return top / ("a" * width)


def test_folders_nested_past_path_max_are_refused_and_the_daemon_serves(host: Host) -> None:
    first = _nest(host.spool / "jobs", 22, 200)
    host.drop("ok.yaml", "commands: 'true'\n")
    host.start()
    host.wait_state("ok", "succeeded")
    refused = {r["file"]: r["reason"] for r in host.heartbeat().get("refused", [])}
    deep = [rel for rel in refused if rel.startswith(first.name + "/")]
    assert len(deep) == 1 and f"longer than {MAX_PATH} bytes" in refused[deep[0]], refused
    assert host.proc is not None and host.proc.poll() is None
    assert not Path("/tmp/never").exists()


def test_listing_errors_are_refusals_not_crashes(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "a.yaml").write_text("commands: ls\n")
    deep = jobs / "/".join(["d"] * 40)
    deep.mkdir(parents=True)
    (deep / "x.yaml").write_text("commands: ls\n")
    listing = list_jobs(jobs)
    assert list(listing.jobs) == ["a"]
    (folder,) = listing.refused
    assert folder.count("/") == 33 and "folders deep" in listing.refused[folder]
    assert listing.holds("/".join(["d"] * 40) + "/x") and not listing.holds("a")
    for make, words in ((lambda: jobs.rename(tmp_path / "gone"), "missing"),
                        (lambda: jobs.symlink_to(tmp_path / "gone"), "symbolic link"),
                        (lambda: (jobs.unlink(), jobs.write_text("")), "not a folder")):
        make()
        with pytest.raises(Unavailable, match=words):
            list_jobs(jobs)
