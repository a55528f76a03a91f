"""End to end through real Syncthing: a phone and two hosts share one spool.

One mesh of three peers (``phone``, ``a``, ``b``) and one ``filerexec serve``
per host serve every test in this module (peers take seconds to connect). The
phone only writes ``jobs/`` and reads ``status/`` in its own copy of the
folder, as a person would. The last test checks the whole module's history:
no conflicted copy of anything a host wrote, and every file under
``status/HOST/`` written by that host's device alone (Syncthing's own record).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Host, _kill_leftovers, pid_alive
from tests.syncthing import Mesh, unavailable_reason
from tests.util import index_states, wait_for

pytestmark = [pytest.mark.syncthing, pytest.mark.slow]

HOSTS = ("a", "b")
LABELS = {"a": ("gpu", "linux"), "b": ("linux",)}  # each host's `serve --label`s
SYNC = 60  # generous: a sync round trip is about a second here, a reconnect a few seconds


@dataclass
class Fleet:
    mesh: Mesh
    hosts: dict[str, Host]
    out: Path  # outside the synced folder: where jobs record that they ran

    @property
    def phone(self) -> Path:
        return self.mesh.folder("phone")

    def drop(self, name: str, text: str, mtime: float | None = None) -> Path:
        """Save a job file on the phone (temp file, then rename, as phone apps do)."""
        target = self.phone / "jobs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_text(text)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, target)
        return target

    def status(self, host: str, job: str, where: str = "phone") -> dict[str, Any] | None:
        """A job's status as ``where`` (by default the phone) sees it."""
        try:
            doc = yaml.safe_load((self.mesh.folder(where) / "status" / host / f"{job}.yaml")
                                 .read_text())
        except (FileNotFoundError, yaml.YAMLError):
            return None
        return doc if isinstance(doc, dict) else None

    def wait_status(self, host: str, job: str, *states: str, where: str = "phone",
                    timeout: float = SYNC, **expect: Any) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.status(host, job, where)
            if doc and doc.get("state") in states and all(
                    doc.get(k) == v for k, v in expect.items()):
                return doc
            return None
        try:
            return wait_for(check, timeout=timeout, interval=0.1,
                            what=f"{where} to read {job}@{host} as {'/'.join(states)}")
        except AssertionError:
            log = self.hosts[host].log.read_text()[-3000:]
            raise AssertionError(f"{job}@{host} as {where} sees it: {self.status(host, job, where)}"
                                 f"\nhost says: {self.status(host, job, host)}"
                                 f"\ndaemon log:\n{log}") from None

    def runs(self, job: str) -> list[str]:
        """Which hosts ran ``job`` (each run appends its host name)."""
        path = self.out / f"{job}.runs"
        return path.read_text().split() if path.exists() else []

    def record(self, job: str, extra: str = "") -> str:
        """Commands that record the run, so a test can count who ran what."""
        return f'echo "$FILEREXEC_HOST{extra}" >> {self.out / (job + ".runs")}'


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    reason = unavailable_reason()
    if reason:
        if os.environ.get("FILEREXEC_REQUIRE_SYNCTHING") == "1":
            pytest.fail(f"FILEREXEC_REQUIRE_SYNCTHING=1 but Syncthing cannot run: {reason}")
        pytest.skip(f"needs a real Syncthing in a private network namespace: {reason}")
    root = tmp_path_factory.mktemp("syncthing")
    mesh = Mesh(root, ("phone", *HOSTS))
    connect = mesh.start()
    print(f"syncthing: {len(mesh.peers)} peers connected in {connect:.1f}s")
    hosts: dict[str, Host] = {}
    try:
        for name in ("phone", *HOSTS):
            for sub in ("jobs", "status"):
                (mesh.folder(name) / sub).mkdir(exist_ok=True)
        for name in HOSTS:
            hosts[name] = Host(mesh.folder(name), root / f"state-{name}", name)
            hosts[name].start(*(f"--label={label}" for label in LABELS[name]))
        out = root / "out"
        out.mkdir()
        yield Fleet(mesh, hosts, out)
    finally:
        for h in hosts.values():
            if h.proc is not None and h.proc.poll() is None:
                h.stop()
        mesh.stop()
        _kill_leftovers(root)


