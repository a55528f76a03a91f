"""Parsing job files: what is accepted, what each mistake says and where, and the digest."""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from filerexec.spec import KEYS, MAX_JOB_BYTES, JobSpec, SpecError, parse_duration, parse_job

DESIGN_EXAMPLE = """\
commands: ls /home/john; ls /etc > /home/john/ls-etc   # a shell line, or a list run in order
operation: start        # start (default) | stop: do not start; kill it if running
stdout: true            # capture stdout into the log (default true)
stderr: true            # capture stderr into the log (default true)
host: office-pc         # optional: a host name or a list; absent = every host
cwd: ~/projects         # optional; default the user's home
env: {LANG: C}          # optional extra environment
shell: bash             # optional; default /bin/sh on POSIX, cmd.exe on Windows
timeout: 2h             # optional; killed when it runs longer
run: 1                  # optional; change it to run unchanged commands again
not_after: 2026-12-01T08:00:00+01:00   # optional; a job that syncs in later is not run
"""


def error(source: str | bytes) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(source, "job")
    return caught.value


# ---- what is accepted -----------------------------------------------------------------------

def test_design_example() -> None:
    spec = parse_job(DESIGN_EXAMPLE, "backup")
    assert spec == JobSpec(
        name="backup", commands=("ls /home/john; ls /etc > /home/john/ls-etc",),
        hosts=("office-pc",), cwd="~/projects", env=(("LANG", "C"),), shell="bash",
        timeout=7200.0, run="1", not_after=datetime(2026, 12, 1, 7, 0, tzinfo=UTC),
        digest=spec.digest)
    assert len(spec.digest) == 64 and int(spec.digest, 16) >= 0
    assert spec.short_digest == spec.digest[:12]


@pytest.mark.parametrize("source", [
    "df -h", "df -h\n", "  df -h  # free space\n", "'df -h'", "\ufeffdf -h", b"\xef\xbb\xbfdf -h",
    "commands: df -h", "commands: [df -h]", "commands:\n  - df -h\n", "Commands: df -h",
])
def test_one_command_written_many_ways(source: str | bytes) -> None:
    assert parse_job(source, "j") == JobSpec(name="j", commands=("df -h",))


def test_defaults_and_empty_optional_values() -> None:
    source = "commands: ls\ncwd: ~\nenv:\nshell: ''\ntimeout:\nrun: null\nnot_after:\n"
    spec = parse_job(source, "j")
    assert spec == JobSpec(name="j", commands=("ls",))
    assert (spec.operation, spec.stdout, spec.stderr, spec.hosts) == ("start", True, True, ())


def test_values_are_taken_as_written() -> None:
    spec = parse_job("commands: [ls, 42, 2.50, true]\nrun: 1.10\n"
                     "env: {MODE: 0755, DEBUG: yes, NAME: ' x ', B: 1}\n", "j")
    assert spec.commands == ("ls", "42", "2.50", "true")
    assert spec.run == "1.10"  # not the float 1.1
    assert spec.env == (("B", "1"), ("DEBUG", "yes"), ("MODE", "0755"), ("NAME", " x "))


def test_a_block_of_lines_is_one_script() -> None:
    spec = parse_job("commands: |\n  cd /tmp\n  ls\n", "j")
    assert spec.commands == ("cd /tmp\nls",)


@pytest.mark.parametrize(("source", "operation", "stdout", "stderr"), [
    ("operation: stop\nstdout: false\nstderr: no", "stop", False, False),
    ("Operation: Stop\nStdout: off\nStderr: 'yes'", "stop", False, True),
    ("operation: START\nstdout: On\nstderr: TRUE", "start", True, True),
])
def test_choices_ignore_case(source: str, operation: str, stdout: bool, stderr: bool) -> None:
    spec = parse_job("commands: ls\n" + source, "j")
    assert (spec.operation, spec.stdout, spec.stderr) == (operation, stdout, stderr)


