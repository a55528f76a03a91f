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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from filerexec import characters, speckeys
from filerexec.retry import RetryPolicy
from filerexec.schedule import Schedule

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = ["KEYS", "MAX_JOB_BYTES", "JobSpec", "SpecError", "as_utf8", "decode_job",
           "parse_duration", "parse_job"]

MAX_JOB_BYTES = 64 * 1024
KEYS = frozenset({"commands", "operation", "stdout", "stderr", "host", "cwd", "env", "shell",
                  "timeout", "run", "not_after", "otp", *speckeys.FIELDS})
# Left empty, these mean their default.
_OPTIONAL = frozenset({"cwd", "env", "shell", "timeout", "run", "not_after", "otp",
                       *speckeys.FIELDS})
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
    retry: RetryPolicy | None = None  # DESIGN §10, from speckeys.py
    slurm: tuple[tuple[str, str], ...] = ()  # what sbatch is asked for (DESIGN §11)
    every: float | None = None
    cron: str | None = None
    timezone: str | None = None
    catch_up: str = "latest"
    overlap: str = "skip"
    after: tuple[str, ...] = ()  # run once these jobs' current versions succeeded (after.py)
    # Whom its events go to (DESIGN §9); None: the host's notify_default / notify_on. Not
    # in the digest: like stdout, they say how a result is reported, not what runs.
    notify: speckeys.Targets | None = None
    notify_on: tuple[str, ...] | None = None
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", _digest(self))

    def targets(self, host: str, labels: Iterable[str] = ()) -> bool:
        """True if this job is meant for ``host`` (or a host carrying one of ``labels``):
        ``host:`` matches names and labels alike, ignoring case; none means every host."""
        if not self.hosts:
            return True
        wanted = {h.casefold() for h in self.hosts}
        return any(n.casefold() in wanted for n in (host, *labels))

    @property
    def schedule(self) -> Schedule | None:
        """When its slots come, for a job with ``every:`` or ``cron:``; None for a one-off."""
        return speckeys.schedule(self)

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
                 "run": spec.run, "shell": spec.shell, "timeout": spec.timeout,
                 **speckeys.digest_parts(spec)}
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
    ("invalid Unicode character escape", "a \\u escape in double quotes must be a character"),
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


# A byte-order mark says which encoding a file is in (Windows PowerShell 5.1's `>` and
# Out-File write UTF-16 LE with one). UTF-32's marks come first: FF FE 00 00 also starts
# with UTF-16 LE's FF FE, but would make the first character a NUL, which no job holds.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32"),
         (b"\xff\xfe", "utf-16-le", "UTF-16"), (b"\xfe\xff", "utf-16-be", "UTF-16"),
         (b"\xef\xbb\xbf", "utf-8", "UTF-8"))


def decode_job(data: bytes | str) -> str:
    """A job file's text: UTF-8, or UTF-16/UTF-32 with a byte-order mark; SpecError if not.

    The mark itself is not part of the text, so that line 1, column 1 is the first
    character after it, whatever the encoding.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_JOB_BYTES:
        raise SpecError(f"the file is larger than {MAX_JOB_BYTES // 1024} KiB ({len(raw)} bytes)",
                        hint="run a script file from the job instead")
    bom, codec, label = next((b for b in _BOMS if raw.startswith(b[0])), (b"", "utf-8", "UTF-8"))
    body = raw[len(bom):]
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        before = body[: exc.start].decode(codec)  # the text up to the bad byte is good
        line, column = _at(before + "?", len(before))
        if codec != "utf-8":
            raise SpecError(f"the file is saved as {label}, but is damaged here", line, column,
                            "save it again, as UTF-8") from None
        raise SpecError(f"the file is not UTF-8 text (byte 0x{body[exc.start]:02X})",
                        line, column, "save it as UTF-8") from None


def as_utf8(data: bytes) -> bytes:
    """The file's bytes as UTF-8: as they are if they are not UTF-16 or UTF-32 with a mark.

    For `filerexec sign`, whose signature covers the bytes: a signature line appended
    to UTF-16 bytes would be read as garbage, so such a file is signed as UTF-8.
    """
    if any(data.startswith(bom) for bom, _, label in _BOMS if label != "UTF-8"):
        return decode_job(data).encode()
    return data


def _looks_like_utf16(text: str) -> bool:
    """Text with a NUL after (or before) nearly every character: UTF-16 without its mark."""
    nuls = max(text[0::2].count("\0"), text[1::2].count("\0"))
    return len(text) >= 4 and nuls * 2 >= len(text) - 1


def _text_of(data: bytes | str) -> str:
    """The file's text; refused if too big, not readable, or holding characters that mislead."""
    text = decode_job(data)
    if "\0" in text and _looks_like_utf16(text):
        raise SpecError("the file looks like UTF-16 text without a byte-order mark", 1, 1,
                        hint="save it as UTF-8 (or as UTF-16 with a byte-order mark)")
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


# Where YAML writers wrap a long unquoted value onto the next line: PyYAML, libyaml and
# SnakeYAML after the first word that passes column 80, ruamel.yaml before the word that
# would. Either way the line, a space and the next line's first word do not fit in 80
# columns. Lines a person breaks to mean several commands (`df -h⏎uptime`) are short.
WRITER_WIDTH = 80


def how_joined(lines: list[str], first: int, last: int, value: str) -> str | None:
    """How an unquoted value on lines ``first``..``last`` was broken: None where a YAML
    writer wraps; "by hand" where a person did; "spaces" where a writer wrapped at
    several spaces, which YAML reads back as one (ruamel.yaml does that).
    """
    if _BREAK.search(value):  # an empty line inside: a line break YAML keeps
        return "by hand"
    for number in range(first, min(last, len(lines) - 1)):
        line, next_word = lines[number], lines[number + 1].lstrip(" ").split(" ", 1)[0]
        if len(line.rstrip(" ")) + 1 + len(next_word) <= WRITER_WIDTH:
            return "by hand"
        if line.endswith("  "):
            return "spaces"
    return None


