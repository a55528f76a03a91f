"""Converters of the job keys of DESIGN §10 (``retry:``, ``every:``, ``after:``…) and §11
(``slurm:``), beside spec.py's own.

Each converter takes the key and its YAML node and returns the JobSpec field's
value. A wrong value as a whole raises ValueError (spec.py reports it at the
value, with what a right value is); a wrong part of it raises NodeError, which
spec.py reports where that part is written.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from filerexec.retry import TIMEOUT, RetryPolicy
from filerexec.schedule import CATCH_UP, OVERLAP, Schedule, cron_expression
from filerexec.slurmspec import JOB_KEYS as SLURM_KEYS
from filerexec.slurmspec import time_limit

if TYPE_CHECKING:
    from filerexec.spec import SpecError

_NULL = "tag:yaml.org,2002:null"
_CRON_HINT = "five fields: minute hour day month weekday, e.g. \"0 3 * * 1-5\", or @daily"
_RETRY_HINT = "write e.g. `retry: 2`, or `retry: {max: 2, on: [1, timeout], delay: 30s}`"
TARGET_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a notification target's name (host config)
_NOTIFY_HINT = "write e.g. `notify: phone`, `notify: [phone, ops]` or `notify: false`"
_NO_TARGETS = frozenset({"false", "no", "off", "none"})  # `notify: false`: no notifications


class NodeError(ValueError):
    """A wrong part of a value: reported at ``node``'s line and column."""

    def __init__(self, message: str, node: Node, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.node, self.hint = message, node, hint


def _text(node: Node) -> str:
    if not isinstance(node, ScalarNode) or node.tag == _NULL:
        raise ValueError("not a single value")
    return str(node.value).strip()


def _count(node: Node, what: str) -> int:
    text = _text(node)
    if not re.fullmatch(r"[0-9]{1,3}", text):
        raise NodeError(f"{what} must be a whole number from 0 to 999, not {text!r}", node,
                        _RETRY_HINT)
    return int(text)


def _exit_codes(node: Node) -> tuple[int | str, ...]:
    items = node.value if isinstance(node, SequenceNode) else [node]
    codes: list[int | str] = []
    for item in items:
        text = _text(item) if isinstance(item, ScalarNode) else ""
        if text.casefold() == TIMEOUT:
            codes.append(TIMEOUT)
        elif re.fullmatch(r"[0-9]{1,3}", text) and 0 < int(text) < 256:
            codes.append(int(text))
        else:
            raise NodeError(f"`retry` `on` must list exit codes (1 to 255) or timeout, "
                            f"not {text or 'a list'!r}", item, "write e.g. `on: [1, 75, timeout]`")
    if not codes:
        raise NodeError("`retry` `on` lists nothing", node, "write e.g. `on: [1, timeout]`")
    return tuple(dict.fromkeys(codes))


def _delay(node: Node) -> float:
    from filerexec.spec import parse_duration  # spec.py imports this module

    try:
        return parse_duration(_text(node))
    except ValueError:
        raise NodeError(f"`retry` `delay` must be a duration, not {node.value!r}", node,
                        "write e.g. 30s, 5m or 1h") from None


def _backoff(node: Node) -> float:
    text = _text(node)
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 100:
        raise NodeError(f"`retry` `backoff` must be a number from 1 to 100, not {text!r}", node,
                        "write e.g. `backoff: 2` to double the delay each time")
    return value


_RETRY_PARTS: dict[str, Callable[[Node], Any]] = {
    "max": lambda node: _count(node, "`retry` `max`"), "on": _exit_codes, "delay": _delay,
    "backoff": _backoff}


def retry(key: str, node: Node) -> RetryPolicy:
    """``retry: 2`` or ``retry: {max: 2, on: [1, timeout], delay: 30s, backoff: 2}``."""
    if isinstance(node, ScalarNode):
        return RetryPolicy(max=_count(node, f"`{key}`"))
    if not isinstance(node, MappingNode):
        raise ValueError("not a count or a mapping")
    parts: dict[str, Any] = {}
    for name_node, value_node in node.value:
        name = _text(name_node).casefold() if isinstance(name_node, ScalarNode) else ""
        if name not in _RETRY_PARTS or name in parts:
            raise NodeError(f"`{key}` has an unknown or repeated setting {name or '?'!r}",
                            name_node, "the settings are max, on, delay and backoff")
        parts[name] = _RETRY_PARTS[name](value_node)
    if "max" not in parts:
        raise NodeError(f"`{key}` needs `max`, the number of retries", node, _RETRY_HINT)
    return RetryPolicy(**parts)


def slurm(key: str, node: Node) -> tuple[tuple[str, str], ...]:
    """``slurm:`` (DESIGN §11): what sbatch is asked for; each key one of JOB_KEYS."""
    from filerexec.spec import parse_duration  # spec.py imports this module

    if not isinstance(node, MappingNode):
        raise ValueError("not a mapping")
    found: dict[str, str] = {}
    for name_node, value_node in node.value:
        name = str(name_node.value) if isinstance(name_node, ScalarNode) else ""
        if name not in SLURM_KEYS:
            raise NodeError(f"`{key}` has no key {name!r}", name_node,
                            f"known: {', '.join(SLURM_KEYS)}")
        try:
            value = _text(value_node)
        except ValueError:
            raise NodeError(f"`{key}` {name} must be a single value", value_node) from None
        if name == "time":
            value = time_limit(parse_duration(value))
        elif not re.fullmatch(r"[A-Za-z0-9_.:,=+-]+", value):
            raise NodeError(f"`{key}` {name} {value!r} is not a Slurm value", value_node,
                            "letters, digits and . _ : , = + - only")
        found[name] = value
    return tuple(sorted(found.items()))


def _every(key: str, node: Node) -> float:
    from filerexec.spec import parse_duration  # spec.py imports this module

    seconds = parse_duration(_text(node))
    if seconds < 1:
        raise ValueError("shorter than a second")
    return seconds


def _cron(key: str, node: Node) -> str:
    try:
        return cron_expression(_text(node))
    except ValueError as e:
        raise NodeError(f"`{key}`: {e}", node, _CRON_HINT) from None


def _timezone(key: str, node: Node) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = _text(node)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise NodeError(f"`{key}`: there is no time zone {name!r}", node,
                        "write a zone such as Europe/Zurich, America/New_York or UTC") from None
    return name


def _one_of(choices: tuple[str, ...]) -> Callable[[str, Node], str]:
    def convert(key: str, node: Node) -> str:
        value = _text(node).casefold()
        if value not in choices:
            raise ValueError(f"not one of {choices}")
        return value
    return convert


def _after(key: str, node: Node) -> tuple[str, ...]:
    """``after: nightly/db`` or a list: job names, as their files are named (a suffix such as
    ``.yaml`` may be written too)."""
    from filerexec.names import job_name

    items = node.value if isinstance(node, SequenceNode) else [node]
    found: dict[str, None] = {}
    for item in items:
        text = _text(item) if isinstance(item, ScalarNode) and item.tag != _NULL else ""
        name = job_name(text) or job_name(f"{text}.yaml") if text else None
        if name is None:
            raise NodeError(f"`{key}` must name jobs, not {text or 'this'!r}", item,
                            "write a job's name as its file is named, e.g. `after: nightly/db`")
        found[name] = None
    if not found:
        raise ValueError("no job names")
    return tuple(found)


def check_after(name: str, values: dict[str, Any], nodes: dict[str, Node]) -> None:
    """A job cannot wait for itself: reported where ``after:`` names it."""
    if name not in values.get("after", ()):
        return
    node = nodes["after"]
    items = node.value if isinstance(node, SequenceNode) else [node]
    at = next((i for i in items if _after("after", i) == (name,)), node)
    raise NodeError(f"`after:` names this job itself ({name}), so it could never run", at,
                    "name the jobs it must wait for, or remove `after:`")
@dataclass(frozen=True, slots=True)
class Targets:
    """A job file's ``notify:`` (DESIGN §9): target names, and where each is written, so
    that a name the host lacks (known only where the job runs) is reported there."""

    names: tuple[str, ...]
    at: tuple[tuple[int, int], ...] = field(default=(), compare=False)


def _shown(node: Node) -> str:
    """A wrong item as a person reads it: its text, or what kind of value it is."""
    if isinstance(node, ScalarNode):
        return repr(str(node.value).strip()) if node.tag != _NULL else "empty"
    return "a list" if isinstance(node, SequenceNode) else "`key: value` lines"


def notify(key: str, node: Node) -> Targets:
    """``notify: phone``, ``notify: [phone, ops]``, or ``notify: false`` (none; also
    ``[]``, ``no``, ``none``)."""
    if isinstance(node, ScalarNode) and _text(node).casefold() in _NO_TARGETS:
        return Targets(())
    if isinstance(node, ScalarNode) and node.tag.endswith(":bool"):  # true, yes, on
        raise NodeError(f"`{key}: {node.value}` does not say which target", node,
                        "leave `notify:` out for the host's notify_default, or name a target")
    items = node.value if isinstance(node, SequenceNode) else [node]
    found: dict[str, tuple[int, int]] = {}
    for item in items:
        name = _text(item) if isinstance(item, ScalarNode) and item.tag != _NULL else ""
        if not TARGET_NAME.fullmatch(name):
            raise NodeError(f"`{key}` must name a notification target, not {_shown(item)}",
                            item, _NOTIFY_HINT)
        found.setdefault(name, (item.start_mark.line + 1, item.start_mark.column + 1))
    return Targets(tuple(found), tuple(found.values()))


def unknown_target(targets: Targets | None, known: Collection[str]) -> SpecError | None:
    """The first name ``notify:`` gives that is not one of the host's ``known`` targets, as a
    SpecError where it is written (only the host running the job knows them); else None."""
    from filerexec.spec import SpecError  # spec.py imports this module

    for name, (line, column) in zip(targets.names if targets else (),
                                    targets.at if targets else (), strict=True):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            return SpecError(
                f"`notify` names the target `{name}`, which this host does not have "
                f"(its targets: {', '.join(sorted(known)) or 'none'})", line, column,
                f"did you mean `{close[0]}`?" if close else "name one of those" if known
                else "remove `notify:`, or ask the host's owner to add the target")
    return None


def notify_on(key: str, node: Node) -> tuple[str, ...]:
    """``notify_on: [failed, succeeded]``: the states whose events this job sends."""
    from filerexec.notify import EVENTS  # spec.py is imported by what notify.py imports

    items = node.value if isinstance(node, SequenceNode) else [node]
    states: list[str] = []
    for item in items:
        state = _text(item).casefold() if isinstance(item, ScalarNode) else ""
        if state not in EVENTS:
            raise NodeError(f"`{key}`: {_shown(item)} is not a state a job comes to rest in",
                            item, f"the states: {', '.join(EVENTS)}")
        states.append(state)
    return tuple(dict.fromkeys(states))


def check_together(values: dict[str, Any], nodes: dict[str, Node]) -> None:
    """What one key says about another: one schedule, and its settings only with one."""
    if "every" in values and "cron" in values:
        raise NodeError("a job has `every:` or `cron:`, not both", nodes["cron"],
                        "remove one of them")
    scheduled = "every" in values or "cron" in values
    for key in ("timezone", "catch_up", "overlap"):
        if key in values and not scheduled:
            raise NodeError(f"`{key}` is for a job with `every:` or `cron:`", nodes[key],
                            "add `every: 1h` or `cron: \"0 3 * * *\"`, or remove it")
    if "timezone" in values and "every" in values:
        raise NodeError("`timezone` is for `cron:` times; `every:` counts seconds",
                        nodes["timezone"], "remove it")


def schedule(spec: Any) -> Schedule | None:
    """A JobSpec's schedule, or None."""
    if spec.every is None and spec.cron is None:
        return None
    return Schedule(spec.every, spec.cron, spec.timezone, spec.catch_up, spec.overlap)


def digest_parts(spec: Any) -> dict[str, Any]:
    """The §10 and §11 keys' part of a JobSpec's digest: only those set, so that a job without
    them keeps the digest it always had."""
    sched = schedule(spec)
    parts = {"retry": spec.retry.canonical() if spec.retry is not None else None,
             "slurm": sorted(spec.slurm) or None, "after": list(spec.after) or None,
             "schedule": None if sched is None else [sched.every, sched.cron, sched.timezone,
                                                      sched.catch_up, sched.overlap]}
    return {key: value for key, value in parts.items() if value is not None}


# key: (JobSpec field, converter, what a right value is, hint) — merged into spec._FIELDS
FIELDS: dict[str, tuple[str, Callable[[str, Node], Any], str, str | None]] = {
    "retry": ("retry", retry, "a number of retries, or {max, on, delay, backoff}", _RETRY_HINT),
    "slurm": ("slurm", slurm, "a mapping of sbatch settings",
              "write e.g. `slurm: {partition: gpu, cpus: 4}`"),
    "every": ("every", _every, "a duration of a second or more", "write e.g. 30s, 15m, 2h, 1d"),
    "cron": ("cron", _cron, "a cron expression", _CRON_HINT),
    "timezone": ("timezone", _timezone, "a time zone", "e.g. Europe/Zurich"),
    "catch_up": ("catch_up", _one_of(CATCH_UP), "latest or none", None),
    "overlap": ("overlap", _one_of(OVERLAP), "skip, queue or kill", None),
    "after": ("after", _after, "a job name or a list of them", "e.g. `after: nightly/db`"),
    "notify": ("notify", notify, "a target name, a list of them, or false", _NOTIFY_HINT),
    "notify_on": ("notify_on", notify_on, "a list of states", "e.g. `notify_on: [failed]`"),
}
