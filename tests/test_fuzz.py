"""Fuzzing the job parser and the signature check: only our own errors, never slow.

10,000 examples by default (about 20 s here); a longer run on demand:

    FILEREXEC_FUZZ_EXAMPLES=200000 .venv/bin/pytest -q tests/test_fuzz.py

Per-input time: each input's parse and signature check is timed on its own, as the
CPU time of this thread (``time.thread_time``), not wall time. Both calls are pure
computation (no I/O, no sleeping), so their CPU time *is* the input's cost, while wall
time on the shared 2-core CI machine also counts every other process that ran
meanwhile (ten times the CPU time was seen under load). CPU time still jitters (a
garbage collection, cache contention), so an input over the limit is timed again, five
times, and the *median* must be under the limit: a real blow-up is slow every time and
still fails; a hiccup does not.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filerexec import render
from filerexec.render import dump_yaml
from filerexec.signing import Keyring, Rejected, admit, sign, split_signature
from filerexec.spec import KEYS, MAX_JOB_BYTES, SpecError, parse_job

EXAMPLES = int(os.environ.get("FILEREXEC_FUZZ_EXAMPLES", "10000"))
LIMIT = 0.100  # seconds per input
KEY = b"fuzz-key" * 4
KEYRING = Keyring({"laptop": KEY}, {"phone": b"12345678901234567890"})
NOW = 1_800_000_000.0


class MemoryStore:
    """The ledger's token memory, in a dict."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.last: dict[str, tuple[str, str]] = {}

    def token_used(self, token: str) -> bool:
        return token in self.used

    def accepted(self, job: str) -> tuple[str, str] | None:
        return self.last.get(job)

    def accept(self, job: str, token: str, fingerprint: str, now: float) -> None:
        self.used.add(token)
        self.last[job] = (token, fingerprint)


FRAGMENTS = [
    *"ab:- \n\t#'\"[]{},&*!|>?%@`~.0129\\“\u2019\x00\ufeff\r\x85\u2028",
    *sorted(KEYS), ": ", "\n  ", "- ", "---", "...", "!!str ", "!!python/object:os.system ",
    "!x ", "&a ", "*a", "<<: ", "true", "~", "null", "1h30m", "2026-12-01", "0x1F", "1e400",
    "otp: 123456\n", "otp: 12 34 56", "# filerexec-signature v1 key=laptop nonce=n hmac=",
    "0" * 64, " job=j\n", "commands: ", "env: {A: ", "%YAML 1.1\n", "%TAG ! tag:x:\n",
]
YAMLISH = st.lists(st.sampled_from(FRAGMENTS), max_size=80).map("".join)
# Big inputs: one fragment repeated up to the size limit (deep nesting, many values,
# long lines), where a parser's cost would show.
REPEATED = st.tuples(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4),
                     st.integers(1, MAX_JOB_BYTES)).map(
    lambda t: ("".join(t[0]) * (t[1] // max(1, len("".join(t[0]))) + 1))[:t[1]])
VALID = "commands: echo hi\nhost: h\ntimeout: 5m\nenv: {A: b}\n"


@st.composite
def mutated_signed(draw: st.DrawFn) -> bytes:
    """A correctly signed file with a few random byte edits (or none)."""
    data = bytearray(sign(draw(st.sampled_from([VALID, "df -h", "commands: [a, b]\n"])).encode(),
                          "j", "laptop", KEY, draw(st.sampled_from(["n1", "n2"]))))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        byte = draw(st.integers(0, 255))
        if op == "flip" and at < len(data):
            data[at] ^= byte or 1
        elif op == "insert":
            data[at:at] = bytes([byte])
        elif op == "delete":
            del data[at:at + 1]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


INPUTS = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=600),
    YAMLISH,
    YAMLISH.map(lambda s: s.encode("utf-8", "surrogatepass")),
    REPEATED,
    mutated_signed(),
)


def timed(call: Callable[[], object]) -> float:
    start = time.thread_time()
    call()  # parse() and check_signature() assert on what they catch
    return time.thread_time() - start


def check_time(call: Callable[[], object]) -> None:
    if timed(call) >= LIMIT:
        median = statistics.median(timed(call) for _ in range(5))
        assert median < LIMIT, f"{median * 1000:.0f} ms per input"


def parse(data: str | bytes) -> None:
    try:
        spec = parse_job(data, "j")
    except SpecError as caught:
        assert caught.message and str(caught)
    else:
        assert spec.commands and len(spec.digest) == 64


def check_signature(data: bytes) -> None:
    try:
        spec = admit(data, "j", "h", KEYRING, MemoryStore(), NOW, 300)
    except (SpecError, Rejected) as caught:
        assert str(caught)
    else:
        if not spec.targets("h"):
            return  # another host's job: not this host's to check, and nothing runs here
        # Accepted: then it really is a file the key signed (or a valid phone code).
        body, line = split_signature(data)
        assert spec.otp is not None or (
            line is not None and sign(body, "j", "laptop", KEY,
                                      line.split(b"nonce=")[1].split(b" ")[0].decode())
            .rstrip(b"\n") == data.rstrip(b"\n"))


@pytest.mark.slow
@pytest.mark.timeout(max(120, EXAMPLES // 50))  # a longer run on demand gets longer
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(INPUTS)
def test_parser_and_signature_check_only_raise_our_errors_and_are_fast(
        source: str | bytes) -> None:
    data = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    check_time(lambda: parse(source))
    check_time(lambda: check_signature(data))


# --- dump_yaml: byte for byte yaml.dump ----------------------------------------------

_TRICKY = ["yes", "No", "on", "off", "null", "~", "true", "1", "-1", "0x1F", "0o7", "017",
           "1_000", "1.5", ".5", "1e3", "1.0e+3", ".inf", ".NaN", "12:30", "1:20:30.5",
           "2026-12-03", "2026-12-03T17:48:25+00:00", "2026-12-03 17:48:25", "=", "<<",
           "- a", "-a", "? a", ": a", "a: b", "a:b", "a #b", "a#b", "#a", "'a'", '"a"',
           "@a", "`a", "a ", " a", "a  b", "%a", "!a", "&a", "*a", "|", ">", "[a]", "{a}",
           "a,b", "a, b", "(a)", "/a/b", "./a", "a.", "a-", "é", "\u2028", "\ufeff", "\t",
           "a\tb", "\x7f", "\x85", "a\nb", "x" * 300]


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(
    st.one_of(st.sampled_from(["job", "host", "state", "reason", "pid", "on", "y", "1",
                               "a b", "é"]), st.text(max_size=8)),
    st.one_of(st.integers(), st.sampled_from(_TRICKY), st.text(max_size=30),
              st.text(alphabet="abc019 ./@()+,-_:#'\"", max_size=12),
              st.none(), st.booleans(), st.floats(allow_nan=False),
              st.lists(st.text(max_size=5), max_size=2)),
    max_size=6))
def test_dump_yaml_writes_what_yaml_dump_writes(doc: dict[str, object]) -> None:
    assert dump_yaml(doc) == render._dump(doc).encode()
