"""`submit SPOOL NAME -- COMMAND...`: the words arrive as the arguments they were.

One word after -- is a shell line as given; several are quoted word by word for the
shell that will run them (shlex.join for POSIX shells, the C runtime's rules plus ^ for
cmd.exe). End to end through `serve --once`: the host runs what was submitted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from filerexec.cli import main
from tests.test_shellwords import ODD_WORDS


def submit(spool: Path, name: str, *words: str, extra: tuple[str, ...] = ()) -> dict[str, object]:
    assert main(["submit", str(spool), name, *extra, "--", *words]) == 0
    doc = yaml.safe_load((spool / "jobs" / f"{name}.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def serve_once(spool: Path, state: Path) -> Path:
    subprocess.run([sys.executable, "-m", "filerexec", "serve", str(spool), "--host", "h",
                    "--state-dir", str(state), "--once"], check=True, timeout=60,
                   capture_output=True)
    return spool / "status" / "h"


def test_words_arrive_as_arguments_end_to_end(spool: Path, tmp_path: Path) -> None:
    doc = submit(spool, "exit4", "python3", "-c", "import sys; sys.exit(4)")
    assert doc == {"commands": "python3 -c 'import sys; sys.exit(4)'"}
    submit(spool, "argv", sys.executable, "-c",
           "import json, sys; print(json.dumps(sys.argv[1:]))", *ODD_WORDS)
    assert submit(spool, "line", "echo one two three | wc -w") == {
        "commands": "echo one two three | wc -w"}  # one word: a shell line, as given
    status = serve_once(spool, tmp_path / "state")

    def state(job: str) -> dict[str, object]:
        found = yaml.safe_load((status / f"{job}.yaml").read_text())
        assert isinstance(found, dict)
        return found

    assert (state("exit4")["state"], state("exit4")["exit_code"]) == ("failed", 4)
    assert state("argv")["state"] == "succeeded"
    assert json.loads((status / "argv.log").read_text()) == ODD_WORDS
    assert (status / "line.log").read_text().split() == ["3"]


def test_only_the_first_double_dash_is_taken(spool: Path) -> None:
    assert submit(spool, "j", "rsync", "-a", "--", "-odd-name", "/mnt/x") == {
        "commands": "rsync -a -- -odd-name /mnt/x"}
    assert main(["submit", str(spool), "k", "ls", "/tmp"]) == 0  # words without options
    assert yaml.safe_load((spool / "jobs" / "k.yaml").read_text()) == {"commands": "ls /tmp"}
    with pytest.raises(SystemExit):  # an option without -- before it is submit's: -l is not
        main(["submit", str(spool), "l", "ls", "-l"])


def test_host_and_shell_go_into_the_job(spool: Path) -> None:
    doc = submit(spool, "j", "echo", "a b", extra=("--host", "pc", "--host", "nas",
                                                  "--shell", "bash"))
    assert doc == {"commands": "echo 'a b'", "host": ["pc", "nas"], "shell": "bash"}
    doc = submit(spool, "w", "python", "-c", "import sys; sys.exit(4)",
                 extra=("--shell", "cmd.exe"))
    assert doc == {"commands": 'python -c ^"import sys; sys.exit^(4^)^"', "shell": "cmd.exe"}


def test_nothing_to_run_is_a_usage_error(spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(spool), "j", "--"]) == 2
    assert main(["submit", str(spool), "j"]) == 2
    assert main(["submit", str(spool), "j", "--shell", "powershell", "--", "Get-Date", "-u"]) == 2
    err = capsys.readouterr().err
    assert "nothing to run" in err and "give the command as one line" in err
    assert not list((spool / "jobs").iterdir())


def publish_host(spool: Path, host: str, shell: str) -> None:
    (spool / "status" / host).mkdir(parents=True, exist_ok=True)
    (spool / "status" / host / "host.yaml").write_text(yaml.safe_dump(
        {"host": host, "state": "serving", "shell": shell}))


def test_words_are_quoted_for_the_shell_the_host_published(
        spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish_host(spool, "winpc", "cmd.exe")
    publish_host(spool, "nas", "/bin/sh")
    doc = submit(spool, "w", "python", "-c", "import sys; sys.exit(4)", extra=("--host", "WinPC"))
    assert doc == {"commands": 'python -c ^"import sys; sys.exit^(4^)^"', "host": "WinPC"}
    assert submit(spool, "n", "echo", "a b", extra=("--host", "nas"))["commands"] == "echo 'a b'"
    # For every host, or for both: their shells differ, so no one quoting fits.
    assert main(["submit", str(spool), "x", "--", "echo", "a b"]) == 2
    assert "winpc: cmd.exe" in capsys.readouterr().err
    assert submit(spool, "one", "echo a b")["commands"] == "echo a b"  # one word: as given
    assert submit(spool, "s", "echo", "a b", extra=("--shell", "bash"))["commands"] == "echo 'a b'"


def test_the_hosts_default_shell_runs_jobs_naming_none_and_is_published(
        spool: Path, tmp_path: Path, _isolated_config: Path) -> None:
    _isolated_config.write_text("shell: /bin/bash\n")
    (spool / "jobs" / "b.yaml").write_text("commands: echo \"bash ${BASH_VERSION%%.*}\"\n")
    (spool / "jobs" / "own.yaml").write_text("commands: echo \"[${BASH_VERSION}]\"\n"
                                             "shell: /bin/sh\n")
    status = serve_once(spool, tmp_path / "state")
    assert (status / "b.log").read_text().startswith("bash ") and \
        (status / "b.log").read_text() != "bash \n"
    assert (status / "own.log").read_text() == "[]\n"  # a job's own shell: still its own
    assert yaml.safe_load((status / "host.yaml").read_text())["shell"] == "/bin/bash"