def test_hosts() -> None:
    assert parse_job("commands: ls\nhost: pi", "j").hosts == ("pi",)
    spec = parse_job("commands: ls\nhost: [Office-PC, laptop, office-pc]", "j")
    assert spec.hosts == ("laptop", "Office-PC")
    assert spec.targets("OFFICE-pc") and spec.targets("laptop") and not spec.targets("nas")
    assert JobSpec(name="j", commands=("ls",)).targets("anything")


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset to switch the local time zone")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-01T08:00:00+01:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
    ("2026-12-01T07:00:00Z", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
    ("'2026-12-01 08:00:00+01:00'", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
    ("2026-12-01 08:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),  # naive: local time
    ("2026-12-01", datetime(2026, 12, 1, 22, 59, 59, 999999, tzinfo=UTC)),  # the whole day
])
def test_not_after(berlin: None, value: str, expected: datetime) -> None:
    when = parse_job(f"commands: ls\nnot_after: {value}", "j").not_after
    assert when == expected and when is not None and when.tzinfo is not None


@pytest.mark.parametrize(("value", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("2h", 7200.0),
    ("1h30m", 5400.0), ("1h 30m", 5400.0), ("1d", 86400.0), ("1.5h", 5400.0), (" 2 hours ", 7200.0),
    ("10 min", 600.0), ("0", 0.0), ("1D2H", 93600.0),
])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "1:30", "-5", "5x", "1h30", "h", "1e3", "inf", "nan",
                                   "9" * 400, True, None, [1], -1, float("inf"), "1" * 65 + "s"])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(SpecError, match="is not a duration") as caught:
        parse_duration(value)
    assert caught.value.hint is not None and "1h30m" in caught.value.hint


# ---- what each mistake says, and where ------------------------------------------------------

@pytest.mark.parametrize(("source", "says", "line", "column"), [
    # phone keyboards
    ("commands: “ls”", "curly quote", 1, 11),
    ("commands: ls\nrun: \u2018x\u2019", "curly quote", 2, 6),
    ("# Jane„s job\ncommands: ls", "curly quote", 1, 7),
    ("commands:\n\t- ls\n", "tab characters are not allowed for indentation", 2, 1),
    ("commands: ls\n  \tstdout: true\n", "tab characters are not allowed for indentation", 2, 3),
    ("commands: echo a: b\n", "not valid YAML", 1, 17),
    ("commands: 'ls\n", "not valid YAML", 2, 1),
    ("commands: @home\n", "not valid YAML", 1, 11),
    ("df -h\nuptime\n", "spans several lines", 1, 1),
    ("commands:\n  - ls\n    -la\n", "spans several lines", 2, 5),
    # the file as a whole
    ("- ls\n- df\n", "the file is a list", 1, 1),
    ("commands: ls\n---\ncommands: df\n", "second YAML document", 2, 1),
    ("host: pc\n", "the job has no `commands`", 1, 1),
    ("comands: ls\n", "unknown key `comands`", 1, 1),
    ("commands: ls\nhosts: pc\n", "unknown key `hosts`", 2, 1),
    ("commands: ls\nCommands: df\n", "`commands` is set twice", 2, 1),
    ("? [a]\n: x\n", "a key must be a name", 1, 3),
    # tags, anchors and aliases
    ("commands: !!python/object/apply:os.system [ls]", "`!!python/object/apply:os.system`", 1, 11),
    ("!!str ls", "`!!str`", 1, 1),
    ("commands: !shell ls", "`!shell`", 1, 11),
    ("commands: ! ls", "tags", 1, 11),
    ("!!map {commands: ls}", "tags", 1, 1),
    ("commands: &a ls\nrun: *a", "anchors and aliases", 1, 11),
    ("run: 1\ncommands: *.sh", "not valid YAML", 2, 12),
    # wrong values
    ("commands: ls\nstdout: maybe", "`stdout` must be true or false, not 'maybe'", 2, 9),
    ("commands: ls\nstderr:", "`stderr` must be true or false, not empty", 2, 8),
    ("commands: ls\noperation: restart", "`operation` must be start or stop, not 'restart'", 2, 12),
    ("commands:", "`commands` is empty", 1, 10),
    ("commands: []", "`commands` must be a command line or a list of them, not an empty list",
     1, 11),
    ("commands:\n  - ls\n  - ''\n", "item 2 of `commands` is empty", 3, 5),
    ("commands:\n  - ls\n  - echo a: b\n", "item 2 of `commands` must be a command line", 3, 5),
    ("commands:\n  - [ls]\n", "item 1 of `commands` must be a command line, not a list", 2, 5),
    ("commands: ls\nhost:", "`host` must be a host name, not empty", 2, 6),
    ("commands: ls\nhost: []", "`host` must be a host name or a list of them, not an empty list",
     2, 7),
    ("commands: ls\nhost: [pc1, {a: b}]", "`host` must be a host name, not a list of `key", 2, 13),
    ("commands: ls\nhost: pc1, pc2", "`host` must be a host name, not 'pc1, pc2'", 2, 7),
    ("commands: ls\nenv: LANG=C", "`env` must be `NAME: value` lines, not 'LANG=C'", 2, 6),
    ("commands: ls\nenv:\n  MY-VAR: 1", "'MY-VAR' is not a valid environment variable name", 3, 3),
    ("commands: ls\nenv: {A: 1, A: 2}", "`A` is set twice in `env`", 2, 13),
    ("commands: ls\nenv:\n  A:\n", "`env` A must be a single value, not empty", 3, 5),
    ("commands: ls\nenv: {A: [1]}", "`env` A must be a single value, not a list", 2, 10),
    ("commands: ls\ntimeout: soon", "`timeout` must be a duration longer than zero, not 'soon'",
     2, 10),
    ("commands: ls\ntimeout: 0s", "`timeout` must be a duration longer than zero", 2, 10),
    ("commands: ls\ntimeout: 1:30", "`timeout` must be a duration", 2, 10),
    ("commands: ls\nnot_after: tomorrow", "`not_after` must be a date and time", 2, 12),
    ("commands: ls\nnot_after: 2026-13-45", "`not_after` must be a date and time", 2, 12),
    ("commands: ls\nrun: [1, 2]", "`run` must be a single value such as 1, not a list", 2, 6),
    ("commands: ls\ncwd: {a: 1}", "`cwd` must be a folder", 2, 6),
    ("commands: ls\nshell: [bash]", "`shell` must be a program", 2, 8),
])
def test_errors_say_what_and_where(source: str, says: str, line: int, column: int) -> None:
    caught = error(source)
    assert says in caught.message
    assert (caught.line, caught.column) == (line, column)