class _Scalar(ScalarNode):
    """A scalar node that knows how it was broken across the lines YAML joins."""

    joined: str | None = None  # see how_joined


class _JobLoader(_BaseLoader):
    """A safe loader that builds the node tree itself, checking every parser event."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._lines = _BREAK.split(text)

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
            node = _Scalar(resolve(ScalarNode, event.value, event.implicit), event.value,
                           marks[0], marks[1], event.style or None)
            # YAML joins an unquoted value's lines with spaces. Where a writer wrapped it,
            # that is what was meant; a break elsewhere, or an empty line, is a person's.
            if node.style is None and marks[1].line > marks[0].line:
                node.joined = how_joined(self._lines, marks[0].line, marks[1].line, event.value)
            return node
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
        joined = item.joined if isinstance(item, _Scalar) else None
        if joined == "spaces":
            raise _error(f"a YAML writer broke this command where it had several spaces, "
                         f"which YAML reads as one: {item.value!r}", item,
                         hint="have the program quote it, or not wrap lines")
        if joined == "by hand":
            # "df -h⏎uptime" would run "df -h uptime": whoever wrote two lines meant two
            # commands. (A program's YAML writer wrapping a long line meant one.)
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
    **speckeys.FIELDS,
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


# JSON writes a character beyond U+FFFF as two escapes (json.dumps("😀") is "\ud83d\ude00"),
# which YAML refuses; YAML writes it as one (\U0001f600). After that refusal, and only then,
# the pairs are rewritten (an odd number of backslashes before the `u` makes it an escape).
_SURROGATE_PAIR = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)
_SHORTER = len(r"\ud83d\ude00") - len(r"\U0001f600")


class _JSONEscapes(Exception):
    """YAML refused JSON's escapes of one character in two."""


def _compose(text: str, first_try: bool = True) -> Node | None:
    """The node tree of ``text``; SpecError, or _JSONEscapes on a first try that may be JSON."""
    loader = _JobLoader(text)
    try:
        return loader.compose_job()
    except yaml.YAMLError as exc:
        if first_try and "invalid Unicode character escape" in str(exc) \
                and _SURROGATE_PAIR.search(text):
            raise _JSONEscapes from None
        raise _yaml_error(text, exc) from None
    finally:
        loader.dispose()


def _join_json_escapes(text: str) -> tuple[str, list[tuple[int, int]]]:
    """``text`` with each pair rewritten, and where each one ends in the new text.

    The places are (line, column) pairs, 0-based, so that an error found in the new
    text can be moved back to where the file has it.
    """
    moved: list[tuple[int, int]] = []
    line, line_start, searched, on_line = 0, 0, 0, 0

    def rewrite(match: re.Match[str]) -> str:
        nonlocal line, line_start, searched, on_line
        for brk in _BREAK.finditer(text, searched, match.start()):  # each break seen once
            line, line_start, on_line = line + 1, brk.end(), 0
        searched = match.end()
        column = match.start() - line_start - _SHORTER * on_line + len(match[1])
        moved.append((line, column + len(r"\U0001f600")))
        on_line += 1
        code = 0x10000 + ((int(match[2], 16) - 0xD800) << 10) + int(match[3], 16) - 0xDC00
        return f"{match[1]}\\U{code:08x}"

    return _SURROGATE_PAIR.sub(rewrite, text), moved


def _moved_back(error: SpecError, moved: list[tuple[int, int]]) -> SpecError:
    """``error`` at its column in the file as written, before the escapes were rewritten."""
    if error.line is not None and error.column is not None:
        error.column += _SHORTER * sum(1 for line, end in moved
                                       if line == error.line - 1 and end <= error.column - 1)
    return error


def parse_job(data: bytes | str, name: str) -> JobSpec:
    """Parse a job file's content into the JobSpec named ``name``; SpecError on any problem."""
    text = _text_of(data)
    try:
        return _job(_compose(text), name)
    except _JSONEscapes:
        joined, moved = _join_json_escapes(text)
        try:
            return _job(_compose(joined, first_try=False), name)
        except SpecError as error:
            raise _moved_back(error, moved) from None


def _job(root: Node | None, name: str) -> JobSpec:
    """The JobSpec a file's node tree describes; SpecError at the value that is wrong."""
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
        raise SpecError("the file is empty: write the command to run, e.g. `commands: df -h`")
    values: dict[str, Any] = {}
    settings = _settings(root)
    for key, node in settings.items():
        field, convert, what, hint = _FIELDS[key]
        if found := characters.problem(key, node):  # what YAML's escapes wrote
            raise _error(found[1], found[0], found[2])
        if key in _OPTIONAL and isinstance(node, ScalarNode) and not _word(key, node):
            continue  # `cwd: ~`, or `timeout:` with nothing after it: the default
        try:
            values[field] = convert(key, node)
        except (ValueError, OverflowError, OSError) as exc:
            if isinstance(exc, speckeys.NodeError):
                raise _error(exc.message, exc.node, exc.hint) from None
            if isinstance(exc, SpecError) and exc.line is not None:
                raise
            raise _error(f"`{key}` must be {what}, not {_describe(node)}", node, hint) from None
    try:
        speckeys.check_together(values, settings)
        speckeys.check_after(name, values, settings)
    except speckeys.NodeError as exc:
        raise _error(exc.message, exc.node, exc.hint) from None
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