def test_peers_are_confined_to_loopback(fleet: Fleet) -> None:
    assert fleet.mesh.ns.interfaces() == ["lo"]
    own = os.readlink("/proc/self/ns/net")
    for peer in fleet.mesh.peers.values():
        assert peer.proc is not None
        assert os.readlink(f"/proc/{peer.proc.pid}/ns/net") != own, peer.name
        options = peer.api("/rest/config/options")
        assert options["listenAddresses"] == [f"tcp://127.0.0.1:{peer.listen}"]
        assert not (options["globalAnnounceEnabled"] or options["localAnnounceEnabled"]
                    or options["relaysEnabled"] or options["natEnabled"]
                    or options["crashReportingEnabled"])
        assert options["urAccepted"] < 0 and options["autoUpgradeIntervalH"] == 0


def test_phone_drops_host_runs_phone_reads_status_and_log(fleet: Fleet) -> None:
    fleet.drop("hello.yaml", f"commands: echo \"hello from $FILEREXEC_HOST\"; "
                             f"{fleet.record('hello')}\nhost: a\n")
    doc = fleet.wait_status("a", "hello", "succeeded")
    assert doc["exit_code"] == 0 and doc["runs"] == 1 and doc["host"] == "a"
    log = fleet.phone / "status" / "a" / "hello.log"
    wait_for(lambda: log.exists() and "hello from a" in log.read_text(), timeout=SYNC,
             what="the phone to read the log")
    index = fleet.phone / "status" / "a" / "index.md"
    wait_for(lambda: index.exists() and index_states(index.read_text()).get("hello") ==
             "succeeded", timeout=SYNC, what="the phone to read index.md")
    # Sync-delay telemetry: the phone's mtime (synced with the file), then the host.
    modified, seen, started = (datetime.fromisoformat(doc[k])
                               for k in ("modified", "seen", "started"))
    assert modified <= seen + timedelta(seconds=1) and seen <= started
    assert seen - modified < timedelta(seconds=SYNC)
    assert fleet.runs("hello") == ["a"]


def test_phone_deletes_running_job_host_kills_tree(fleet: Fleet) -> None:
    pids = fleet.out / "tree.pids"
    fleet.drop("tree.yaml", f"commands: sleep 300 & echo $! >> {pids}; sleep 300 & "
                            f"echo $! >> {pids}; wait\nhost: a\n")
    fleet.wait_status("a", "tree", "running")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="two sleeps")
    sleeps = [int(p) for p in pids.read_text().split()]
    assert all(pid_alive(p) for p in sleeps)
    (fleet.phone / "jobs" / "tree.yaml").unlink()  # Syncthing's watcher carries it, a bit later
    doc = fleet.wait_status("a", "tree", "killed")
    assert doc["reason"] == "job file deleted" and "deleted" in doc
    wait_for(lambda: not any(pid_alive(p) for p in sleeps), what="every sleep to be gone")


