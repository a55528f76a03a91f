"""Through real Syncthing with its default watcher delay (10 s) on the hosts: a host
that asks for a scan gets its results to the phone at once; one whose request is
refused still runs every job, says why in host.yaml, and its results arrive only after
Syncthing's own watcher delay (what every result waited before)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Host, _kill_leftovers
from tests.syncthing import Mesh, unavailable_reason
from tests.util import wait_for

pytestmark = [pytest.mark.syncthing, pytest.mark.slow]

DELAY = 10  # Syncthing's default fsWatcherDelayS


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, dict[str, Host]]]:
    reason = unavailable_reason()
    if reason:
        if os.environ.get("FILEREXEC_REQUIRE_SYNCTHING") == "1":
            pytest.fail(f"FILEREXEC_REQUIRE_SYNCTHING=1 but Syncthing cannot run: {reason}")
        pytest.skip(f"needs a real Syncthing in a private network namespace: {reason}")
    root = tmp_path_factory.mktemp("syncthing-scan")
    # No periodic rescan of the folder: only the watcher, or a scan request, finds a write.
    mesh = Mesh(root, ("phone", "a", "b"), rescan_s=3600, watcher_delays={"a": DELAY, "b": DELAY})
    mesh.start()
    hosts: dict[str, Host] = {}
    try:
        for name in mesh.peers:
            for sub in ("jobs", "status"):
                (mesh.folder(name) / sub).mkdir(exist_ok=True)
        for name, key in (("a", ""), ("b", "api_key: wrong\n")):
            config = root / f"config-{name}.yaml"
            config.write_text(f"syncthing:\n  home: {mesh.peers[name].home}\n  {key}")
            hosts[name] = Host(mesh.folder(name), root / f"state-{name}", name)
            hosts[name].start("--config", str(config))
        yield mesh, hosts
    finally:
        for h in hosts.values():
            if h.proc is not None and h.proc.poll() is None:
                h.stop()
        mesh.stop()
        _kill_leftovers(root)


def _state(folder: Path, host: str, job: str) -> str | None:
    try:
        text = (folder / "status" / host / f"{job}.yaml").read_text()
    except FileNotFoundError:
        return None
    return next((line.split(": ", 1)[1] for line in text.splitlines()
                 if line.startswith("state: ")), None)


def test_results_reach_the_phone_well_before_the_watcher_delay(
        mesh: tuple[Mesh, dict[str, Host]]) -> None:
    peers, hosts = mesh
    phone = peers.folder("phone")
    (phone / "jobs" / ".j.part").write_text("commands: echo done\n")  # both hosts run it
    os.replace(phone / "jobs" / ".j.part", phone / "jobs" / "j.yaml")
    written: dict[str, float] = {}
    seen: dict[str, float] = {}

    def both_seen() -> bool:
        for host in hosts:
            if host not in written and _state(peers.folder(host), host, "j") == "succeeded":
                written[host] = time.monotonic()
            if host not in seen and _state(phone, host, "j") == "succeeded":
                seen[host] = time.monotonic()
        return len(seen) == 2

    wait_for(both_seen, timeout=60, interval=0.02, what="the phone to see both results")
    asked, refused = seen["a"] - written["a"], seen["b"] - written["b"]
    print(f"host → phone: with the scan request {asked:.2f}s, refused {refused:.2f}s")
    assert asked < DELAY / 3, "the scan request did not carry the result"
    # The control: Syncthing's watcher carries it only at its next aggregation (up to DELAY).
    assert refused > asked + 2, "the control: without the request Syncthing waits"
    assert hosts["a"].heartbeat()["syncthing"] == {"state": "ok", "folder": "spool"}
    report = hosts["b"].heartbeat()["syncthing"]
    assert report["state"] == "failing" and "refused the API key (HTTP 403)" in report["reason"]
    assert hosts["b"].heartbeat()["state"] == "serving"  # and the job ran all the same
