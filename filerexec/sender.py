"""The one module that sends notifications: HTTP (ntfy, webhooks), Apprise, local programs.

Each call sends one event to one target URL and returns what the receiver answered, or
raises ``DeliveryError`` with what went wrong; it never retries (delivery.py does).
"""

from __future__ import annotations

import importlib.util
import shlex
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from typing import Any

from filerexec import process
from filerexec.notify import Request, command_env, json_request, kind, message, ntfy_request, title

TIMEOUT = 15.0  # seconds one attempt may take (connect, send, answer; or a program's run)


class DeliveryError(Exception):
    """A target did not take the event: why, in a sentence."""


def apprise_available() -> bool:
    return importlib.util.find_spec("apprise") is not None


def send(url: str, event: Mapping[str, Any], timeout: float = TIMEOUT) -> str:
    """Send ``event`` to the target ``url``; the receiver's answer, or DeliveryError."""
    how = kind(url)
    if how == "ntfy":
        return _post(ntfy_request(url, event), timeout)
    if how == "json":
        return _post(json_request(url, event), timeout)
    if how == "command":
        return _command(url, event, timeout)
    return _apprise(url, event)


def _post(req: Request, timeout: float) -> str:
    url = req.url
    request = urllib.request.Request(url, data=req.body, headers=dict(req.headers),
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read(300).decode("utf-8", "replace").strip()
            return f"HTTP {answer.status} {answer.reason}" + (f": {body}" if body else "")
    except urllib.error.HTTPError as e:
        body = e.read(300).decode("utf-8", "replace").strip()
        raise DeliveryError(f"HTTP {e.code} {e.reason}" + (f": {body}" if body else "")) from None
    except urllib.error.URLError as e:
        raise DeliveryError(f"cannot reach {_where(url)}: {e.reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, a malformed URL
        raise DeliveryError(f"cannot send to {_where(url)}: {e}") from None


def _where(url: str) -> str:
    """The URL without its path and credentials (a topic or token is a secret)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _command(url: str, event: Mapping[str, Any], timeout: float) -> str:
    argv = shlex.split(url.split(":", 1)[1])
    if not argv:
        raise DeliveryError("command: names no program")
    try:
        code, output = process.run_hook(argv, command_env(event), timeout)
    except OSError as e:
        raise DeliveryError(f"cannot run {argv[0]}: {e.strerror or e}") from None
    if code != 0:
        raise DeliveryError(f"{argv[0]} exited with {code}" + (f": {output}" if output else ""))
    return f"{argv[0]} exited with 0" + (f": {output}" if output else "")


def _apprise(url: str, event: Mapping[str, Any]) -> str:
    scheme = url.split(":", 1)[0]
    if not apprise_available():
        raise DeliveryError(f"{scheme}:// needs Apprise: pip install 'filerexec[notify]'")
    with warnings.catch_warnings():  # Apprise's plugins import imghdr, deprecated in 3.11
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        notifier = apprise.Apprise()
        if not notifier.add(url):
            raise DeliveryError(f"Apprise does not understand this {scheme}:// URL")
        if not notifier.notify(body=message(event), title=title(event)):
            raise DeliveryError(f"Apprise could not send to {scheme}:// (see the daemon's log)")
    return f"sent through Apprise ({scheme}://)"