def test_conflict_copy_listed_never_runs_nothing_runs_twice(fleet: Fleet) -> None:
    mesh = fleet.mesh
    fleet.drop("c.yaml", f"commands: {fleet.record('c', ':v1')}\nhost: a\n")
    fleet.wait_status("a", "c", "succeeded")
    mesh.wait_synced()
    # The phone goes offline; the job is edited on both sides. The phone's edit is
    # older, so Syncthing keeps the other version and makes the phone's a conflicted copy.
    mesh.offline("phone")
    now = time.time()
    fleet.drop("c.yaml", f"commands: {fleet.record('c', ':phone')}\nhost: a\n", mtime=now - 30)
    fleet.hosts["a"].drop("c.yaml", f"commands: {fleet.record('c', ':other')}\nhost: a\n")
    fleet.wait_status("a", "c", "succeeded", where="a", runs=2)
    mesh.online("phone")
    mesh.wait_synced()
    doc = wait_for(lambda: (d := fleet.status("a", "c")) and d.get("conflicts") and d,
                   timeout=SYNC, what="the phone to read the conflicted copy in the status")
    assert doc["state"] == "succeeded" and doc["runs"] == 2
    assert len(doc["conflicts"]) == 1 and ".sync-conflict-" in doc["conflicts"][0]
    assert doc["conflicts"] == _copies(fleet.phone, "c") == _copies(fleet.hosts["a"].spool, "c")
    copy = fleet.hosts["a"].spool / "jobs" / doc["conflicts"][0]
    assert ":phone" in copy.read_text()  # the losing edit is there, for a person to move
    # Another rescan of host a's daemon, then: the copy never ran, nothing ran twice.
    fleet.hosts["a"].drop("marker-c.yaml", "commands: 'true'\nhost: a\n")
    fleet.wait_status("a", "marker-c", "succeeded", where="a")
    assert fleet.runs("c") == ["a:v1", "a:other"]
    assert (fleet.status("a", "c", "a") or {}).get("runs") == 2
    assert not list((fleet.hosts["a"].status_dir).glob("*conflict*"))


def test_conflict_won_by_the_phone_queues_behind_the_running_version(fleet: Fleet) -> None:
    """Syncthing moves the winner over the host's file: the running job is not killed."""
    mesh, gate = fleet.mesh, fleet.out / "w.gate"
    fleet.drop("w.yaml", f"commands: {fleet.record('w', ':v1')}\nhost: a\n")
    fleet.wait_status("a", "w", "succeeded")
    mesh.wait_synced()
    mesh.offline("phone")
    fleet.hosts["a"].drop("w.yaml", f"commands: {fleet.record('w', ':other')}; "
                                    f"while [ ! -e {gate} ]; do sleep 0.1; done\nhost: a\n")
    running = fleet.wait_status("a", "w", "running", where="a")
    # The phone's edit is newer: it wins, the running version becomes the copy.
    fleet.drop("w.yaml", f"commands: {fleet.record('w', ':phone')}\nhost: a\n",
               mtime=time.time() + 5)
    mesh.online("phone")
    mesh.wait_synced()
    doc = wait_for(lambda: (d := fleet.status("a", "w")) and d.get("conflicts") and d,
                   timeout=SYNC, what="the phone to read the conflicted copy in the status")
    assert doc["state"] == "running" and doc["pid"] == running["pid"] and doc.get("queued")
    assert ":phone" in (fleet.hosts["a"].spool / "jobs" / "w.yaml").read_text()
    gate.touch()
    doc = fleet.wait_status("a", "w", "succeeded", runs=3)
    assert fleet.runs("w") == ["a:v1", "a:other", "a:phone"]


def _copies(folder: Path, job: str) -> list[str]:
    return sorted(p.name for p in (folder / "jobs").glob(f"{job}.sync-conflict-*"))


def test_fleet_host_field_decides_who_runs(fleet: Fleet) -> None:
    fleet.drop("only-a.yaml", f"commands: {fleet.record('only-a')}\nhost: a\n")
    fleet.drop("everywhere.yaml", f"commands: {fleet.record('everywhere')}\n")
    fleet.wait_status("a", "only-a", "succeeded")
    fleet.wait_status("a", "everywhere", "succeeded")
    fleet.wait_status("b", "everywhere", "succeeded")
    fleet.mesh.wait_synced()
    assert fleet.runs("only-a") == ["a"]
    assert sorted(fleet.runs("everywhere")) == ["a", "b"]
    for peer in fleet.mesh.peers:
        assert fleet.status("b", "only-a", peer) is None, peer


