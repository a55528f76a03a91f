"""`filerexec service`: definitions against golden files, install plans, refusals.

Nothing here needs systemd, launchd or Windows: definitions are pure text, and
installing is tested by running the real plan with a recording command runner.
Set UPDATE_GOLDEN=1 to rewrite tests/golden/ (then review the diff).
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

import pytest

from filerexec import cli, process, service
from filerexec.service import Run, ServiceError, Target, Write

GOLDEN = Path(__file__).parent / "golden"
SPOOL = "/home/alice/Sync/my spool"


def target(platform: str, system: bool = False) -> Target:
    if platform == "windows":
        spool = r"C:\Users\alice\Sync\my spool"
        return Target(platform=platform, name="filerexec", system=system, user=r"OFFICE\alice",
                      argv=(r"C:\Python311\python.exe", "-m", "filerexec", "serve", spool),
                      spool=Path(spool), home=Path("/home/alice"),
                      config_home=Path("/home/alice/.config"))
    return Target(platform=platform, name="filerexec", system=system, user="alice",
                  argv=("/opt/fx/bin/python", "-m", "filerexec", "serve", SPOOL),
                  spool=Path(SPOOL), home=Path("/home/alice"),
                  config_home=Path("/home/alice/.config"), uid=501,
                  path_env="/opt/homebrew/bin:/usr/bin:/bin")


RENDERINGS = {
    "systemd-user.service": (service.systemd_unit, "systemd", False),
    "systemd-system.service": (service.systemd_unit, "systemd", True),
    "launchd-agent.plist": (service.launchd_plist, "launchd", False),
    "launchd-daemon.plist": (service.launchd_plist, "launchd", True),
    "windows-logon.xml": (service.windows_task, "windows", False),
    "windows-boot.xml": (service.windows_task, "windows", True),
}


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_definitions_match_golden_files(name: str) -> None:
    render, platform, system = RENDERINGS[name]
    text = render(target(platform, system))
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_definitions_keep_jobs_alive_and_restart_the_daemon() -> None:
    unit = service.systemd_unit(target("systemd"))
    assert "\nRestart=always\n" in unit and "\nKillMode=process\n" in unit
    assert "User=" not in unit and "WantedBy=default.target" in unit
    system = service.systemd_unit(target("systemd", system=True))
    assert "\nUser=alice\n" in system and "WantedBy=multi-user.target" in system
    plist = plistlib.loads(service.launchd_plist(target("launchd")).encode())
    assert plist["KeepAlive"] is plist["RunAtLoad"] is plist["AbandonProcessGroup"] is True
    assert plist["ProgramArguments"][-1] == SPOOL and "UserName" not in plist
    task = ElementTree.fromstring(
        service.windows_task(target("windows", system=True)).encode("utf-16"))
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    assert task.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=ns) == "PT0S"
    assert task.find("t:Triggers/t:BootTrigger", ns) is not None
    assert task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=ns) == (
        r'-m filerexec serve "C:\Users\alice\Sync\my spool"')


def test_systemd_quoting_keeps_specifiers_and_variables_literal() -> None:
    t = replace(target("systemd"), argv=("/bin/py", "50%", "$HOME", 'a "b"\\'))
    assert 'ExecStart="/bin/py" "50%%" "$$HOME" "a \\"b\\"\\\\"\n' in service.systemd_unit(t)


def test_install_plans_name_the_exact_commands() -> None:
    assert [s.argv for s in service.install(target("systemd")) if isinstance(s, Run)] == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "filerexec.service"),
        ("systemctl", "--user", "restart", "filerexec.service"),
        ("loginctl", "enable-linger", "alice")]
    steps = service.install(target("systemd", system=True))
    assert steps[0] == Write(Path("/etc/systemd/system/filerexec.service"),
                             service.systemd_unit(target("systemd", system=True)))
    assert [s.argv for s in steps if isinstance(s, Run)] == [
        ("systemctl", "daemon-reload"), ("systemctl", "enable", "filerexec.service"),
        ("systemctl", "restart", "filerexec.service")]
    plist = "/home/alice/Library/LaunchAgents/local.filerexec.plist"
    assert [(s.argv, s.may_fail) for s in service.install(target("launchd"))
            if isinstance(s, Run)] == [
        (("launchctl", "bootout", "gui/501/local.filerexec"), True),
        (("launchctl", "bootstrap", "gui/501", plist), False)]
    win = service.install(target("windows"))
    assert isinstance(win[0], Write) and win[0].encoding == "utf-16"
    assert win[1] == Run((r"C:\Windows\System32\schtasks.exe", "/Create", "/TN", "filerexec",
                          "/XML", str(win[0].path), "/F"))


def test_execute_writes_files_and_runs_commands_in_order(tmp_path: Path) -> None:
    t = replace(target("systemd"), config_home=tmp_path)
    ran: list[list[str]] = []
    service.execute(service.install(t), lambda argv: ran.append(argv) or 0)
    unit = tmp_path / "systemd" / "user" / "filerexec.service"
    assert unit.read_text() == service.systemd_unit(t)
    assert ran[0] == ["systemctl", "--user", "daemon-reload"] and len(ran) == 4

    ran.clear()

    def not_running(argv: list[str]) -> int:  # "disable --now" of a stopped unit may fail
        ran.append(argv)
        return 1 if "disable" in argv else 0

    service.execute(service.uninstall(t), not_running)
    assert not unit.exists()
    assert ran == [["systemctl", "--user", "disable", "--now", "filerexec.service"],
                   ["systemctl", "--user", "daemon-reload"]]

    ran.clear()
    with pytest.raises(ServiceError, match=r"daemon-reload failed \(exit status 5\)"):
        service.execute(service.install(t), lambda argv: ran.append(argv) or 5)
    assert len(ran) == 1  # stopped at the first failure


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """An ordinary user "alice" with a home in tmp_path; commands are recorded, not run."""
    ran: list[list[str]] = []
    monkeypatch.setattr(os, "geteuid", lambda: 1000, raising=False)  # Windows has none
    monkeypatch.setattr("filerexec.service.getpass.getuser", lambda: "alice")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setattr(process, "run_tool", lambda argv: ran.append(argv) or 0)
    return ran


def test_cli_install_show_uninstall(as_user: list[list[str]], tmp_path: Path, spool: Path,
                                    _isolated_config: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    unit = tmp_path / "cfg" / "systemd" / "user" / "filerexec.service"
    assert cli.main(["service", "show", str(spool), "--platform", "systemd"]) == cli.OK
    shown = capsys.readouterr().out
    assert not unit.exists() and as_user == []  # show installs nothing
    assert f"# write {unit}\n" in shown and "$ systemctl --user daemon-reload\n" in shown

    assert cli.main(["service", "install", str(spool), "--platform", "systemd"]) == cli.OK
    text = unit.read_text()
    assert text in shown  # what show printed is what install wrote
    argv = (sys.executable, "-m", "filerexec", "serve", str(spool.resolve()), "--config",
            str(_isolated_config))  # the service reads the same config
    assert f"ExecStart={' '.join(map(service._systemd_quote, argv))}\n" in text
    assert as_user[-1] == ["loginctl", "enable-linger", "alice"]

    as_user.clear()
    assert cli.main(["service", "uninstall", str(spool), "--platform", "systemd"]) == cli.OK
    assert not unit.exists() and as_user[0][-2:] == ["--now", "filerexec.service"]


def test_cli_install_failure_and_missing_spool(
        as_user: list[list[str]], monkeypatch: pytest.MonkeyPatch, spool: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(process, "run_tool", lambda argv: 1)
    assert cli.main(["service", "install", str(spool), "--platform", "systemd"]) == cli.FAILURE
    assert "systemctl --user daemon-reload failed" in capsys.readouterr().err
    assert cli.main(["service", "show", "--platform", "systemd"]) == cli.USAGE
    assert "no SPOOL given" in capsys.readouterr().err


def test_never_root_silently(monkeypatch: pytest.MonkeyPatch, spool: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0, raising=False)
    monkeypatch.setattr("filerexec.service.getpass.getuser", lambda: "root")
    monkeypatch.delenv("SUDO_USER", raising=False)

    def show(*args: str) -> tuple[int, str]:
        code = cli.main(["service", "show", str(spool), "--platform", "systemd", *args])
        out = capsys.readouterr()
        return code, out.out + out.err

    code, text = show()
    assert code == cli.FAILURE and "you are root: a user service would be root's own" in text
    code, text = show("--system")
    assert code == cli.FAILURE and "refusing to run jobs as root without being asked" in text
    monkeypatch.setenv("SUDO_USER", "alice")  # sudo filerexec service install --system
    code, text = show("--system")
    assert code == cli.OK and "\nUser=alice\n" in text
    code, text = show("--system", "--user", "root")  # asked for by name
    assert code == cli.OK and "\nUser=root\n" in text


@pytest.mark.skipif(os.name == "nt", reason="the Cygwin script runs in a POSIX sh with fake "
                    "tools written as shell scripts (Cygwin's shell, not Windows Python)")
def test_cygrunsrv_wrapper_runs_the_expected_commands(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool, output in (("cygrunsrv", ""), ("sc", ""), ("cygpath", "/cygdrive/c/Sync/sp"),
                         ("whoami", "alice")):
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n'
                        + (f"echo {output}\n" if output else ""))
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "FILEREXEC_PYTHON": "/usr/bin/python3"}
    script = Path(__file__).parent.parent / "scripts" / "cygrunsrv-install.sh"
    done = subprocess.run(["sh", str(script), "C:/Sync/sp"], env=env, capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls == [
        "cygpath -a C:/Sync/sp",
        "whoami ",
        'cygrunsrv --install filerexec --path /usr/bin/python3 --args -m filerexec serve '
        '"/cygdrive/c/Sync/sp" --env PYTHONUNBUFFERED=1 --desc filerexec: run jobs dropped '
        "into /cygdrive/c/Sync/sp --user alice --termsig TERM --shutdown",
        "sc failure filerexec reset= 86400 actions= restart/60000/restart/60000/restart/60000",
        "cygrunsrv --start filerexec"]
    log.unlink()
    done = subprocess.run(["sh", str(script), "--remove"], env=env, capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 0 and log.read_text().splitlines() == [
        "cygrunsrv --stop filerexec", "cygrunsrv --remove filerexec"]
