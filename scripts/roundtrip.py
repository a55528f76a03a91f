"""The round trip through real Syncthing (issue 12), for scripts/bench.py.

Two Syncthing peers, ``phone`` and ``host``, in a private network namespace
(tests/syncthing.py), both with Syncthing's default watcher delay (10 s) and no
periodic rescan in the way. The phone writes a job (temp name, rename) and asks its
Syncthing to scan it, as a phone app that knows Syncthing's API would; the time
counted is until the phone's own copy of the folder holds the job's final status.

Three arms, alternating job by job so a neighbour's load hits them alike:
  scan     ``filerexec serve`` as host ``scan`` with ``syncthing:`` set: it asks the
           host's Syncthing to scan ``status/scan/`` after writing there
  noscan   ``filerexec serve`` as host ``noscan``, no ``syncthing:``: its results wait
           for the host's Syncthing watcher (what every result waited before)
  floor    the same two transfers of a plain file, each pushed with a scan request:
           the phone writes ``ping/N``; this process, polling the host's copy every
           millisecond, writes ``pong/N`` there and asks for its scan
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.syncthing import FOLDER_ID, Mesh, Peer, unavailable_reason  # noqa: E402

DELAY = 10  # Syncthing's default fsWatcherDelayS
ARMS = ("scan", "noscan", "floor")


def _put(folder: Path, rel: str, text: str) -> None:
    """Write as a phone app does: a temp file, then a rename into place."""
    target = folder / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_text(text)
    os.replace(tmp, target)


def _push(peer: Peer, rel: str) -> None:
    peer.api(f"/rest/db/scan?folder={FOLDER_ID}&sub={rel}", method="POST")


def _final(path: Path) -> bool:
    try:
        return "state: succeeded" in path.read_text()
    except FileNotFoundError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float, tick: Callable[[], None] | None = None,
          interval: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if tick is not None:
            tick()
        if time.monotonic() > deadline:
            raise SystemExit(f"round trip: nothing arrived within {timeout:g} s")
        time.sleep(interval)


class RoundTrip:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mesh = Mesh(root, ("phone", "host"), rescan_s=3600,
                         watcher_delays={"phone": DELAY, "host": DELAY})
        self.daemons: list[subprocess.Popen[bytes]] = []

    @property
    def phone(self) -> Path:
        return self.mesh.folder("phone")

    def start(self) -> None:
        self.mesh.start()
        host = self.mesh.peers["host"]
        config = self.root / "config-scan.yaml"
        config.write_text(f"syncthing:\n  home: {host.home}\n")
        empty = self.root / "config-noscan.yaml"
        empty.write_text("")
        for sub in ("jobs", "status", "ping", "pong"):
            (self.phone / sub).mkdir(exist_ok=True)
            (host.folder / sub).mkdir(exist_ok=True)
        for name, conf in (("scan", config), ("noscan", empty)):
            argv = [sys.executable, "-m", "filerexec", "serve", str(host.folder), "--host",
                    name, "--state-dir", str(self.root / f"state-{name}"), "--config", str(conf)]
            with open(self.root / f"daemon-{name}.log", "ab") as log:
                self.daemons.append(subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT,
                                                     start_new_session=True))
        for name in ("scan", "noscan"):
            _wait((host.folder / "status" / name / "host.yaml").exists, 30)

    def one(self, arm: str, n: int) -> tuple[float, float]:
        """Seconds from the phone's write until the host's copy holds the answer, and
        until the phone's does."""
        phone = self.mesh.peers["phone"]
        if arm == "floor":
            return self._floor(n)
        name = f"rt-{arm}-{n:03d}"
        there: list[float] = []

        def on_host() -> None:
            if not there and _final(self.mesh.folder("host") / "status" / arm / f"{name}.yaml"):
                there.append(time.monotonic())

        t = time.monotonic()
        _put(self.phone, f"jobs/{name}.yaml", f"commands: 'true'\nhost: {arm}\n")
        _push(phone, f"jobs/{name}.yaml")
        _wait(lambda: _final(self.phone / "status" / arm / f"{name}.yaml"), 120, on_host)
        back = time.monotonic()
        return (there[0] if there else back) - t, back - t

    def _floor(self, n: int) -> tuple[float, float]:
        phone, host = self.mesh.peers["phone"], self.mesh.peers["host"]
        ping, pong = f"ping/{n:03d}", f"pong/{n:03d}"
        answered: list[float] = []

        def answer() -> None:  # the host's side: as soon as ping arrives, pong goes back
            if not answered and (host.folder / ping).exists():
                _put(host.folder, pong, "pong\n")
                answered.append(time.monotonic())
                _push(host, pong)

        t = time.monotonic()
        _put(self.phone, ping, "ping\n")
        _push(phone, ping)
        _wait(lambda: (self.phone / pong).exists(), 120, answer)
        return answered[0] - t, time.monotonic() - t

    def stop(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        self.mesh.stop()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def measure(root: Path, jobs: int) -> list[tuple[str, str, str, str, str]] | str:
    """The rows for bench.py's table, or why the round trip cannot run here."""
    reason = unavailable_reason()
    if reason:
        return f"round trip through Syncthing skipped: {reason}"
    trip = RoundTrip(root)
    times: dict[str, list[tuple[float, float]]] = {a: [] for a in ARMS}
    try:
        trip.start()
        for arm in ARMS:  # warm up: each arm's first transfer is not timed
            trip.one(arm, 999)
        for n in range(jobs):
            order = ARMS if n % 2 == 0 else ARMS[::-1]
            for arm in order:
                times[arm].append(trip.one(arm, n))
    finally:
        trip.stop()
    total = {a: [t[1] for t in times[a]] for a in ARMS}
    f50, f95 = statistics.median(total["floor"]), pct(total["floor"], 0.95)
    rows = []
    for arm, words in (("scan", "with the scan request"), ("noscan", "without it")):
        s50, s95 = statistics.median(total[arm]), pct(total[arm], 0.95)
        target = "≤ 1.2x" if arm == "scan" else "(info: Syncthing's watcher delay)"
        if arm == "scan":
            target += " ✓" if s50 / f50 <= 1.2 else " ✗ MISSED"
        rows.append((f"phone → host → phone p50, {words} ({jobs} jobs)", f"{f50:.2f} s",
                     f"{s50:.2f} s", f"{s50 / f50:.2f}x", target))
        rows.append((f"phone → host → phone p95, {words}", f"{f95:.2f} s", f"{s95:.2f} s",
                     f"{s95 / f95:.2f}x", ""))
    for arm in ("floor", "scan", "noscan"):  # where the time goes (medians)
        out = statistics.median(t[0] for t in times[arm])
        back = statistics.median(t[1] - t[0] for t in times[arm])
        rows.append((f"  {arm}: phone → host answer written, then → phone (p50)", "",
                     f"{out:.2f} s + {back:.2f} s", "", "(info)"))
    return rows
