"""Real Syncthing peers for the end-to-end tests, confined to a private network namespace.

Design (why it looks like this):

- Every peer runs inside ONE private network namespace (``unshare --net``, only
  ``lo`` up), held open by a sleeping process and entered with ``nsenter``. The
  peers talk to each other over 127.0.0.1 in there and nothing can leave the
  machine; :meth:`Namespace.start` refuses to go on if the namespace has any
  interface but ``lo``.
- The pytest process itself stays where it is: each peer's REST API (the "GUI")
  listens on a Unix socket in the peer's home folder, and a Unix socket is a
  file, not a network address, so the tests reach it from outside the
  namespace. So ``.venv/bin/pytest tests/test_syncthing.py`` works as is, the
  rest of the suite runs in the ordinary namespace, and fixed ports never clash
  with another test run (each run has its own namespace).
- Discovery (global and local), relays, NAT/UPnP, STUN, usage and crash reports
  and upgrades are switched off in the generated config; the only peer address
  is 127.0.0.1.
- Each folder gets a ``.stignore`` with the patterns README suggests, so the
  host's ``.~filerexec-*.tmp`` temp files are never synced.

Adapted from ../shared/tools/syncpair.py (the tests must not depend on it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.util import wait_for

FOLDER_ID = "spool"
API_KEY = "filerexec-test-key"
BASE_PORT = 22100  # inside the private namespace: no clash with anything outside
STIGNORE = """\
// filerexec: the host writes status files as .~filerexec-*.tmp, then renames them
.~filerexec-*.tmp
"""

_OPTIONS = """
    <options>
        <listenAddress>tcp://127.0.0.1:{listen}</listenAddress>
        <globalAnnounceServer></globalAnnounceServer>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <localAnnouncePort>0</localAnnouncePort>
        <localAnnounceMCAddr></localAnnounceMCAddr>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <urAccepted>-1</urAccepted>
        <urSeen>3</urSeen>
        <urURL></urURL>
        <urInitialDelayS>86400</urInitialDelayS>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <upgradeToPreReleases>false</upgradeToPreReleases>
        <releasesURL></releasesURL>
        <crashReportingEnabled>false</crashReportingEnabled>
        <crashReportingURL></crashReportingURL>
        <stunKeepaliveStartS>0</stunKeepaliveStartS>
        <stunKeepaliveMinS>0</stunKeepaliveMinS>
        <stunServer></stunServer>
        <announceLANAddresses>false</announceLANAddresses>
        <startBrowser>false</startBrowser>
        <reconnectionIntervalS>1</reconnectionIntervalS>
        <setLowPriority>false</setLowPriority>
    </options>"""


def unavailable_reason() -> str | None:
    """Why real Syncthing peers cannot run here, or None when they can."""
    for tool in ("syncthing", "unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: syncthing, util-linux, iproute2)"
    if os.geteuid() != 0:
        return "a private network namespace (`unshare --net`) needs root here"
    probe = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"`unshare --net` does not work here: {probe.stderr.strip()}"
    return None


class Namespace:
    """A private network namespace with only ``lo`` up, held open by a sleeping process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c",
             "ip link set lo up && echo ready && exec sleep 100000"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip() == "ready"
        self.proc.stdout.close()  # the holder says nothing more
        if not ready:
            self.stop()
            raise RuntimeError("could not bring up lo in a private network namespace")
        others = [i for i in self.interfaces() if i != "lo"]
        if others:  # never let a peer near a real network
            self.stop()
            raise RuntimeError(f"the namespace has non-loopback interfaces {others}; refusing")

    def interfaces(self) -> list[str]:
        """The interfaces the peers can see (per-namespace /proc/PID/net/dev)."""
        assert self.proc is not None
        lines = Path(f"/proc/{self.proc.pid}/net/dev").read_text().splitlines()[2:]
        return [line.split(":")[0].strip() for line in lines]

    def run(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace."""
        assert self.proc is not None
        return ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", *argv]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Peer:
    """One Syncthing instance: its home (config, keys, database) and its synced folder."""

    def __init__(self, root: Path, name: str, listen: int, sockets: Path) -> None:
        self.name, self.listen = name, listen
        self.home = root / name / "home"
        self.folder = root / name / "folder"
        self.socket = sockets / f"{name}.sock"  # short path: sun_path holds 108 bytes
        self.log = root / f"syncthing-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.id = ""

    def generate(self, ns: Namespace) -> None:
        self.home.mkdir(parents=True)
        self.folder.mkdir(parents=True)
        subprocess.run(ns.run(["syncthing", "generate", f"--home={self.home}",
                               "--no-default-folder"]), check=True, capture_output=True)
        out = subprocess.run(ns.run(["syncthing", "serve", f"--home={self.home}",
                                     "--device-id"]), check=True, capture_output=True, text=True)
        self.id = out.stdout.strip()

    @property
    def short_id(self) -> str:
        """What Syncthing records as ``modifiedBy``."""
        return self.id.split("-")[0]

    def write_config(self, others: Iterable[Peer], rescan_s: int,
                     watcher_delay_s: int = 1) -> None:
        peers = [self, *others]
        devices = "".join(
            f'<device id="{p.id}" name="{p.name}" compression="metadata" introducer="false">'
            f"<address>tcp://127.0.0.1:{p.listen}</address>"
            f"<autoAcceptFolders>false</autoAcceptFolders></device>" for p in peers)
        shared = "".join(f'<device id="{p.id}"></device>' for p in peers)
        config = f"""<configuration version="36">
    <folder id="{FOLDER_ID}" label="{FOLDER_ID}" path="{self.folder}" type="sendreceive"
            rescanIntervalS="{rescan_s}" fsWatcherEnabled="true"
            fsWatcherDelayS="{watcher_delay_s}" ignorePerms="false" autoNormalize="true">
        <filesystemType>basic</filesystemType>
        {shared}
        <minDiskFree unit="%">0</minDiskFree>
        <maxConflicts>10</maxConflicts>
        <markerName>.stfolder</markerName>
    </folder>
    {devices}
    <gui enabled="true" tls="false"><address>{self.socket}</address>
        <apikey>{API_KEY}</apikey></gui>
    {_OPTIONS.format(listen=self.listen)}
</configuration>
"""
        (self.home / "config.xml").write_text(config)
        (self.folder / ".stfolder").mkdir(exist_ok=True)
        (self.folder / ".stignore").write_text(STIGNORE)

    def start(self, ns: Namespace) -> None:
        env = dict(os.environ, STNOUPGRADE="1", STNORESTART="1", STNODEFAULTFOLDER="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ns.run(["syncthing", "serve", f"--home={self.home}", "--no-browser",
                        "--no-restart", "--no-upgrade", "--skip-port-probing",
                        "--logflags=3"]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)

    def api(self, path: str, method: str = "GET", timeout: float = 10) -> Any:
        conn = _UnixHTTPConnection(self.socket, timeout)
        try:
            conn.request(method, path, headers={"X-API-Key": API_KEY})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise OSError(f"{self.name} {method} {path}: HTTP {resp.status} {body[:200]!r}")
        return json.loads(body) if body.strip() else None

    def answering(self) -> bool:
        try:
            self.api("/rest/system/ping")
        except OSError:
            return False
        return True

    def file_info(self, rel: str) -> dict[str, Any]:
        """Syncthing's record of one file: ``global``/``local`` versions, ``modifiedBy``."""
        result: dict[str, Any] = self.api(f"/rest/db/file?folder={FOLDER_ID}&file={quote(rel)}")
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Mesh:
    """Several peers, each connected to every other, sharing folder ``spool``."""

    def __init__(self, root: Path, names: Iterable[str], rescan_s: int = 5,
                 watcher_delays: dict[str, int] | None = None) -> None:
        self.root = root
        self.ns = Namespace()
        self._sockets = Path(tempfile.mkdtemp(prefix="fx-st-"))
        self.peers = {n: Peer(root, n, BASE_PORT + i, self._sockets)
                      for i, n in enumerate(names)}
        self.rescan_s = rescan_s
        self.watcher_delays = watcher_delays or {}  # per peer; 1 s unless named (10: default)

    def folder(self, name: str) -> Path:
        return self.peers[name].folder

    def start(self, timeout: float = 60) -> float:
        """Start every peer and wait until all are connected; return how long that took."""
        t0 = time.monotonic()
        self.ns.start()
        try:
            for p in self.peers.values():
                p.generate(self.ns)
            for p in self.peers.values():
                p.write_config([o for o in self.peers.values() if o is not p], self.rescan_s,
                               self.watcher_delays.get(p.name, 1))
            for p in self.peers.values():
                # One at a time, each listening before the next starts: a peer's first
                # dial then finds the earlier ones up instead of backing off for ~20 s.
                p.start(self.ns)
                wait_for(p.answering, timeout=timeout, interval=0.05, what=f"{p.name} to start")
            wait_for(self.connected, timeout=timeout, interval=0.2, what="the peers to connect")
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - t0

    def connected(self, among: Iterable[str] | None = None) -> bool:
        names = list(among or self.peers)
        for n in names:
            try:
                conns = self.peers[n].api("/rest/system/connections")["connections"]
            except OSError:
                return False
            if not all(conns.get(self.peers[o].id, {}).get("connected")
                       for o in names if o != n):
                return False
        return True

    def scan(self) -> None:
        """Ask every peer to rescan now (returns when the scans are done)."""
        for p in self.peers.values():
            p.api(f"/rest/db/scan?folder={FOLDER_ID}", method="POST")

    def in_sync(self) -> bool:
        for p in self.peers.values():
            st = p.api(f"/rest/db/status?folder={FOLDER_ID}")
            if (st["state"] != "idle" or st["needTotalItems"]
                    or st["localTotalItems"] != st["globalTotalItems"]):
                return False
            for o in self.peers.values():
                if o is p:
                    continue
                comp = p.api(f"/rest/db/completion?folder={FOLDER_ID}&device={o.id}")
                if comp["completion"] < 100 or comp.get("needItems", 0):
                    return False
        return True

    def wait_synced(self, timeout: float = 60, settle: float = 0.5) -> None:
        """Rescan every peer, then wait until all report idle and complete for ``settle`` s."""
        self.scan()
        ok_since: list[float] = []

        def steady() -> bool:
            try:
                ok = self.in_sync()
            except OSError:
                ok = False
            if not ok:
                ok_since.clear()
                return False
            ok_since[:] = ok_since or [time.monotonic()]
            return time.monotonic() - ok_since[0] >= settle

        wait_for(steady, timeout=timeout, interval=0.1, what="every peer to be in sync")

    def offline(self, name: str) -> None:
        """Take a peer offline, as a phone in a tunnel (its Syncthing stops)."""
        self.peers[name].stop()

    def online(self, name: str, timeout: float = 60) -> None:
        """Bring it back: it dials the others as it starts, so it reconnects in seconds.

        (Pausing and resuming a link is the other way to split peers, but a dial that
        hits the side not yet resumed backs off for ~20 s in Syncthing 1.19.)
        """
        peer = self.peers[name]
        peer.start(self.ns)
        wait_for(peer.answering, timeout=timeout, interval=0.05, what=f"{name} to start")
        wait_for(self.connected, timeout=timeout, interval=0.1, what=f"{name} to reconnect")

    def stop(self) -> None:
        for p in self.peers.values():
            with contextlib.suppress(OSError):
                p.stop()
        self.ns.stop()
        shutil.rmtree(self._sockets, ignore_errors=True)
