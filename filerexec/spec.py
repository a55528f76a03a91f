"""Parse and validate one job file, purely: its content in, a frozen JobSpec or a SpecError out.

Job files are typed on phones, so every error says where (line and column, 1-based)
and what to do about it. The YAML is read as a stream of parser events and the node
tree is built here, not by PyYAML's composer: tags, anchors, aliases, deep nesting and
huge documents are refused as they stream in, before anything is constructed, and every
value keeps its position, so that a wrong value is reported where it is written.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = ["KEYS", "MAX_JOB_BYTES", "JobSpec", "SpecError", "parse_duration", "parse_job"]

MAX_JOB_BYTES = 64 * 1024
KEYS = frozenset({"commands", "operation", "stdout", "stderr", "host", "cwd", "env", "shell",
                  "timeout", "run", "not_after", "otp"})
# Left empty, these mean their default.
_OPTIONAL = frozenset({"cwd", "env", "shell", "timeout", "run", "not_after", "otp"})
_MAX_DEPTH = 6  # collections inside collections; a real job file needs 2 (file → env)
_MAX_NODES = 5000  # values in a file: more commands than anyone types, and cheap to read
_NULL = "tag:yaml.org,2002:null"
_QUOTE_IT = "a ': ' inside a command makes YAML read it as `key: value`: put the command in quotes"
_DURATION_HINT = "write e.g. 90s, 5m, 2h, 1h30m or 1d"


class SpecError(ValueError):
    """A job file that cannot be run: what is wrong, where (1-based), and what to do."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.line, self.column, self.hint = message, line, column, hint

    def __str__(self) -> str:
        text = self.message if self.hint is None else f"{self.message}. Hint: {self.hint}"
        if self.line is None:
            return text
        column = "" if self.column is None else f", column {self.column}"
        return f"line {self.line}{column}: {text}"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One validated job. An empty ``digest`` is computed from the other fields."""

    name: str
    commands: tuple[str, ...]
    operation: str = "start"
    stdout: bool = True
    stderr: bool = True
    hosts: tuple[str, ...] = ()
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    shell: str | None = None
    timeout: float | None = None
    run: str | None = None
    not_after: datetime | None = None
    otp: str | None = None  # a one-time code from a phone (signing.py); not in the digest
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", _digest(self))

    def targets(self, host: str) -> bool:
        """True if this job is meant for ``host``: no ``host:`` means every host."""
        return not self.hosts or host.casefold() in {h.casefold() for h in self.hosts}

    @property
    def short_digest(self) -> str:
        """The first 12 hex characters of the digest, as status files show it."""
        return self.digest[:12]


def _digest(spec: JobSpec) -> str:
    # What runs, and nothing else: operation, stdout and stderr say how, and changing
    # them must not start the job again. Values are normalised so that one meaning
    # written two ways (host case, env order, 90 vs 1m30s, time zones) is one digest.
    not_after = spec.not_after and spec.not_after.astimezone(UTC).isoformat()
    canonical = {"commands": list(spec.commands), "cwd": spec.cwd, "env": sorted(spec.env),
                 "hosts": sorted({h.casefold() for h in spec.hosts}), "not_after": not_after,
                 "run": spec.run, "shell": spec.shell, "timeout": spec.timeout}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# ---- from bytes to a node tree ------------------------------------------------------------

_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as a line break
_TAB_INDENT = re.compile(r"^ *\t", re.MULTILINE)
_BAD_CHARACTERS = (  # (found where, what is wrong, what to do); {0} is the character
    (re.compile("\0"), "the file contains a NUL byte", "save the job as plain UTF-8 text"),
    (re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"),
     "the file contains an invisible character ({0!a})", "delete it, or retype the line"),
    # Phone keyboards turn " and ' into curly quotes, which YAML and the shell take as
    # letters: `commands: “ls”` would look for a program called “ls”.
    (re.compile("[\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f]"),
     "{0} is a curly quote, which YAML and the shell do not understand",
     "use straight quotes \" or ' (turn off Smart Punctuation)"),
)
_YAML_HINTS = (  # libyaml's words → what a person should do
    ("mapping values are not allowed", _QUOTE_IT),
    ("cannot start any token", "a value starting with @, ` or % must be put in quotes"),
    ("could not find expected ':'", "each setting is one line `key: value`"),
    ("end of stream", "a quote or a bracket is not closed"),
    ("did not find expected ','", "a bracket is not closed, or a ',' is missing"),
    ("expected alphabetic or numeric", "a value starting with * or & must be put in quotes"),
    ("nesting depth", "the file is nested too deeply"),
)


def _at(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counting lines as YAML does."""
    line, start = 1, 0
    for match in _BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1