@pytest.mark.parametrize(("source", "hint"), [
    ("commands: “ls”", "straight quotes"),
    ("commands:\n\t- ls\n", "use spaces"),
    ("host: pc\n", "add a line `commands: …`"),
    ("comands: ls\n", "did you mean `commands`?"),
    ("commands: ls\nstdot: false\n", "did you mean `stdout`?"),
    ("commands: ls\nnotafter: 2026-01-01\n", "did you mean `not_after`?"),
    ("echo a b: c\n", "must be quoted"),
    ("commands: echo a: b\n", "put the command in quotes"),
    ("commands: ls\nhost: a, b", "host: [pc1, pc2]"),
    ("commands: ls\ntimeout: soon", "1h30m"),
    ("commands: !!str ls", "remove it"),
])
def test_errors_hint_at_the_fix(source: str, hint: str) -> None:
    caught = error(source)
    assert caught.hint is not None and hint in caught.hint


def test_error_text() -> None:
    caught = error("commands:\n\t- ls\n")
    assert str(caught) == ("line 2, column 1: tab characters are not allowed for indentation. "
                           "Hint: use spaces to indent")
    assert str(SpecError("oops")) == "oops"
    assert str(SpecError("oops", 3)) == "line 3: oops"
    assert isinstance(caught, ValueError)
    copy = pickle.loads(pickle.dumps(caught))
    assert (copy.message, copy.line, copy.column, copy.hint) == (
        caught.message, caught.line, caught.column, caught.hint)


@pytest.mark.parametrize("source", ["", "\n\n", "# only a comment\n", "---\n", "~", "null", b""])
def test_empty_file(source: str | bytes) -> None:
    assert error(source).message == (
        "the file is empty: write the command to run, e.g. `commands: df -h`")


@pytest.mark.parametrize(("source", "says", "line", "column"), [
    (b"commands: ls\nrun: caf\xe9\n", "not UTF-8 text (byte 0xE9)", 2, 9),
    ("commands: ls\nrun: é".encode() + b"\xff", "not UTF-8", 2, 7),  # columns count characters
    ("commands: ls".encode("utf-16-le"), "looks like UTF-16 text without a byte-order mark", 1, 1),
    ("commands: ls".encode("utf-16-be"), "looks like UTF-16 text without a byte-order mark", 1, 1),
    ("commands: ls\nrun: x".encode("utf-16") + b"\x00", "saved as UTF-16, but is damaged", 2, 7),
    (b"\xff\xfe" + "commands: ls\r\nrun: ".encode("utf-16-le") + b"\x00\xd8x\x00",
     "saved as UTF-16, but is damaged", 2, 6),  # half a character
    (b"commands: ls\n\x00", "NUL byte", 2, 1),
    ("commands: l\x07s", "invisible character ('\\x07')", 1, 12),
    ("commands: ls\r\nrun: \x1b", "invisible character", 2, 6),
])
def test_unreadable_text(source: str | bytes, says: str, line: int, column: int) -> None:
    caught = error(source)
    assert says in caught.message and (caught.line, caught.column) == (line, column)


