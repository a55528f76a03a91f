"""Job files as programs write them: each common YAML and JSON writer, run here for real.

Every document is written by the library itself in the test (PyYAML in Python and with
libyaml, ruamel.yaml, json), and must parse to exactly the commands that were written.
Long commands with absolute paths are the point: the YAML writers wrap them onto a next
line, which YAML joins again. A person's two short lines meant as two commands are still
refused, with the hint.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from ruamel.yaml import YAML

from filerexec.retry import RetryPolicy
from filerexec.spec import KEYS, WRITER_WIDTH, JobSpec, SpecError, parse_job
from filerexec.speckeys import Targets

LONG = "rsync -a --delete /home/john/Documents/ /mnt/backup/john/Documents/ && echo done at $(date)"
LONGER = ("find /home/john/Pictures/2026 -name '*.jpg' -newer /home/john/.last-backup -print0 | "
          "xargs -0 cp -t /mnt/backup/john/Pictures/2026/ && touch /home/john/.last-backup && "
          "echo pictures copied")
UNICODE = ("cp -r '/home/jöhn/Müsik/Ärger und Freude/' /mnt/backup/jöhn/ && "
           "echo 'fertig — 完了 😀' >> /home/jöhn/backup.log")
# Each makes a writer quote it, for a reason of its own.
SPECIAL = [
    "echo a: b", "# not a comment", "- not a list", "* star", "&amp", "!bang", "%percent", "@at",
    "`date`", "{brace}", "[bracket]", "yes", "0755", "1:30", "null", "~", "2026-12-01",
    "echo 'single' \"double\" \\backslash", "printf 'a\\tb\\n'", "cd /tmp\nls -la\n",
    "make -C /home/john/src/project all # the comment must stay part of the command line, too",
    "ssh backup@nas.local: 'df -h /volume1 /volume2 /volume3' && echo the nas answered at $(date)",
    "/home/john/a/very/long/path/without/any/space/in/it/that/cannot/be/wrapped/anywhere/" * 2,
]
EVERY_KEY: dict[str, Any] = {
    "commands": [LONG, UNICODE, "echo ok"],
    "operation": "start",
    "stdout": False,
    "stderr": True,
    "host": ["office-pc", "laptop"],
    "cwd": "/home/john/projects/a folder with a rather long name/and a sub-folder with another",
    "env": {"LANG": "C.UTF-8", "GREETING": "grüß dich — " + LONG, "EMPTY": ""},
    "shell": "/bin/bash",
    "timeout": "1h30m",
    "run": "2",
    "not_after": "2026-12-01T08:00:00+01:00",
    "otp": "123456",
    "retry": {"max": 2, "on": [1, 75, "timeout"], "delay": "30s", "backoff": 2},
    "slurm": {"partition": "gpu", "cpus": "4", "mem": "8G", "gres": "gpu:1", "time": "2h"},
    "cron": "0 3 * * 1-5",
    "timezone": "Europe/Zurich",
    "catch_up": "none",
    "overlap": "queue",
    "notify": ["phone", "ops"],
    "notify_on": ["failed", "succeeded"],
    "after": ["nightly/db", "fetch.yaml"],
}
EVERY_KEY_SPEC = JobSpec(
    name="j", commands=(LONG, UNICODE, "echo ok"), stdout=False, hosts=("laptop", "office-pc"),
    cwd=EVERY_KEY["cwd"], env=(("EMPTY", ""), ("GREETING", EVERY_KEY["env"]["GREETING"]),
                               ("LANG", "C.UTF-8")),
    shell="/bin/bash", timeout=5400.0, run="2", not_after=datetime(2026, 12, 1, 7, tzinfo=UTC),
    otp="123456", retry=RetryPolicy(max=2, on=(1, 75, "timeout"), delay=30.0, backoff=2.0),
    slurm=(("cpus", "4"), ("gres", "gpu:1"), ("mem", "8G"), ("partition", "gpu"),
           ("time", "120")),
    cron="0 3 * * 1-5", timezone="Europe/Zurich", catch_up="none", overlap="queue",
    notify=Targets(("phone", "ops")), notify_on=("failed", "succeeded"),
    after=("nightly/db", "fetch"))

DOCUMENTS: dict[str, tuple[Any, JobSpec]] = {
    "one long command": ({"commands": LONG}, JobSpec(name="j", commands=(LONG,))),
    "the whole file is the command": (LONG, JobSpec(name="j", commands=(LONG,))),
    "a list": ({"commands": [LONG, LONGER, UNICODE, *SPECIAL]},
               JobSpec(name="j", commands=tuple(c.strip() for c in
                                                [LONG, LONGER, UNICODE, *SPECIAL]))),
    "every key": (EVERY_KEY, EVERY_KEY_SPEC),
    "every": ({"commands": LONG, "every": "1h30m", "overlap": "kill", "catch_up": "latest"},
              JobSpec(name="j", commands=(LONG,), every=5400.0, overlap="kill")),
}


def ruamel(typ: str, pure: bool = True, **attributes: Any) -> Callable[[Any], str]:
    def write(doc: Any) -> str:
        writer = YAML(typ=typ, pure=pure)
        for name, value in attributes.items():
            setattr(writer, name, value)
        out = io.StringIO()
        writer.dump(doc, out)
        return out.getvalue()
    return write


WRITERS: dict[str, Callable[[Any], str]] = {
    "PyYAML safe_dump": yaml.safe_dump,
    "PyYAML safe_dump allow_unicode": lambda d: yaml.safe_dump(d, allow_unicode=True),
    "PyYAML safe_dump flow": lambda d: yaml.safe_dump(d, default_flow_style=True),
    "PyYAML safe_dump flow allow_unicode":
        lambda d: yaml.safe_dump(d, default_flow_style=True, allow_unicode=True),
    "PyYAML safe_dump sort_keys=False indent=4":
        lambda d: yaml.safe_dump(d, sort_keys=False, indent=4),
    "PyYAML safe_dump width=120 explicit start and end":
        lambda d: yaml.safe_dump(d, width=120, explicit_start=True, explicit_end=True),
    "PyYAML dump": yaml.dump,
    "PyYAML dump flow allow_unicode":
        lambda d: yaml.dump(d, default_flow_style=True, allow_unicode=True),
    "libyaml CSafeDumper": lambda d: yaml.dump(d, Dumper=yaml.CSafeDumper),
    "libyaml CSafeDumper allow_unicode":
        lambda d: yaml.dump(d, Dumper=yaml.CSafeDumper, allow_unicode=True),
    "libyaml CDumper flow": lambda d: yaml.dump(d, Dumper=yaml.CDumper, default_flow_style=True),
    "ruamel.yaml round-trip": ruamel("rt"),
    "ruamel.yaml round-trip flow": ruamel("rt", default_flow_style=True),
    "ruamel.yaml round-trip without unicode": ruamel("rt", allow_unicode=False),
    "ruamel.yaml safe": ruamel("safe"),
    "ruamel.yaml safe block": ruamel("safe", default_flow_style=False),
    "ruamel.yaml safe (C)": ruamel("safe", pure=False),
    "json.dumps": json.dumps,
    "json.dumps indent=2": lambda d: json.dumps(d, indent=2),
    "json.dumps ensure_ascii=False": lambda d: json.dumps(d, ensure_ascii=False),
    "json.dumps compact": lambda d: json.dumps(d, separators=(",", ":")),
}


def refused(source: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(source, "j")
    return caught.value


@pytest.mark.parametrize("document", DOCUMENTS, ids=list(DOCUMENTS))
@pytest.mark.parametrize("writer", WRITERS, ids=list(WRITERS))
def test_what_writers_write_runs_as_written(writer: str, document: str) -> None:
    doc, expected = DOCUMENTS[document]
    text = WRITERS[writer](doc)
    try:
        spec = parse_job(text, "j")
    except SpecError as e:
        raise AssertionError(f"{writer} wrote a file that is refused: {e}\n{text}") from None
    assert spec == expected, text


@pytest.mark.parametrize("style", ['"', "'"])
def test_a_forced_quoting_style(style: str) -> None:
    # Forcing a style quotes every value; booleans and numbers would then get a tag
    # (`!!bool "false"`), which job files refuse (README, Security): as text they pass.
    doc = {**EVERY_KEY, "stdout": "false", "stderr": "true",
           "retry": {"max": "2", "on": ["1", "75", "timeout"], "delay": "30s", "backoff": "2"}}
    assert parse_job(yaml.safe_dump(doc, default_style=style), "j") == EVERY_KEY_SPEC
    for document, (doc, expected) in DOCUMENTS.items():
        if document != "every key":
            assert parse_job(yaml.safe_dump(doc, default_style=style), "j") == expected
    with pytest.raises(SpecError, match="tags"):
        parse_job(yaml.safe_dump(EVERY_KEY, default_style=style), "j")


def test_the_corpus_holds_wrapped_unquoted_lines() -> None:
    # Without these, the test above would prove nothing about the wrapping rule.
    for writer in ("PyYAML safe_dump", "libyaml CSafeDumper", "ruamel.yaml round-trip",
                   "ruamel.yaml safe", "PyYAML safe_dump flow"):
        text = WRITERS[writer]({"commands": LONG})
        assert text.count("\n") >= 2 and "'" not in text and '"' not in text, (writer, text)
        assert max(len(line) for line in text.splitlines()) <= 2 * WRITER_WIDTH


def test_the_corpus_has_every_key() -> None:
    # `every:` excludes `cron:` (and `timezone:`): it has a document of its own.
    assert set(EVERY_KEY) | set(DOCUMENTS["every"][0]) == KEYS, (
        "a job key was added: give it a value in EVERY_KEY (and EVERY_KEY_SPEC), so that "
        "what programs write for it is tested")


@pytest.mark.parametrize("writer", ["PyYAML safe_dump", "PyYAML dump", "libyaml CSafeDumper",
                                    "ruamel.yaml round-trip", "ruamel.yaml safe"])
def test_python_values_as_yaml_writes_them(writer: str) -> None:
    # A program passes numbers, booleans and datetimes, not the text a person would type.
    doc = {"commands": LONG, "timeout": 5400, "run": 2, "stdout": False,
           "not_after": datetime(2026, 12, 1, 7, tzinfo=UTC)}
    spec = parse_job(WRITERS[writer](doc), "j")
    assert (spec.commands, spec.timeout, spec.run, spec.stdout, spec.not_after) == (
        (LONG,), 5400.0, "2", False, datetime(2026, 12, 1, 7, tzinfo=UTC))


def test_json_of_characters_beyond_the_basic_plane() -> None:
    # json.dumps writes 😀 as two escapes (a surrogate pair), which YAML alone refuses.
    text = json.dumps({"commands": ["echo 😀 🎉", "echo done"], "timeout": "soon"})
    assert "\\ud83d\\ude00" in text
    caught = refused(text)
    # The error is where the file has it, not where the rewritten escapes moved it.
    assert caught.column is not None and text[caught.column - 1:].startswith('"soon"')
    assert parse_job(json.dumps({"commands": ["echo 😀 🎉", "echo done"]}), "j").commands == (
        "echo 😀 🎉", "echo done")
    # A literal backslash before the u is not an escape, and a lone half is still refused.
    assert parse_job(json.dumps({"commands": "echo \\ud83d\\ude00 😀"}), "j").commands == (
        "echo \\ud83d\\ude00 😀",)
    lone = refused('{"commands": "echo \\ud83d"}')
    assert "not valid YAML" in lone.message and lone.line == 1


# ---- what a person on a phone means -----------------------------------------------------------

def wrapped(first: str, rest: str, indent: str = "  ") -> str:
    return f"commands: {first}\n{indent}{rest}\n"


@pytest.mark.parametrize("source", [
    "df -h\nuptime\n",                                   # the whole file: two commands
    "commands: df -h\n  uptime\n",
    "commands:\n  - cd /sdcard/DCIM\n    ls -la\n",
    "{commands: df -h\n  uptime}",
    "commands: [df -h\n  uptime]",
    # Long, but the next word would still have fitted in 80 columns: a person broke it.
    wrapped("x" * (WRITER_WIDTH - len("commands: ") - len(" echo")), "echo done"),
    # An empty line in an unquoted value is a line break YAML keeps: never a writer's wrap.
    f"commands: {LONG}\n\n  echo done\n",
])
def test_a_phone_mistake_is_still_caught(source: str) -> None:
    caught = refused(source)
    assert "spans several lines, which YAML joins into one" in caught.message
    assert caught.hint is not None and "- " in caught.hint and "commands: |" in caught.hint


def test_the_rule_at_the_width() -> None:
    # `commands: xxx…x echo`: the line plus " echo" one column wider than the writers' width.
    fits = "x" * (WRITER_WIDTH - len("commands: ") - len(" echo"))
    assert parse_job(wrapped(fits + "x", "echo done"), "j").commands == (
        fits + "x echo done",)
    with pytest.raises(SpecError, match="spans several lines"):
        parse_job(wrapped(fits, "echo done"), "j")
    # Unquoted values of other keys are joined as YAML says, as before.
    assert parse_job("commands: ls\nenv: {A: one\n  two}\n", "j").env == (("A", "one two"),)


@pytest.mark.parametrize("source", [
    "commands: 'df -h\n  uptime'\n",                     # quoted: one value, deliberately
    'commands: "df -h\n  uptime"\n',
    "commands: >\n  df -h\n  uptime\n",                 # folded: the writer asked YAML to join
])
def test_a_quoted_or_folded_value_is_one_command(source: str) -> None:
    assert parse_job(source, "j").commands == ("df -h uptime",)


SPACED = ("printf '%s\\n' 'three   spaces   between   words   in   quotes   that   the   shell"
          "   keeps'")


def test_a_wrap_at_several_spaces_is_refused() -> None:
    # PyYAML and libyaml never wrap there; ruamel.yaml does, and YAML (ruamel.yaml too)
    # reads the spaces back as one: the command would not be the one that was written.
    assert parse_job(yaml.safe_dump({"commands": [SPACED]}), "j").commands == (SPACED,)
    assert parse_job(yaml.dump({"commands": [SPACED]}, Dumper=yaml.CSafeDumper), "j"
                     ).commands == (SPACED,)
    text = ruamel("rt")({"commands": [SPACED]})
    assert "   \n" in text
    caught = refused(text)
    assert "several spaces, which YAML reads as one" in caught.message
    assert (caught.line, caught.column) == (2, 3)


# ---- end to end ---------------------------------------------------------------------------------

def test_a_wrapped_long_command_runs_as_written(tmp_path: Path) -> None:
    """A program's job with a long command, a list and unicode, through `serve --once`."""
    spool, state = tmp_path / "spool-with-a-long-enough-name", tmp_path / "state"
    src, dst = spool.parent / "Documents für Jöhn", spool.parent / "backup" / "Documents"
    src.mkdir(parents=True)
    (src / "notes.txt").write_text("hello\n")
    assert subprocess.run([sys.executable, "-m", "filerexec", "init", str(spool)],
                          check=True, capture_output=True).returncode == 0
    (spool / "jobs" / "hello.yaml").unlink()
    copy = f"mkdir -p '{dst}' && cp -r '{src}/.' '{dst}/' && echo copied to '{dst}' — fertig ✓"
    check = f"test -f '{dst}/notes.txt' && echo the notes are there && exit 4"
    jobs = {"backup": yaml.safe_dump({"commands": [copy, check]}, allow_unicode=True),
            "ruamel": ruamel("rt")({"commands": f"printf '%s\\n' {shlex.quote(LONG)} "
                                                f"{shlex.quote(LONGER)}"}),
            "json": json.dumps({"commands": "echo 🎉 " + LONG})}
    assert all(len(text.splitlines()[1]) > 2 for text in list(jobs.values())[:2])  # wrapped
    for name, text in jobs.items():
        (spool / "jobs" / f"{name}.yaml").write_text(text)
    subprocess.run([sys.executable, "-m", "filerexec", "serve", str(spool), "--host", "h",
                    "--state-dir", str(state), "--once"], check=True, timeout=60,
                   capture_output=True)
    status = spool / "status" / "h"
    docs = {name: yaml.safe_load((status / f"{name}.yaml").read_text()) for name in jobs}
    assert docs["backup"]["state"] == "failed" and docs["backup"]["exit_code"] == 4, docs
    assert (status / "backup.log").read_text().splitlines()[-2:] == [
        f"copied to {dst} — fertig ✓", "the notes are there"]
    assert docs["ruamel"]["state"] == "succeeded", docs
    assert (status / "ruamel.log").read_text().splitlines()[-2:] == [LONG, LONGER]
    assert docs["json"]["state"] == "succeeded", docs
    assert (status / "json.log").read_text().startswith("🎉 rsync -a --delete")