def _error(message: str, where: Any, hint: str | None = None) -> SpecError:
    """An error at a node's or an event's start, or at a YAML mark."""
    mark = getattr(where, "start_mark", where)
    return SpecError(message, mark.line + 1, mark.column + 1, hint)


def _text_of(data: bytes | str) -> str:
    """The file's text; refused if too big, not UTF-8, or holding characters that mislead."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_JOB_BYTES:
        raise SpecError(f"the file is larger than {MAX_JOB_BYTES // 1024} KiB ({len(raw)} bytes)",
                        hint="run a script file from the job instead")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError("the file is saved as UTF-16", 1, 1, hint="save it as UTF-8")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        column = len(raw[start : exc.start].decode("utf-8", "replace")) + 1
        raise SpecError(f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02X})",
                        raw.count(b"\n", 0, exc.start) + 1, column, "save it as UTF-8") from None
    for pattern, message, hint in _BAD_CHARACTERS:
        if found := pattern.search(text):
            raise SpecError(message.format(found[0]), *_at(text, found.start()), hint)
    return text


def _yaml_error(text: str, exc: yaml.YAMLError) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = None if mark is None else mark.line + 1
    # A tab in an indentation is the likeliest cause of any error at or after it.
    if (tab := _TAB_INDENT.search(text)) and (line is None or _at(text, tab.end())[0] <= line):
        return SpecError("tab characters are not allowed for indentation",
                         *_at(text, tab.end() - 1), hint="use spaces to indent")
    problem = str(getattr(exc, "problem", None) or exc)
    hint = next((h for words, h in _YAML_HINTS if words in problem),
                "check the quotes, colons and indentation here")
    return SpecError(f"this is not valid YAML ({problem})", line,
                     None if mark is None else mark.column + 1, hint)


class _JobLoader(_BaseLoader):
    """A safe loader that builds the node tree itself, checking every parser event."""

    def compose_job(self) -> Node | None:
        """The one document's root node; None if the file holds no document at all."""
        self._nodes = 0
        self.get_event()  # stream start
        if self.check_event(yaml.StreamEndEvent):
            return None  # nothing but comments
        self.get_event()  # document start
        root = self._compose(0)
        self.get_event()  # document end
        if not self.check_event(yaml.StreamEndEvent):
            raise _error("the file holds a second YAML document", self.peek_event(),
                         hint="remove the line `---`: a job file is one document")
        return root

    def _compose(self, depth: int) -> Node:
        event: Any = self.get_event()  # typed loosely: libyaml's marks are a class of their own
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise _error(f"the file holds more than {_MAX_NODES} values", event)
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            # Refused outright, which is also what keeps "billion laughs" files cheap.
            raise _error("YAML anchors and aliases (&name, *name) are not allowed in a job file",
                         event, hint="write the value out; quote a value starting with & or *")
        if event.tag is not None:  # any tag, even !!str: nothing in a job file needs one
            shown = event.tag.replace("tag:yaml.org,2002:", "!!")
            raise _error(f"YAML tags such as `{shown}` are not allowed in a job file", event,
                         hint="remove it; quote a value starting with !")
        if isinstance(event, yaml.ScalarEvent):
            resolve: Any = self.resolve  # the implicit type: null, bool, int, timestamp, str
            marks: tuple[Any, Any] = (event.start_mark, event.end_mark)
            return ScalarNode(resolve(ScalarNode, event.value, event.implicit), event.value,
                              marks[0], marks[1], event.style or None)
        if depth >= _MAX_DEPTH:
            raise _error("the file is nested too deeply", event)
        is_list = isinstance(event, yaml.SequenceStartEvent)
        items: list[Any] = []
        while not self.check_event(yaml.SequenceEndEvent if is_list else yaml.MappingEndEvent):
            item = self._compose(depth + 1)
            items.append(item if is_list else (item, self._compose(depth + 1)))
        end: Any = self.get_event()
        return (SequenceNode if is_list else MappingNode)("", items, event.start_mark, end.end_mark)


# ---- one converter per key: a value's node in, a field's value out ------------------------
# A converter raises ValueError for a wrong value, which parse_job reports at the value as
# "`key` must be <what _FIELDS says>, not <the value>"; a converter that checks the items
# of a list or a mapping reports a wrong item itself, where that item is written.

