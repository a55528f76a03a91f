"""Syncthing: ask the host's own Syncthing to scan ``status/HOST/`` right after a write.

Syncthing notices a changed file only after its watcher delay (10 s by default), so
without this every result would reach the phone ten seconds later than it could.
``Scanner.request`` is called by the status writer after each pass; a thread of its
own waits a short coalescing window and sends one ``POST /rest/db/scan?folder=ID&sub=…``
for the whole burst. Nothing here ever blocks the writer or the loop: a Syncthing that
is down, refuses the key or does not share the spool is reported (``report()``, shown
in host.yaml) and retried with back-off.

The REST address and API key come from the config (``syncthing: api, api_key``) or
else from Syncthing's own ``config.xml``; the folder id from the config or else from
``/rest/config/folders`` (the innermost folder whose path holds ``status/HOST/``: the
spool's, or in the two-folder set-up ``SPOOL/status``).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

logger = logging.getLogger(__name__)

WINDOW = 0.05  # seconds a burst of writes has to end before its one scan request
TIMEOUT = 10.0  # one request to Syncthing, at most
RETRY = 1.0  # first wait after a failure; doubled up to MAX_RETRY
MAX_RETRY = 60.0
FIELDS = ("api", "api_key", "home", "folder")


@dataclass(frozen=True, slots=True)
class SyncthingConfig:
    """``syncthing:`` in the host config; None everywhere means "find it out"."""

    api: str | None = None  # http://127.0.0.1:8384, unix:///path.sock; None: config.xml
    api_key: str | None = None  # None: from config.xml
    home: Path | None = None  # the folder of Syncthing's config.xml; None: its default places
    folder: str | None = None  # the folder id; None: the folder whose path holds the spool

    def shown(self) -> dict[str, str]:
        """As a person writes it in the config file (the key itself is not printed)."""
        values = {f: getattr(self, f) for f in FIELDS}
        values["api_key"] = values["api_key"] and "(set)"
        return {k: str(v) for k, v in values.items() if v is not None}


def parse_config(value: object) -> SyncthingConfig:
    """``syncthing:`` as written: ``true``, or a mapping of ``api``, ``api_key``, ``home``,
    ``folder`` (each optional). Raises ValueError with the words for the person."""
    if value is True:
        return SyncthingConfig()
    if not isinstance(value, dict):
        raise ValueError(f"must be true or a mapping of {', '.join(FIELDS)}, not {value!r}")
    unknown = sorted(str(k) for k in value if k not in FIELDS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; known: {', '.join(FIELDS)}")
    for name, item in value.items():
        if not isinstance(item, str | int) or isinstance(item, bool) or not str(item).strip():
            raise ValueError(f"`{name}` must be a non-empty text, not {item!r}")
    text = {k: str(v).strip() for k, v in value.items()}
    home = text.get("home")
    return SyncthingConfig(text.get("api"), text.get("api_key"),
                           Path(os.path.expanduser(home)) if home else None, text.get("folder"))


class SyncthingError(Exception):
    """Why a scan request could not be made: shown in host.yaml as is."""


# --- finding Syncthing -----------------------------------------------------------


def home_candidates(explicit: Path | None, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where Syncthing keeps config.xml: the config's ``home``, ``$STHOMEDIR``, its defaults."""
    if explicit is not None:
        return [explicit]
    found = [Path(environ["STHOMEDIR"])] if environ.get("STHOMEDIR") else []
    state = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    conf = environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return [*found, Path(state) / "syncthing", Path(conf) / "syncthing"]


def read_gui(homes: list[Path]) -> tuple[str, str]:
    """The GUI address (as a URL) and API key in the first config.xml found."""
    for home in homes:
        path = home / "config.xml"
        try:
            root = ET.parse(path).getroot()  # Syncthing's own file on this host
        except FileNotFoundError:
            continue
        except (OSError, ET.ParseError) as e:
            raise SyncthingError(f"cannot read {path}: {e}") from None
        gui = root.find("gui")
        address = gui.findtext("address") if gui is not None else None
        key = gui.findtext("apikey") if gui is not None else None
        if gui is None or not address or not key:
            raise SyncthingError(f"{path} has no GUI address and API key")
        tls = gui.get("tls", "false").lower() == "true"
        return gui_url(address.strip(), tls), key.strip()
    raise SyncthingError("no Syncthing config.xml in " + ", ".join(str(h) for h in homes)
                         + " (set syncthing: home, or api and api_key)")