# Windows PowerShell 5.1's `>` and Out-File write UTF-16 LE with a byte-order mark and CRLF.
ENCODINGS = {
    "UTF-16 LE (PowerShell)": lambda t: b"\xff\xfe" + t.replace("\n", "\r\n").encode("utf-16-le"),
    "UTF-16 BE": lambda t: b"\xfe\xff" + t.encode("utf-16-be"),
    "UTF-32 LE": lambda t: t.encode("utf-32"),
    "UTF-32 BE": lambda t: b"\x00\x00\xfe\xff" + t.encode("utf-32-be"),
    "UTF-8 with BOM, CRLF": lambda t: t.replace("\n", "\r\n").encode("utf-8-sig"),
    "UTF-8, CRLF": lambda t: t.replace("\n", "\r\n").encode(),
}


@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS.keys())
def test_encodings_with_a_byte_order_mark(encode: Callable[[str], bytes]) -> None:
    source = "# Jöhn's backup 😀\ncommands:\n  - echo grüß dich 😀\n  - df -h\nhost: pc\n"
    assert parse_job(encode(source), "j") == JobSpec(
        name="j", commands=("echo grüß dich 😀", "df -h"), hosts=("pc",))


@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS.keys())
@pytest.mark.parametrize(("source", "line", "column"), [
    ("commands: ls\nstdout: maybe\n", 2, 9),
    ("# 😀 ü\ncommands: ls\nenv: {A: 😀, B: [1]}\n", 3, 16),  # columns count characters
    ("commands: “ls”\n", 1, 11),
    ("commands: ls\n\t- x\n", 2, 1),
    ("commands: 'ü\n", 2, 1),
    ("commands: ü\x07\n", 1, 12),
    ("df -h\nuptime\n", 1, 1),
])
def test_errors_are_where_they_are_in_any_encoding(
        encode: Callable[[str], bytes], source: str, line: int, column: int) -> None:
    assert (error(source).line, error(source).column) == (line, column)
    assert (error(encode(source)).line, error(encode(source)).column) == (line, column)


