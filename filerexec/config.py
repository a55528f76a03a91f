"""Settings of one daemon: defaults ← config file ← environment ← command-line flags.

The config file is YAML in platformdirs' user config directory
(``~/.config/filerexec/config.yaml`` on Linux), or wherever ``FILEREXEC_CONFIG``
or ``--config`` points. Every key is declared once, in ``KEYS``: its parser,
default and command-line flag; ``resolve`` layers the sources and remembers
where each value came from (``filerexec config show`` prints that).

Where the host keeps its private state: platformdirs' state directory (or
``--state-dir`` / ``FILEREXEC_STATE_DIR``), one sub-folder per spool, so one
host can serve several spools and two daemons never share a ledger.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from filerexec import APP
from filerexec.slurmspec import SlurmConfig
from filerexec.slurmspec import parse_config as parse_slurm
from filerexec.spec import MAX_JOB_BYTES, SpecError, parse_duration
from filerexec.speckeys import TARGET_NAME
from filerexec.syncthing import SyncthingConfig
from filerexec.syncthing import parse_config as parse_syncthing

CONFIG_VAR = "FILEREXEC_CONFIG"
STATE_VAR = "FILEREXEC_STATE_DIR"
DAY = 86400.0


def default_host() -> str:
    """This machine's short host name: what ``host:`` in a job file is matched against."""
    return socket.gethostname().split(".")[0] or "localhost"


def state_base(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get(STATE_VAR)
    return Path(env) if env else Path(platformdirs.user_state_dir(APP))


def spool_state_dir(base: Path, spool: Path) -> Path:
    """The state folder of one spool: readable name plus a hash of its absolute path."""
    resolved = str(spool.resolve())
    tag = re.sub(r"[^A-Za-z0-9._-]", "_", spool.resolve().name)[:40] or "spool"
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:10]
    return base / "spools" / f"{tag}-{digest}"


# The one table of defaults: Settings, the config keys (KEYS) and the machine's Timing
# read it, so a default is changed in one place.
DEFAULTS: dict[str, Any] = {
    "poll": False,  # no filesystem events: rely on the rescan, every poll_interval
    "rescan_interval": 10.0,
    "poll_interval": 1.0,
    "heartbeat_interval": 30.0,
    "max_parallel": 16,
    "delete_grace": 2.0,
    "kill_grace": 5.0,
    "settle": 1.0,  # a file written in place is read once it stayed still this long
    "log_cap": 1024 * 1024,
    "max_job_bytes": MAX_JOB_BYTES,
    "retention": 7 * DAY,  # a deleted job's status and log are removed this long after
    "require_signature": False,  # only signed jobs run (signing.py)
    "allow": (),  # command patterns this host runs (policy.py); empty: any
    "key_dir": None,  # trusted keys; None: keys/ beside the config file
    "totp_window": 300.0,  # how old a phone's code may be when its job is read
    "storm_starts": 5,  # more daemon starts than this within storm_window → safe mode
    "storm_window": 120.0,
    "notify": (),  # notification targets: (name, Apprise-style URL) pairs (DESIGN §9)
    "notify_default": (),  # targets of jobs that name none
    "notify_on": ("failed", "killed", "lost", "expired", "rejected"),  # states that notify
    "notify_log_tail": 10,  # log lines an event carries (0: none)
    "notify_retry": 10.0,  # a failing target is tried again after this, doubling
    "shell": None,  # of jobs that name none; None: /bin/sh (cmd.exe on Windows)
    "labels": (),  # what else this host answers to in a job's `host:` (DESIGN §12)
    "executor": "local",  # local | slurm: each run an sbatch submission (DESIGN §11)
    "slurm": SlurmConfig(),
    "syncthing": None,  # ask the local Syncthing to scan status/HOST/ after writes (DESIGN §13)
}
_D = DEFAULTS