def _describe(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return "empty" if node.tag == _NULL else repr(node.value[:60])
    kind = "list" if isinstance(node, SequenceNode) else "list of `key: value` lines"
    return f"a {kind}" if node.value else f"an empty {kind}"


def _word(key: str, node: Node) -> str:
    """A single value's text as written, stripped (so `0755` stays 0755); "" if empty."""
    if not isinstance(node, ScalarNode):
        raise ValueError(f"`{key}` is not a single value")
    return "" if node.tag == _NULL else node.value.strip()


def _commands(key: str, node: Node) -> tuple[str, ...]:
    items = node.value if isinstance(node, SequenceNode) else [node]
    if not items:
        raise ValueError("no commands")
    for i, item in enumerate(items, 1):
        label = f"`{key}`" if item is node else f"item {i} of `{key}`"
        if not isinstance(item, ScalarNode):
            hint = _QUOTE_IT if isinstance(item, MappingNode) else None
            raise _error(f"{label} must be a command line, not {_describe(item)}", item, hint)
        if not item.value.strip() or item.tag == _NULL:
            raise _error(f"{label} is empty", item, hint="write the command to run, e.g. df -h")
        if item.style is None and item.end_mark.line > item.start_mark.line:
            # YAML joins an unquoted value's lines with spaces: "df -h⏎uptime" would run
            # "df -h uptime". Whoever wrote two lines meant two commands.
            raise _error(f"this command spans several lines, which YAML joins into one: "
                         f"{item.value!r}", item, hint="start each command with `- ` on its own "
                         "line under `commands:`, or write `commands: |` and indent the lines")
    return tuple(_word(key, item) for item in items)


_BOOLS = dict.fromkeys(("true", "yes", "on"), True) | dict.fromkeys(("false", "no", "off"), False)
_CHOICES: dict[str, dict[str, Any]] = {
    "operation": {"start": "start", "stop": "stop"}, "stdout": _BOOLS, "stderr": _BOOLS}


def _choice(key: str, node: Node) -> Any:
    value = _CHOICES[key].get(_word(key, node).casefold())  # "Stop": phones capitalise
    if value is None:
        raise ValueError(f"`{key}` is not one of {list(_CHOICES[key])}")
    return value


def _hosts(key: str, node: Node) -> tuple[str, ...]:
    items = node.value if isinstance(node, SequenceNode) else [node]
    if not items:
        raise ValueError("no hosts")  # never a quiet "every host", nor is an empty `host:`
    hosts: dict[str, str] = {}
    for item in items:
        text = _word(key, item) if isinstance(item, ScalarNode) else ""
        if not re.fullmatch(r"[^\s,]+", text):
            raise _error(f"`{key}` must be a host name, not {_describe(item)}", item,
                         hint="for several hosts write `host: [pc1, pc2]`")
        hosts.setdefault(text.casefold(), text)
    return tuple(sorted(hosts.values(), key=str.casefold))


def _env(key: str, node: Node) -> tuple[tuple[str, str], ...]:
    if not isinstance(node, MappingNode):
        raise ValueError(f"`{key}` is not a mapping")
    env: dict[str, str] = {}
    for name_node, value_node in node.value:
        name = _word(key, name_node) if isinstance(name_node, ScalarNode) else ""
        if name in env:
            raise _error(f"`{name}` is set twice in `{key}`", name_node, hint="keep one of them")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise _error(f"{_describe(name_node)} is not a valid environment variable name",
                         name_node, hint="use letters, digits and _, not starting with a digit")
        if not isinstance(value_node, ScalarNode) or value_node.tag == _NULL:
            raise _error(f"`{key}` {name} must be a single value, not {_describe(value_node)}",
                         value_node, hint=f"write `{name}: ''` for an empty value")
        env[name] = value_node.value  # as written: numbers and true/false stay text
    return tuple(sorted(env.items()))


def _timeout(key: str, node: Node) -> float:
    seconds = parse_duration(_word(key, node))  # the text as written: YAML reads 1:30 as 90
    if seconds <= 0:
        raise ValueError(f"`{key}` is not longer than zero")
    return seconds


def _otp(key: str, node: Node) -> str:
    code = re.sub(r"[ \t]", "", _word(key, node))  # authenticator apps show "123 456"
    if not re.fullmatch(r"[0-9]{6}", code):
        raise ValueError(f"`{key}` is not six digits")
    return code


def _not_after(key: str, node: Node) -> datetime:
    text = _word(key, node)
    try:  # a bare date lasts until the end of that day
        when = datetime.combine(date.fromisoformat(text), time.max)
    except ValueError:
        when = datetime.fromisoformat(text)
    when = when if when.tzinfo else when.astimezone()  # naive: the host's local time
    when.astimezone(UTC)  # out-of-range instants fail here, not in the digest
    return when


_FIELDS: dict[str, tuple[str, Callable[[str, Node], Any], str, str | None]] = {
    # key: (JobSpec field, converter, what a right value is, hint)
    "commands": ("commands", _commands, "a command line or a list of them", None),
    "operation": ("operation", _choice, "start or stop", None),
    "stdout": ("stdout", _choice, "true or false", None),
    "stderr": ("stderr", _choice, "true or false", None),
    "host": ("hosts", _hosts, "a host name or a list of them", "remove it to run on every host"),
    "cwd": ("cwd", _word, "a folder", None),
    "env": ("env", _env, "`NAME: value` lines", "write e.g. `env: {LANG: C}`"),
    "shell": ("shell", _word, "a program such as bash", None),
    "timeout": ("timeout", _timeout, "a duration longer than zero", _DURATION_HINT),
    "run": ("run", _word, "a single value such as 1", None),
    "not_after": ("not_after", _not_after, "a date and time like 2026-12-01T08:00:00+01:00", None),
    "otp": ("otp", _otp, "the six-digit code of your authenticator app", "e.g. `otp: 123456`"),
}


def _settings(root: Node) -> dict[str, Node]:
    """The top-level `key: value` pairs, each key checked."""
    if isinstance(root, ScalarNode):
        return {"commands": root}  # the whole file is the command: `df -h`
    if isinstance(root, SequenceNode):
        raise _error("the file is a list, but a job file is `key: value` lines", root,
                     hint="write `commands:` on the first line and indent the list below it")
    found: dict[str, Node] = {}
    for key_node, value_node in root.value:
        if not isinstance(key_node, ScalarNode):
            raise _error("a key must be a name like `commands`", key_node)
        key = key_node.value.casefold()  # phones capitalise the first word: Commands
        if key in found:
            raise _error(f"`{key}` is set twice", key_node, hint="keep one of them")
        if key not in KEYS:
            close = difflib.get_close_matches(key, sorted(KEYS), n=1)
            hint = (f"did you mean `{close[0]}`?" if close
                    else "a command containing ': ' must be quoted" if " " in key
                    else "the keys are " + ", ".join(sorted(KEYS)))
            raise _error(f"unknown key `{key_node.value}`", key_node, hint)
        found[key] = value_node
    if "commands" not in found:
        raise _error("the job has no `commands`", root,
                     hint="add a line `commands: …` with the command to run, e.g. `commands: ls`")
    return found


def parse_job(data: bytes | str, name: str) -> JobSpec:
    """Parse a job file's content into the JobSpec named ``name``; SpecError on any problem."""
    text = _text_of(data)
    loader = _JobLoader(text)
    try:
        root = loader.compose_job()
    except yaml.YAMLError as exc:
        raise _yaml_error(text, exc) from None
    finally:
        loader.dispose()
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
        raise SpecError("the file is empty: write the command to run, e.g. `commands: df -h`")
    values: dict[str, Any] = {}
    for key, node in _settings(root).items():
        field, convert, what, hint = _FIELDS[key]
        if key in _OPTIONAL and isinstance(node, ScalarNode) and not _word(key, node):
            continue  # `cwd: ~`, or `timeout:` with nothing after it: the default
        try:
            values[field] = convert(key, node)
        except (ValueError, OverflowError, OSError) as exc:
            if isinstance(exc, SpecError) and exc.line is not None:
                raise
            raise _error(f"`{key}` must be {what}, not {_describe(node)}", node, hint) from None
    return JobSpec(name=name, **values)


_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION = re.compile(rf"(?:\s*{_NUMBER}\s*[a-z]+)+\s*", re.IGNORECASE)
_DURATION_PART = re.compile(rf"({_NUMBER})\s*([a-z]+)", re.IGNORECASE)
_UNITS = {unit: seconds for seconds, units in (
    (1, "s sec secs second seconds"), (60, "m min mins minute minutes"),
    (3600, "h hr hrs hour hours"), (86400, "d day days")) for unit in units.split()}


def parse_duration(value: object) -> float:
    """Seconds in a duration: a number of seconds, or text such as 90s, 5m, 1h30m, 1.5h, 1d."""
    seconds = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 64:  # the length keeps the regexes cheap
        if re.fullmatch(rf"\s*{_NUMBER}\s*", value):
            seconds = float(value)
        elif _DURATION.fullmatch(value):
            parts = _DURATION_PART.findall(value)
            if all(unit.casefold() in _UNITS for _, unit in parts):
                seconds = sum(float(number) * _UNITS[unit.casefold()] for number, unit in parts)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise SpecError(f"{value!r} is not a duration", hint=_DURATION_HINT)
    return seconds