def test_a_job_for_a_label_runs_on_exactly_the_hosts_that_carry_it(fleet: Fleet) -> None:
    fleet.drop("for-gpu.yaml", f"commands: {fleet.record('for-gpu')}\nhost: GPU\n")
    fleet.drop("for-linux.yaml", f"commands: {fleet.record('for-linux')}\nhost: linux\n")
    fleet.drop("for-arm.yaml", f"commands: {fleet.record('for-arm')}\nhost: arm\n")
    fleet.wait_status("a", "for-gpu", "succeeded")
    fleet.wait_status("a", "for-linux", "succeeded")
    fleet.wait_status("b", "for-linux", "succeeded")
    fleet.mesh.wait_synced()  # every file is on every host: one listing more sees them all
    fleet.drop("labels-seen.yaml", "commands: 'true'\n")
    for name in HOSTS:
        fleet.wait_status(name, "labels-seen", "succeeded")
    fleet.mesh.wait_synced()
    assert fleet.runs("for-gpu") == ["a"] and fleet.runs("for-arm") == []
    assert sorted(fleet.runs("for-linux")) == ["a", "b"]
    for peer in fleet.mesh.peers:  # no host wrote anything about a job not meant for it
        assert fleet.status("b", "for-gpu", peer) is None, peer
        assert fleet.status("a", "for-arm", peer) is None and \
            fleet.status("b", "for-arm", peer) is None, peer
    for name, labels in LABELS.items():  # the phone sees each host's labels
        beat = yaml.safe_load((fleet.phone / "status" / name / "host.yaml").read_text())
        assert beat["labels"] == list(labels), name


def test_expired_job_not_run_status_says_when(fleet: Fleet) -> None:
    deadline = (datetime.now().astimezone() - timedelta(minutes=5)).replace(microsecond=0)
    fleet.drop("late.yaml", f"commands: {fleet.record('late')}\nhost: a\n"
                            f"not_after: {deadline.isoformat()}\n")
    doc = fleet.wait_status("a", "late", "expired")
    assert deadline.isoformat() in doc["reason"] and "started" not in doc
    assert fleet.runs("late") == []


def test_stignore_keeps_host_temp_files_off_the_phone(fleet: Fleet) -> None:
    # A temp file left behind (a daemon killed between write and rename) stays local.
    leftover = fleet.hosts["a"].status_dir / ".~filerexec-leftover.tmp"
    leftover.write_text("partial status\n")
    fleet.mesh.wait_synced()
    assert not (fleet.phone / "status" / "a" / leftover.name).exists()
    with pytest.raises(OSError, match="404"):  # not even in host a's own index
        fleet.mesh.peers["a"].file_info(f"status/a/{leftover.name}")
    ignores = fleet.mesh.peers["a"].api("/rest/db/ignores?folder=spool")
    assert ".~filerexec-*.tmp" in ignores["ignore"]
    leftover.unlink()


def test_zz_no_conflicted_copy_of_host_files_and_each_host_writes_only_its_own(
        fleet: Fleet) -> None:
    """After everything above: Syncthing's own record of who wrote each status file."""
    fleet.mesh.wait_synced()
    for peer in fleet.mesh.peers:
        status = fleet.mesh.folder(peer) / "status"
        assert sorted(p.name for p in status.iterdir()) == sorted(HOSTS), peer
        names = [p.relative_to(status).as_posix() for p in status.rglob("*")]
        assert names and not [n for n in names if "conflict" in n.lower()], (peer, names)
    checked = 0
    phone = fleet.mesh.peers["phone"]
    for host in HOSTS:
        writer = fleet.mesh.peers[host].short_id
        for path in sorted((fleet.phone / "status" / host).rglob("*")):
            rel = path.relative_to(fleet.phone).as_posix()
            record = phone.file_info(rel)["global"]
            assert record["modifiedBy"] == writer, (rel, record)
            assert all(v.startswith(writer + ":") for v in record["version"]), (rel, record)
            checked += 1
    assert checked >= 4  # at least host.yaml and index.md of each host