def gui_url(address: str, tls: bool = False) -> str:
    """config.xml's GUI address as a URL: a socket path, or host:port."""
    if address.startswith(("/", "unix://")):
        return address if address.startswith("unix://") else f"unix://{address}"
    return address if "://" in address else f"{'https' if tls else 'http'}://{address}"


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (Syncthing's GUI may listen on one)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class Api:
    """One Syncthing's REST API."""

    url: str
    key: str
    timeout: float = TIMEOUT

    def call(self, method: str, path: str) -> Any:
        """The decoded answer; SyncthingError saying what went wrong."""
        parts = urlsplit(self.url)
        conn: http.client.HTTPConnection
        if parts.scheme == "unix":
            conn = _UnixConnection(parts.path, self.timeout)
        elif parts.scheme == "https":  # Syncthing's own certificate, self-signed
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout,
                                               context=context)
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        try:
            conn.request(method, parts.path.rstrip("/") + path if parts.scheme != "unix"
                         else path, headers={"X-API-Key": self.key})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise SyncthingError(f"Syncthing does not answer at {self.url}: {e}") from None
        finally:
            conn.close()
        if resp.status in (401, 403):
            raise SyncthingError(f"Syncthing at {self.url} refused the API key "
                                 f"(HTTP {resp.status})")
        if resp.status >= 400:
            words = body.decode(errors="replace").strip()[:200]
            raise SyncthingError(f"Syncthing at {self.url}: {method} {path.split('?')[0]}: "
                                 f"HTTP {resp.status} {words}")
        return json.loads(body) if body.strip() else None


def find_folder(folders: Any, spool: Path) -> tuple[str, Path]:
    """The id and path of the shared folder that holds ``spool`` (the innermost one)."""
    spool = spool.resolve(strict=False)
    best: tuple[str, Path] | None = None
    for folder in folders if isinstance(folders, list) else []:
        path = Path(os.path.expanduser(str(folder.get("path", "")))).resolve()
        if spool.is_relative_to(path) and (best is None or len(path.parts) > len(best[1].parts)):
            best = (str(folder.get("id")), path)
    if best is None:
        raise SyncthingError(f"no Syncthing folder holds {spool}: share it in Syncthing")
    return best


# --- the scanner -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    api: Api
    folder: str
    sub: str  # status/HOST as a path inside the folder


class Scanner:
    """One scan request per burst of status writes, on a thread of its own.

    ``config`` None: nothing is ever asked (``request`` costs a call). ``wake`` is called
    when what ``report()`` says changes, so host.yaml is rewritten with it.
    """

    def __init__(self, config: SyncthingConfig | None, status_dir: Path,
                 wake: Callable[[], None], window: float = WINDOW) -> None:
        self.config = config
        self.status_dir = status_dir
        self.wake = wake
        self.window = window
        self.scans = 0  # requests Syncthing answered (tests, the benchmark)
        self._cond = threading.Condition()
        self._pending = self._closed = False
        self._target: _Target | None = None
        self._state: dict[str, str] = {"state": "waiting"}
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Status files were written: have them scanned soon. Never blocks."""
        if self.config is None:
            return
        with self._cond:
            self._pending = True
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="syncthing-scan",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def report(self) -> dict[str, str] | None:
        """For host.yaml: ``state`` (waiting, ok, failing), ``folder``, ``reason``."""
        if self.config is None:
            return None
        with self._cond:
            return dict(self._state)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending once more (the last statuses), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        delay = RETRY
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                if not self._closed:  # let the burst end: one request for all of it
                    self._cond.wait_for(lambda: self._closed, self.window)
                self._pending = False
            try:
                self._scan()
            except SyncthingError as e:
                self._set({"state": "failing", "reason": str(e)})
                with self._cond:
                    self._pending = True  # what was written is still to be scanned
                    if self._closed:
                        return
                    # A new write does not cut the back-off short; a stop does.
                    self._cond.wait_for(lambda: self._closed, delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            delay = RETRY
            with self._cond:
                if self._closed and not self._pending:
                    return

    def _scan(self) -> None:
        target = self._target or self._find()
        try:
            target.api.call("POST", f"/rest/db/scan?folder={quote(target.folder, safe='')}"
                                    f"&sub={quote(target.sub, safe='')}")
        except SyncthingError:
            self._target = None  # found again next time: the key or the folder may change
            raise
        self._target = target
        self.scans += 1
        self._set({"state": "ok", "folder": target.folder})

    def _find(self) -> _Target:
        """Where to send the request: the API, the folder id and the sub-path."""
        assert self.config is not None
        url, key = self.config.api, self.config.api_key
        if url is None or key is None:
            found_url, found_key = read_gui(home_candidates(self.config.home))
            url, key = url or found_url, key or found_key
        api = Api(gui_url(url), key)
        folders = api.call("GET", "/rest/config/folders")
        if self.config.folder is not None:
            by_id = [f for f in folders if f.get("id") == self.config.folder]
            if not by_id:
                raise SyncthingError(f"Syncthing has no folder {self.config.folder!r}")
            root = Path(os.path.expanduser(str(by_id[0].get("path", "")))).resolve()
            folder = self.config.folder
        else:
            folder, root = find_folder(folders, self.status_dir)  # SPOOL, or SPOOL/status
        try:
            sub = self.status_dir.resolve().relative_to(root).as_posix()
        except ValueError:
            raise SyncthingError(f"Syncthing folder {folder!r} ({root}) does not hold "
                                 f"{self.status_dir}") from None
        return _Target(api, folder, sub)

    def _set(self, state: dict[str, str]) -> None:
        with self._cond:
            changed, self._state = state != self._state, state
        if changed:
            if state["state"] == "failing":
                logger.warning("Syncthing scan request: %s", state["reason"])
            else:
                logger.info("Syncthing scans %s of folder %s on request", self.status_dir,
                            state.get("folder"))
            self.wake()
