"""Shell completion: the scripts are valid, and a real bash, zsh and fish complete job names.

Each shell loads what `filerexec completion SHELL` prints and is asked to complete a
line; it runs the real `filerexec` (argcomplete's protocol), which reads the spool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from filerexec.cli import main
from filerexec.completion import SHELLS, host_names, job_names, script

BIN = Path(sys.executable).parent  # the venv's: `filerexec` is installed there
JOBS = ["backup", "nightly/db", "old-job"]


def need(shell: str) -> str:
    found = shutil.which(shell)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{shell} is not installed: .ci/run installs it")
        pytest.skip(f"{shell} is not installed (.ci/run installs it for CI)")
    return found


@pytest.fixture
def names_spool(spool: Path) -> Path:
    """jobs/ with two job files (one in a sub-folder), status/ of two hosts."""
    (spool / "jobs" / "nightly").mkdir()
    (spool / "jobs" / "backup.yaml").write_text("ls\n")
    (spool / "jobs" / "nightly" / "db.yaml").write_text("ls\n")
    (spool / "jobs" / "backup.sync-conflict-20261201-101010-ABCDEFG.yaml").write_text("ls\n")
    (spool / "jobs" / "notes.txt").write_text("not a job\n")
    for host in ("pc", "nas"):
        (spool / "status" / host).mkdir()
        (spool / "status" / host / "host.yaml").write_text(f"host: {host}\n")
    (spool / "status" / "pc" / "old-job.yaml").write_text("job: old-job\n")  # its file is gone
    (spool / "status" / "pc" / "old-job.log").write_text("output\n")
    return spool


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def complete(shell: str, line: str) -> list[str]:
    """What ``shell`` offers at the end of ``line``, after loading filerexec's script."""
    if shell == "bash":
        words = line.split(" ")
        program = (f'source <(filerexec completion bash)\nCOMP_LINE="{line}"\n'
                   f'COMP_POINT=${{#COMP_LINE}}\nCOMP_WORDS=({" ".join(map(repr, words))})\n'
                   f"COMP_CWORD={len(words) - 1}\n_python_argcomplete filerexec\n"
                   'printf "%s\\n" "${COMPREPLY[@]}"\n')
        argv = [need("bash"), "-c", program]
    elif shell == "zsh":
        # Outside an interactive line editor: zsh's _describe (which would show the list)
        # is replaced by one that prints it; everything before it is the real script.
        words = line.split(" ")
        program = ("autoload -U compinit && compinit -u\nsource <(filerexec completion zsh)\n"
                   "_describe() { print -rl -- \"${(@P)2%%:*}\" }\n"
                   f'BUFFER="{line}"; CURSOR=${{#BUFFER}}; words=({" ".join(map(repr, words))})\n'
                   "_python_argcomplete\n")
        argv = [need("zsh"), "-f", "-c", program]
    else:
        program = f"filerexec completion fish | source; complete -C '{line}'"
        argv = [need("fish"), "--no-config", "-c", program]
    out = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=60, check=True)
    return sorted(x.split("\t")[0].rstrip() for x in out.stdout.splitlines() if x.strip())


@pytest.mark.parametrize("shell", SHELLS)
def test_the_scripts_are_valid(shell: str, tmp_path: Path) -> None:
    path = tmp_path / f"filerexec.{shell}"
    path.write_text(subprocess.run([BIN / "filerexec", "completion", shell], check=True,
                                   capture_output=True, text=True).stdout)
    assert path.read_text() == script(shell) and "filerexec" in path.read_text()
    flags = ["--no-execute"] if shell == "fish" else ["-n"]
    checked = subprocess.run([need(shell), *flags, str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    broken = tmp_path / "broken"
    broken.write_text(path.read_text() + ("\nend\n" if shell == "fish" else "\nfi\n"))
    assert subprocess.run([need(shell), *flags, str(broken)],  # the check itself can fail
                          capture_output=True).returncode != 0


@pytest.mark.parametrize("shell", SHELLS)
def test_job_names_come_from_the_spool(shell: str, names_spool: Path) -> None:
    assert complete(shell, f"filerexec logs {names_spool} ") == JOBS
    assert complete(shell, f"filerexec logs {names_spool} ni") == ["nightly/db"]


@pytest.mark.slow  # 4-9 s of bash sessions: kept out of the inner loop
def test_more_completions_in_bash(names_spool: Path, _isolated_config: Path) -> None:
    assert complete("bash", f"filerexec status {names_spool} --host ") == ["nas", "pc"]
    assert complete("bash", f"filerexec status {names_spool} --job b") == ["backup"]
    assert complete("bash", f"filerexec submit {names_spool} ") == JOBS
    assert complete("bash", "filerexec sta") == ["status"]
    assert "--replace" in complete("bash", f"filerexec submit {names_spool} --")
    # Without SPOOL, `logs` takes the config file's spool (and offers folders too).
    _isolated_config.write_text(f"spool: {names_spool}\n")
    assert set(JOBS) <= set(complete("bash", "filerexec logs "))


def test_names_read_from_the_spool(names_spool: Path, tmp_path: Path) -> None:
    assert job_names(names_spool) == JOBS  # no conflicted copy, no notes.txt, no host.yaml
    assert host_names(names_spool) == ["nas", "pc"]
    assert job_names(tmp_path / "nowhere") == [] and host_names(tmp_path / "nowhere") == []


def test_completion_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "fish"]) == 0
    assert "complete --command filerexec" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["completion", "tcsh"])
    with pytest.raises(ValueError, match="no completion for 'tcsh'"):
        script("tcsh")