def test_size_limit() -> None:
    fits = b"commands: " + b"x" * (MAX_JOB_BYTES - 10)
    assert len(parse_job(fits, "j").commands[0]) == MAX_JOB_BYTES - 10
    caught = error(fits + b"x")
    assert "larger than 64 KiB" in caught.message and caught.line is None
    assert "larger than 64 KiB" in error("é" * (MAX_JOB_BYTES // 2 + 1)).message


# Hostile files must fail fast: the contract is "well under 100 ms" for any file of 64 KiB;
# the bound here is looser. Measured in this thread's CPU time, not on the wall: the work a
# file costs is the point, and neither a shared machine's other processes nor the threads
# earlier tests left in this worker (a daemon's writer, its watcher) may fail the test.
HOSTILE = {
    "deep flow nesting": "[" * 60000,
    "deep block nesting": "".join(" " * i + "a:\n" for i in range(200)),
    "billion laughs": 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\nd: [*c,*c]\n',
    "many items": "commands:\n" + "- a\n" * 16000,
    "many keys": "".join(f"k{i}: v\n" for i in range(9000)),
    "long line": "commands: " + "x" * (MAX_JOB_BYTES - 20),
    "many quotes": "commands: " + "'a' " * 16000,
}


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_files_fail_fast(source: str) -> None:
    timings = []
    for _ in range(3):  # the best of three: caches, a page fault, the collector
        start = time.thread_time()
        with contextlib.suppress(SpecError):
            parse_job(source, "j")
        timings.append(time.thread_time() - start)
    assert min(timings) < 0.25


# ---- the digest ------------------------------------------------------------------------------

def digest(source: str) -> str:
    return parse_job(source, "j").digest


def test_digest_ignores_how_the_same_job_is_written() -> None:
    same = [
        "commands: ls\nhost: [a, B]\nenv: {X: 1, Y: 2}\ntimeout: 90\n",
        "# a comment\nenv:\n  Y: 2\n  X: '1'\ntimeout: 1m30s\nhost: [b, A, a]\ncommands:\n  - ls\n",
        "{Commands: [ls], Host: [B, a], Env: {Y: 2, X: 1}, Timeout: 90s}",
        "commands: ls\nhost: [a, B]\nenv: {X: 1, Y: 2}\ntimeout: 90\noperation: stop\n"
        "stdout: false\nstderr: false\n",
    ]
    assert len({digest(source) for source in same}) == 1
    assert digest("ls") == digest("commands: ls") == digest("commands: [ls]")
    assert digest("commands: ls\nnot_after: 2026-12-01T08:00:00+01:00") == digest(
        "commands: ls\nnot_after: 2026-12-01T07:00:00Z")
    assert digest("commands: ls\ncwd: ~") == digest("commands: ls")


@pytest.mark.parametrize("changed", [
    "commands: ls -l", "commands: [ls, ls]", "commands: ls\nrun: 1", "commands: ls\nhost: a",
    "commands: ls\ncwd: /tmp", "commands: ls\nenv: {X: 1}", "commands: ls\nshell: bash",
    "commands: ls\ntimeout: 1m", "commands: ls\nnot_after: 2026-12-01",
])
def test_digest_changes_with_what_runs(changed: str) -> None:
    assert digest("commands: ls") != digest(changed)
    assert digest("commands: ls\nrun: 1") != digest("commands: ls\nrun: 2")


def test_digest_is_filled_in_for_a_spec_built_by_hand() -> None:
    spec = JobSpec(name="other", commands=("ls",), hosts=("B", "a"))
    assert spec.digest == digest("commands: ls\nhost: [a, b]")
    assert JobSpec(name="j", commands=("ls",), digest="f" * 64).digest == "f" * 64


def test_every_key_is_understood() -> None:
    source = DESIGN_EXAMPLE
    # `otp` belongs to signed jobs (README, Security), not to DESIGN's example;
    # `retry` and the other keys of DESIGN §10 have their own (tests/test_retry.py, _schedule.py,
    # _after.py); `slurm` belongs to Slurm hosts (DESIGN §11; tests/test_slurm.py), `notify`
    # and `notify_on` to notifications (DESIGN §9; tests/test_notify.py).
    section_10 = {"retry", "every", "cron", "timezone", "catch_up", "overlap", "after"}
    others = section_10 | {"otp", "slurm", "notify", "notify_on"}
    assert {line.split(":")[0] for line in source.splitlines()} == KEYS - others


# ---- nothing but SpecError, whatever the input ------------------------------------------------

YAMLISH = st.lists(st.sampled_from([
    *"ab:- \n\t#'\"[]{},&*!|>?%@`~.0129\\“\u2019\x00\ufeff\r", *sorted(KEYS), ": ", "\n  ", "- ",
    "---", "!!str ", "&a ", "*a", "true", "~", "1h30m", "2026-12-01",
]), max_size=60).map("".join)


def only_spec_error(source: str | bytes) -> None:
    try:
        spec = parse_job(source, "j")
    except SpecError as caught:
        assert caught.message and str(caught)
        assert caught.line is None or (caught.line >= 1 and caught.column is not None)
    else:
        assert spec.commands and all(spec.commands) and len(spec.digest) == 64


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_any_bytes(source: bytes) -> None:
    only_spec_error(source)


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_any_text(source: str) -> None:
    only_spec_error(source)


@settings(max_examples=500)
@given(YAMLISH)
def test_yaml_like_text(source: str) -> None:
    only_spec_error(source)


SCALAR = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans(), st.none(),
                   st.sampled_from(["2026-12-01", "1h30m", "0755", "~", "1:30", "yes"]))


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from([*sorted(KEYS), "comands", "Host"]),
                       st.one_of(SCALAR, st.lists(SCALAR, max_size=3),
                                 st.dictionaries(st.text(max_size=5), SCALAR, max_size=3)),
                       max_size=6),
       st.sampled_from([None, True, False]))
def test_generated_job_files(job: dict[str, object], flow: bool | None) -> None:
    only_spec_error(yaml.safe_dump(job, default_flow_style=flow, allow_unicode=True))


def test_deadline_of_a_long_valid_file() -> None:
    source = "commands:\n" + "".join(f"  - echo {i}\n" for i in range(4000))
    start = time.thread_time()  # CPU time, as above
    assert len(parse_job(source, "j").commands) == 4000
    assert time.thread_time() - start < 0.25
