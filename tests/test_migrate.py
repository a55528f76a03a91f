"""`filerexec import`: the seed's single filerexec.yaml becomes one job file per job."""

from __future__ import annotations

from pathlib import Path

import pytest

from filerexec import cli
from filerexec.migrate import ImportRefused, convert, import_seed
from filerexec.spec import parse_job

SEED = Path(__file__).parent / "data" / "filerexec.yaml"


def test_the_seeds_own_example_becomes_two_valid_jobs(
        spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["import", str(SEED), str(spool)]) == cli.OK
    out = capsys.readouterr().out
    ls = parse_job((spool / "jobs" / "ls.yaml").read_bytes(), "ls")
    date = parse_job((spool / "jobs" / "date.yaml").read_bytes(), "date")
    assert ls.commands == ("ls /home/john; ls /etc > /home/john/ls-etc",)
    assert (ls.operation, ls.stdout, ls.stderr) == ("start", True, True)
    assert date.commands == ("date",)
    assert (date.operation, date.stdout, date.stderr) == ("stop", True, False)
    assert sorted(p.name for p in (spool / "jobs").iterdir()) == ["date.yaml", "ls.yaml"]
    assert f"wrote {spool / 'jobs' / 'ls.yaml'}" in out
    assert f"wrote {spool / 'jobs' / 'date.yaml'}" in out
    assert "run these as soon as they see them: ls\n" in out  # date is operation: stop


def test_existing_jobs_are_not_overwritten_unless_forced(
        spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = spool / "jobs" / "ls.yml"  # the same job under another suffix
    mine.write_text("commands: echo mine\n")
    assert cli.main(["import", str(SEED), str(spool)]) == cli.FAILURE
    assert "these jobs exist (use --force to overwrite)" in capsys.readouterr().err
    assert mine.read_text() == "commands: echo mine\n"
    assert not (spool / "jobs" / "date.yaml").exists()  # all or nothing

    report = import_seed(SEED, spool, force=True)
    assert f"replaced {mine}" in report
    assert parse_job(mine.read_bytes(), "ls").commands[0].startswith("ls /home/john")
    assert not (spool / "jobs" / "ls.yaml").exists()  # never two files for one job


def test_extra_and_bad_entries() -> None:
    jobs = convert("a:\n  commands: echo\n  pid: 42\n  host: pc\nb: uptime\n")
    assert [(j.name, j.dropped) for j in jobs] == [("a", ("pid",)), ("b", ())]
    assert "host: pc" in jobs[0].text and "pid" not in jobs[0].text
    with pytest.raises(ImportRefused, match="nothing imported") as info:
        convert("good: {commands: x}\nbad: {commands: x, stdout: maybe}\n'..': {commands: x}\n")
    assert "bad: line" in str(info.value) and "'..': not usable" in str(info.value)
    for text in ("[1, 2]", "", "a: [b"):
        with pytest.raises(ImportRefused):
            convert(text)
