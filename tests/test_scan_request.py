"""The scan request (syncthing.py) against a REST server on 127.0.0.1 that answers as
Syncthing's does: coalescing, where the key, address and folder come from, and every
failure shown in host.yaml without a job waiting for it. Through a real Syncthing:
tests/test_syncthing_scan.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from filerexec import syncthing
from filerexec.config import describe, parse_config, resolve
from filerexec.syncthing import Scanner, SyncthingConfig
from tests.conftest import Host
from tests.util import wait_for

KEY = "right-key"


class FakeSyncthing(ThreadingHTTPServer):
    """The two REST calls the scanner makes, with Syncthing's answers."""

    def __init__(self, folders: list[dict[str, Any]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folders = folders
        self.key = KEY
        self.scans: list[dict[str, str]] = []
        self.keys_seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeSyncthing

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: Any) -> None:
        data = (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        self.server.keys_seen.append(self.headers.get("X-API-Key", ""))
        if self.headers.get("X-API-Key") != self.server.key:
            self._answer(403, "Forbidden\n")
        elif method == "GET" and url.path == "/rest/config/folders":
            self._answer(200, self.server.folders)
        elif method == "POST" and url.path == "/rest/db/scan":
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if query["folder"] not in [f["id"] for f in self.server.folders]:
                self._answer(500, f"folder {query['folder']!r} does not exist\n")
                return
            self.server.scans.append(query)
            self._answer(200, "")
        else:
            self._answer(404, "404 page not found\n")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


@pytest.fixture
def fake(spool: Path) -> Iterator[FakeSyncthing]:
    server = FakeSyncthing([{"id": "other", "path": "/nonexistent"},
                            {"id": "sp", "path": str(spool)}])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _scanner(config: SyncthingConfig, spool: Path, **kw: Any) -> tuple[Scanner, list[int]]:
    woken: list[int] = []
    return Scanner(config, spool / "status" / "h", lambda: woken.append(1), **kw), woken


def test_a_burst_of_writes_is_one_scan_of_status_host(fake: FakeSyncthing, spool: Path) -> None:
    scanner, woken = _scanner(SyncthingConfig(fake.url, KEY), spool, window=5.0)
    for _ in range(50):
        scanner.request()
    scanner.close()  # cuts the window short: what is pending goes out once
    assert fake.scans == [{"folder": "sp", "sub": "status/h"}]
    assert scanner.report() == {"state": "ok", "folder": "sp"} and woken == [1]


def test_each_burst_after_the_last_has_its_own_scan(fake: FakeSyncthing, spool: Path) -> None:
    scanner, _ = _scanner(SyncthingConfig(fake.url, KEY), spool, window=0.01)
    for n in (1, 2, 3):
        scanner.request()
        wait_for(lambda n=n: len(fake.scans) == n, what=f"scan {n}")  # type: ignore[misc]
    scanner.close()
    assert len(fake.scans) == 3


def test_key_and_address_from_syncthings_config_xml(fake: FakeSyncthing, spool: Path,
                                                     tmp_path: Path) -> None:
    home = tmp_path / "st-home"
    home.mkdir()
    (home / "config.xml").write_text(
        f'<configuration version="36"><gui enabled="true" tls="false">'
        f"<address>127.0.0.1:{fake.server_address[1]}</address><apikey>{KEY}</apikey>"
        f"</gui></configuration>")
    scanner, _ = _scanner(SyncthingConfig(home=home), spool)
    scanner.request()
    scanner.close()
    assert fake.scans == [{"folder": "sp", "sub": "status/h"}] and set(fake.keys_seen) == {KEY}


def test_the_innermost_shared_folder_holding_the_spool(fake: FakeSyncthing, tmp_path: Path,
                                                       spool: Path) -> None:
    fake.folders = [{"id": "home", "path": str(tmp_path.parent)},
                    {"id": "inner", "path": str(tmp_path)}]
    scanner, _ = _scanner(SyncthingConfig(fake.url, KEY), spool)
    scanner.request()
    scanner.close()
    assert fake.scans == [{"folder": "inner", "sub": "spool/status/h"}]


def test_a_folder_id_given_is_used(fake: FakeSyncthing, spool: Path) -> None:
    fake.folders.append({"id": "same", "path": str(spool)})
    scanner, _ = _scanner(SyncthingConfig(fake.url, KEY, folder="same"), spool)
    scanner.request()
    scanner.close()
    assert fake.scans == [{"folder": "same", "sub": "status/h"}]


@pytest.mark.parametrize(("config", "words"), [
    (lambda f, t: SyncthingConfig(f.url, "wrong"), "refused the API key (HTTP 403)"),
    (lambda f, t: SyncthingConfig("http://127.0.0.1:9", KEY), "does not answer"),
    (lambda f, t: SyncthingConfig(f.url, KEY, folder="nope"), "has no folder 'nope'"),
    (lambda f, t: SyncthingConfig(home=t), "no Syncthing config.xml in"),
])
def test_failures_are_reported_with_the_reason(fake: FakeSyncthing, spool: Path,
                                               tmp_path: Path, config: Any, words: str) -> None:
    scanner, woken = _scanner(config(fake, tmp_path), spool)
    scanner.request()
    scanner.close()
    report = scanner.report()
    assert report is not None and report["state"] == "failing" and words in report["reason"]
    assert woken == [1] and fake.scans == []


def test_a_folder_not_shared_is_reported(fake: FakeSyncthing, spool: Path) -> None:
    fake.folders = [{"id": "other", "path": "/nonexistent"}]
    scanner, _ = _scanner(SyncthingConfig(fake.url, KEY), spool)
    scanner.request()
    scanner.close()
    assert scanner.report() == {
        "state": "failing",
        "reason": f"no Syncthing folder holds {spool.resolve() / 'status' / 'h'}: "
                  "share it in Syncthing"}


def test_the_two_folder_set_up_scans_the_status_folder(fake: FakeSyncthing,
                                                        spool: Path) -> None:
    fake.folders = [{"id": "jobs", "path": str(spool / "jobs")},
                    {"id": "status", "path": str(spool / "status")}]
    scanner, _ = _scanner(SyncthingConfig(fake.url, KEY), spool)
    scanner.request()
    scanner.close()
    assert fake.scans == [{"folder": "status", "sub": "h"}]


def test_a_failure_is_retried_with_back_off_until_it_works(
        fake: FakeSyncthing, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syncthing, "RETRY", 0.05)
    fake.key = "not-yet"  # Syncthing's key was changed; the owner puts it right
    scanner, woken = _scanner(SyncthingConfig(fake.url, KEY), spool, window=0.01)
    scanner.request()
    wait_for(lambda: len(fake.keys_seen) >= 3, what="retries")
    assert scanner.report()["state"] == "failing"  # type: ignore[index]
    fake.key = KEY
    wait_for(lambda: fake.scans, what="the scan once the key is right")
    scanner.close()
    assert scanner.report() == {"state": "ok", "folder": "sp"} and woken == [1, 1]


def test_without_syncthing_config_nothing_is_asked(spool: Path) -> None:
    scanner, woken = _scanner(None, spool)  # type: ignore[arg-type]
    scanner.request()
    scanner.close()
    assert scanner.report() is None and woken == [] and scanner.scans == 0


def test_config_key_parses_and_shows_without_the_api_key(tmp_path: Path) -> None:
    found = parse_config("syncthing:\n  api: http://127.0.0.1:8384\n  api_key: s3cret\n"
                         "  home: ~/st\n")
    assert found["syncthing"] == (SyncthingConfig("http://127.0.0.1:8384", "s3cret",
                                                  Path.home() / "st"), 1)
    assert parse_config("syncthing: true\n")["syncthing"] == (SyncthingConfig(), 1)
    config = tmp_path / "c.yaml"
    config.write_text("spool: /sp\nsyncthing: {api_key: s3cret, folder: sp}\n")
    shown = describe(resolve({}, config, {}))
    assert "syncthing: {api_key: (set), folder: sp}" in shown and "s3cret" not in shown


@pytest.mark.parametrize(("text", "words"), [
    ("syncthing: yes please\n", "must be true or a mapping of api, api_key, home, folder"),
    ("syncthing: {apikey: x}\n", "unknown key 'apikey'"),
    ("syncthing: {api: [1]}\n", "`api` must be a non-empty text"),
])
def test_config_errors_name_the_line(text: str, words: str) -> None:
    with pytest.raises(ValueError, match="line 1") as info:
        parse_config(text)
    assert words in str(info.value)


def test_daemon_asks_for_a_scan_and_shows_it_in_host_yaml(
        fake: FakeSyncthing, host: Host, _isolated_config: Path) -> None:
    _isolated_config.write_text(f"syncthing:\n  api: {fake.url}\n  api_key: {KEY}\n")
    host.start()
    host.drop("j.yaml", "commands: 'true'\n")
    host.wait_state("j", "succeeded")
    wait_for(lambda: host.heartbeat().get("syncthing") == {"state": "ok", "folder": "sp"},
             what="host.yaml to show the scans")
    assert {"folder": "sp", "sub": "status/testhost"} in fake.scans


def test_daemon_with_syncthing_down_runs_jobs_and_says_why(
        host: Host, _isolated_config: Path) -> None:
    _isolated_config.write_text(f"syncthing:\n  api: http://127.0.0.1:9\n  api_key: {KEY}\n")
    host.start()
    host.drop("j.yaml", "commands: 'true'\n")
    host.wait_state("j", "succeeded")
    report = wait_for(lambda: host.heartbeat().get("syncthing"), what="the report")
    wait_for(lambda: host.heartbeat()["syncthing"]["state"] == "failing", what="failing")
    assert "does not answer at http://127.0.0.1:9" in host.heartbeat()["syncthing"]["reason"]
    assert report["state"] in ("waiting", "failing") and host.heartbeat()["state"] == "serving"