@dataclass(frozen=True, slots=True)
class Settings:
    spool: Path
    host: str
    state_dir: Path  # this spool's own state folder (ledger, lock, raw run output)
    poll: bool = _D["poll"]
    rescan_interval: float = _D["rescan_interval"]
    poll_interval: float = _D["poll_interval"]
    heartbeat_interval: float = _D["heartbeat_interval"]
    max_parallel: int = _D["max_parallel"]
    delete_grace: float = _D["delete_grace"]
    kill_grace: float = _D["kill_grace"]
    settle: float = _D["settle"]
    log_cap: int = _D["log_cap"]
    max_job_bytes: int = _D["max_job_bytes"]
    retention: float = _D["retention"]
    require_signature: bool = _D["require_signature"]
    allow: tuple[str, ...] = _D["allow"]
    key_dir: Path | None = _D["key_dir"]
    totp_window: float = _D["totp_window"]
    storm_starts: int = _D["storm_starts"]
    storm_window: float = _D["storm_window"]
    notify: tuple[tuple[str, str], ...] = _D["notify"]
    notify_default: tuple[str, ...] = _D["notify_default"]
    notify_on: tuple[str, ...] = _D["notify_on"]
    notify_log_tail: int = _D["notify_log_tail"]
    notify_retry: float = _D["notify_retry"]
    shell: str | None = _D["shell"]
    labels: tuple[str, ...] = _D["labels"]
    executor: str = _D["executor"]
    slurm: SlurmConfig = _D["slurm"]
    syncthing: SyncthingConfig | None = _D["syncthing"]

    @property
    def targets(self) -> dict[str, str]:
        """Notification targets by name."""
        return dict(self.notify)

    @property
    def jobs_dir(self) -> Path:
        return self.spool / "jobs"

    @property
    def job_shell(self) -> str:
        """The shell of jobs that name none: ``shell``, else the platform's."""
        from filerexec.process import default_shell  # lazily: TAB completion reads config

        return self.shell or default_shell()

    @property
    def scan_interval(self) -> float:
        return self.poll_interval if self.poll else self.rescan_interval


# --- the config file ----------------------------------------------------------


class ConfigError(ValueError):
    """A config file or value that cannot be used: which file, which line, which key."""

    def __init__(self, message: str, path: Path | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message, self.path, self.line = message, path, line

    def __str__(self) -> str:
        where = "" if self.path is None else f"config file {self.path}"
        if self.line is not None:
            where += f", line {self.line}"
        return f"{where}: {self.message}" if where else self.message


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(value: object) -> int:
    """Bytes in a size: a plain number of bytes, or text such as 512KiB, 1MiB, 1.5GiB."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) and len(value) <= 32 else None
    if match is None:
        raise ValueError(f"{value!r} is not a size: write e.g. 1048576, 512KiB or 1MiB")
    return int(float(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()])


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except SpecError as e:  # same words as in a job file, but a config error here
        raise ValueError(str(e)) from None


def _interval(value: object) -> float:
    seconds = _duration(value)
    if seconds < 0.1:  # zero would make the daemon spin
        raise ValueError(f"{value!r} is too short: at least 0.1s")
    return seconds


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a whole number of at least 1, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"must be a whole number of at least 1, not {value!r}") from None
    if number < 1:
        raise ValueError(f"must be a whole number of at least 1, not {value!r}")
    return number


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ValueError(f"must be a non-empty text, not {value!r}")
    return str(value).strip()


def _path(value: object) -> Path:
    return Path(os.path.expanduser(_text(value)))


def _texts_or_none(value: object) -> tuple[str, ...]:
    return () if value == [] or value is None else _texts(value)


def _texts(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"must be a list of texts, not {value!r}")
    return tuple(_text(item) for item in items)


def _executor(value: object) -> str:
    if value not in ("local", "slurm"):
        raise ValueError(f"must be local or slurm, not {value!r}")
    return str(value)
def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number of at least 0, not {value!r}")
    return value


def _targets(value: object) -> tuple[tuple[str, str], ...]:
    """``name: URL`` lines: where notifications go (their URLs carry tokens)."""
    if not isinstance(value, dict):
        raise ValueError("must be `name: URL` lines, e.g. `phone: ntfys://ntfy.sh/TOPIC`")
    pairs = []
    for name, url in value.items():
        if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a target name (letters, digits, _ . -)")
        if not isinstance(url, str) or ":" not in url:
            raise ValueError(f"target {name}: {url!r} is not a URL such as "
                             "ntfys://ntfy.sh/TOPIC or command:/path/to/program")
        pairs.append((name, url.strip()))
    return tuple(sorted(pairs))


def _states(value: object) -> tuple[str, ...]:
    from filerexec.notify import EVENTS  # the machine, which notify uses, reads DEFAULTS here

    states = _texts(value) if value != [] else ()
    for state in states:
        if state not in EVENTS:
            raise ValueError(f"{state!r} is not a state a job comes to rest in (the states: "
                             f"{', '.join(EVENTS)})")
    return states


def _labels(value: object) -> tuple[str, ...]:
    """Host labels: names a job's `host:` may use; each one word, duplicates dropped."""
    labels: dict[str, str] = {}
    for label in _texts(value):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
            raise ValueError(f"{label!r} is not a label: letters, digits, '.', '_', '-'")
        labels.setdefault(label.casefold(), label)
    return tuple(labels.values())


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: how to read it, its help, and its command-line flag (if any)."""

    name: str
    parse: Callable[[object], Any]
    help: str
    flag: str | None = None

    @property
    def default(self) -> Any:
        """From the one table of defaults (None: decided at run time, e.g. the host name)."""
        return DEFAULTS.get(self.name)

    @property
    def metavar(self) -> str:
        """How the flag's value is named in ``--help``."""
        kinds: dict[Callable[[object], Any], str] = {
            _duration: "DURATION", _interval: "DURATION", parse_size: "SIZE", _positive_int: "N",
            _path: "DIR", _texts: "PATTERN", _labels: "LABEL"}
        return kinds.get(self.parse, "NAME")

    def show(self, value: Any) -> Any:
        """The value as a person would write it in the config file."""
        if value is None:
            return None
        if isinstance(value, SyncthingConfig):
            return value.shown() or True
        if isinstance(value, SlurmConfig):
            return value.shown()
        if self.parse in (_duration, _interval):
            return _human_duration(value)
        if self.parse is parse_size:
            return _human_size(value)
        if self.parse is _targets:
            return dict(value)
        return str(value) if isinstance(value, Path) else (
            list(value) if isinstance(value, tuple) else value)


# The one list of settings. Names are an interface (DESIGN §7): keep them.
KEYS: tuple[Key, ...] = (
    Key("spool", _path, "the spool served when no SPOOL is given"),
    Key("host", _text, "this host's name (default: the OS host name)", "--host"),
    Key("state_dir", _path, "private state: ledger, lock, raw output", "--state-dir"),
    Key("poll", _bool, "no file events (network shares): list jobs/ every second",
        "--poll"),
    Key("max_parallel", _positive_int, "jobs running at once", "--max-parallel"),
    Key("rescan_interval", _interval, "periodic rescan of jobs/", "--rescan"),
    Key("heartbeat_interval", _interval, "host.yaml refresh", "--heartbeat"),
    Key("delete_grace", _duration, "a job file must stay absent this long to count "
        "as deleted", "--delete-grace"),
    Key("kill_grace", _duration, "TERM, then KILL after this long", "--kill-grace"),
    Key("log_cap", parse_size, "a job's log keeps its last this many bytes",
        "--log-cap"),
    Key("retention", _duration, "a deleted job's status and log are removed after "
        "this long", "--retention"),
    Key("require_signature", _bool, "run only signed jobs or jobs with a phone code",
        "--require-signature"),
    Key("allow", _texts, "run only command lines matching these wildcard patterns "
        "(README, Security); none: any", "--allow"),
    Key("key_dir", _path, "trusted keys (default: keys/ beside the config file)"),
    Key("totp_window", _duration, "how old a phone's code may be when its job is read"),
    Key("storm_starts", _positive_int, "more daemon starts than this within storm_window "
        "mean safe mode (README, What happens when things fail)", "--storm-starts"),
    Key("storm_window", _interval, "see storm_starts", "--storm-window"),
    Key("notify", _targets, "notification targets, `name: URL` (README, Notifications)"),
    Key("notify_default", _texts_or_none, "targets of jobs that name none"),
    Key("notify_on", _states, "the states that notify"),
    Key("notify_log_tail", _count, "log lines a notification carries (0: none)"),
    Key("notify_retry", _interval, "a failing notification target is tried again after "
        "this long, doubling up to 15 minutes"),
    Key("shell", _text, "the shell of jobs that name none (default: /bin/sh; cmd.exe on "
        "Windows); published in host.yaml, so that submit quotes for it"),
    Key("labels", _labels, "labels a job's `host:` may name instead of this host's name "
        "(README, Fleets)", "--label"),
    Key("executor", _executor, "where runs go: local, or slurm (README, Running jobs on a "
        "Slurm cluster)", "--executor"),
    Key("slurm", parse_slurm, "with executor slurm: partition, sbatch_args, allow, poll"),
    Key("syncthing", parse_syncthing, "ask the local Syncthing to scan status/HOST/ at once "
        "after writing there: true, or api, api_key, home, folder (README, Syncthing)"),
)
KEY_NAMES = tuple(k.name for k in KEYS)
_BY_NAME = {k.name: k for k in KEYS}


def config_path(explicit: Path | None = None,
                environ: Mapping[str, str] = os.environ) -> tuple[Path, str | None]:
    """The config file to read, and what named it (None: the platform's default place)."""
    if explicit is not None:
        return explicit, "--config"
    if environ.get(CONFIG_VAR):
        return Path(environ[CONFIG_VAR]), CONFIG_VAR
    return Path(platformdirs.user_config_dir(APP)) / "config.yaml", None


def parse_config(text: str, path: Path | None = None) -> dict[str, tuple[Any, int]]:
    """Every key of a config file's text: its parsed value and its line. Raises ConfigError."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"this is not valid YAML ({problem})", path,
                          None if mark is None else mark.line + 1) from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        raise ConfigError("the file must be a mapping of `key: value` lines", path,
                          root.start_mark.line + 1)
    found: dict[str, tuple[Any, int]] = {}
    for key_node, _ in root.value:
        name, line = str(key_node.value), key_node.start_mark.line + 1
        if name in found:
            raise ConfigError(f"`{name}` is set twice (also on line {found[name][1]})", path, line)
        key = _BY_NAME.get(name)
        if key is None:
            close = difflib.get_close_matches(name, KEY_NAMES, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else (
                f"; known keys: {', '.join(KEY_NAMES)}")
            raise ConfigError(f"unknown key `{name}`{hint}", path, line)
        try:
            value = key.parse(data[key_node.value])
        except ValueError as e:
            raise ConfigError(f"`{name}`: {e}", path, line) from None
        if isinstance(value, Path) and path is not None and not value.is_absolute():
            value = path.parent / value  # relative to the config file, not to wherever we run
        found[name] = (value, line)
    return found


@dataclass(frozen=True, slots=True)
class Effective:
    """Every setting's value and where it came from, before a spool is chosen."""

    values: dict[str, Any]
    sources: dict[str, str]
    config: Path
    config_found: bool
    config_named_by: str | None = None  # "--config" or FILEREXEC_CONFIG; None: default place

    def settings(self) -> Settings:
        """The daemon's settings; raises ConfigError when no spool is named anywhere."""
        spool = self.values["spool"]
        if spool is None:
            raise ConfigError(f"no SPOOL given, and no `spool:` in {self.config}")
        spool = Path(spool).resolve()
        extra = {k: self.values[k] for k in KEY_NAMES if k not in ("spool", "host", "state_dir")}
        return Settings(spool=spool, host=self.values["host"],
                        state_dir=spool_state_dir(self.values["state_dir"], spool), **extra)


def resolve(flags: Mapping[str, Any], config: Path | None = None,
            environ: Mapping[str, str] = os.environ) -> Effective:
    """Defaults ← config file ← environment ← flags (a flag set to None is not given)."""
    path, named_by = config_path(config, environ)
    values = {k.name: k.default for k in KEYS}
    sources = dict.fromkeys(KEY_NAMES, "default")
    values["host"] = default_host()
    values["state_dir"] = Path(platformdirs.user_state_dir(APP))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named_by is not None:  # a typo in an explicit path must not silently mean defaults
            raise ConfigError(f"it does not exist (named by {named_by})",
                              path) from None
        text = None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read it: {e}", path) from None
    for name, (value, _line) in (parse_config(text, path) if text is not None else {}).items():
        values[name], sources[name] = value, f"config file {path}"
    if environ.get(STATE_VAR):
        values["state_dir"], sources["state_dir"] = Path(environ[STATE_VAR]), STATE_VAR
    for name, value in flags.items():
        if value is not None:
            key = _BY_NAME[name]
            values[name], sources[name] = value, f"flag {key.flag}" if key.flag else "argument"
    return Effective(values, sources, path, text is not None, named_by)


def describe(effective: Effective) -> str:
    """What ``filerexec config show`` prints: every key, its value and its source."""
    state = "" if effective.config_found else " (not found: defaults apply)"
    lines = [f"# config file: {effective.config}{state}"]
    for key in KEYS:
        value = effective.values[key.name]
        # One flow-style line per key: valid YAML to paste into the config file.
        shown = yaml.safe_dump({key.name: key.show(value)}, default_flow_style=True,
                               width=1000).strip()[1:-1]
        lines.append(f"{shown}  # {effective.sources[key.name]}")
    return "\n".join(lines) + "\n"


def _human_duration(seconds: float) -> str:
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _human_size(size: int) -> str | int:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return size
