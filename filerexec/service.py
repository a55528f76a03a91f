"""``filerexec service``: start ``filerexec serve`` at boot and after every crash.

systemd (a user unit, or ``--system``), launchd (a LaunchAgent, or a
LaunchDaemon with ``--system``) and the Windows Task Scheduler (a task at
logon, or at boot with ``--system``). Definitions are rendered as data by pure
functions; a plan is a list of steps (write a file, remove one, run a tool)
that ``describe`` prints and ``execute`` carries out, the one place with side
effects. Every service keeps running jobs alive when the daemon stops or
restarts (``KillMode=process``, ``AbandonProcessGroup``): the next start adopts
them. Services run as the invoking user, never as root unless named.
"""

from __future__ import annotations

import getpass
import os
import plistlib
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import TypeAlias
from xml.sax.saxutils import escape

from filerexec import APP, process
from filerexec.config import STATE_VAR, Effective

PLATFORMS = ("systemd", "launchd", "windows")
_BARE_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
_SYSTEM_ROOT = r"C:\Windows"
HEADER = "Written by `filerexec service install`; `filerexec service uninstall` removes it."


class ServiceError(Exception):
    """The service cannot be installed or removed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """What to install, for whom, where: everything the renderers need, as plain data."""

    platform: str
    name: str  # unit, agent or task name
    system: bool  # start at boot without anyone logging in
    user: str  # the account the daemon runs as
    argv: tuple[str, ...]  # the command the service runs
    spool: Path
    home: Path  # the user's home: LaunchAgents, logs
    config_home: Path  # the user's XDG config folder: systemd user units
    uid: int = 0  # for launchctl's gui/UID domain
    path_env: str = _BARE_PATH  # launchd starts agents with a bare PATH: pass ours on
    system_root: str = _SYSTEM_ROOT

    @classmethod
    def here(cls, effective: Effective, *, system: bool = False, platform: str | None = None,
             name: str = APP, user: str | None = None) -> Target:
        """The target for this machine and the invoking user (raises ServiceError)."""
        platform = platform or _platform()
        spool = effective.settings().spool
        argv = [sys.executable, "-m", "filerexec", "serve", str(spool)]
        if effective.config_named_by is not None:  # the service must read the same file
            argv += ["--config", str(effective.config.resolve())]
        if effective.sources["state_dir"] == STATE_VAR:
            argv += ["--state-dir", str(effective.values["state_dir"])]
        account = _run_as(user, system, platform)
        if platform == "windows" and "\\" not in account and os.environ.get("USERDOMAIN"):
            account = f"{os.environ['USERDOMAIN']}\\{account}"
        return cls(
            platform=platform, name=name, system=system, user=account,
            argv=tuple(argv), spool=spool, home=_home_of(account),
            config_home=Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"),
            uid=getattr(os, "getuid", lambda: 0)(),
            path_env=os.environ.get("PATH", _BARE_PATH),
            system_root=os.environ.get("SYSTEMROOT", _SYSTEM_ROOT),
        )


def _home_of(user: str) -> Path:
    """The home folder of ``user`` (behind sudo, not root's)."""
    try:
        import pwd  # POSIX only

        return Path(pwd.getpwnam(user).pw_dir)
    except (ImportError, KeyError):
        return Path.home()


def _platform() -> str:
    if sys.platform.startswith("linux"):
        return "systemd"
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "cygwin":
        raise ServiceError("on Cygwin, install a Windows service with "
                           "scripts/cygrunsrv-install.sh, or pass --platform windows")
    raise ServiceError(f"no service support for {sys.platform}; pass --platform to render one")


def _run_as(user: str | None, system: bool, platform: str) -> str:
    """The invoking user (behind sudo too); root only when asked for by name."""
    root = platform != "windows" and getattr(os, "geteuid", lambda: -1)() == 0
    invoking = os.environ.get("SUDO_USER") if root else None
    if root and not system and user != "root":
        raise ServiceError("you are root: a user service would be root's own. Run this "
                           "without sudo, or use --system (the service runs as "
                           f"{user or invoking or 'the user named by --user'})")
    chosen = user or invoking or getpass.getuser()
    if chosen == "root" and user != "root":
        raise ServiceError("refusing to run jobs as root without being asked: "
                           "pass --user NAME (--user root if you really mean it)")
    return chosen


# --- rendering: pure ---------------------------------------------------------------


def _systemd_quote(arg: str) -> str:
    # systemd expands % specifiers and $ variables even inside quotes.
    text = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def systemd_unit(t: Target) -> str:
    """The unit file: restarted always, and stopping it never kills running jobs."""
    after = "Wants=network-online.target\nAfter=network-online.target\n" if t.system else ""
    user = f"User={t.user}\n" if t.system else ""
    return (
        f"# {HEADER}\n"
        "[Unit]\n"
        f"Description=filerexec: run jobs dropped into {t.spool.as_posix()}\n"
        f"{after}"
        "\n[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_systemd_quote(a) for a in t.argv)}\n"
        f"{user}"
        "Restart=always\n"
        "RestartSec=5\n"
        "# Only the daemon is stopped: running jobs keep running and the next start adopts them.\n"
        "KillMode=process\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "\n[Install]\n"
        f"WantedBy={'multi-user.target' if t.system else 'default.target'}\n"
    )


def launchd_label(t: Target) -> str:
    return f"local.{t.name}"


def launchd_plist(t: Target) -> str:
    """A LaunchAgent (LaunchDaemon with ``system``): started at load, kept alive."""
    log = (t.home / "Library" / "Logs" / f"{t.name}.log").as_posix()
    doc: dict[str, object] = {
        "Label": launchd_label(t),
        "ProgramArguments": list(t.argv),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Background",
        # launchd would kill the daemon's process group on stop: leave the jobs alone.
        "AbandonProcessGroup": True,
        "EnvironmentVariables": {"PATH": t.path_env, "PYTHONUNBUFFERED": "1"},
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    if t.system:
        doc["UserName"] = t.user
    return plistlib.dumps(doc).decode()


def windows_task(t: Target) -> str:
    """A Task Scheduler definition: at logon (at boot with ``system``), no time limit,
    restarted after a failure. Registered with ``schtasks /Create /XML``."""
    user = escape(t.user)
    trigger = ("<BootTrigger><Enabled>true</Enabled></BootTrigger>" if t.system else
               f"<LogonTrigger><Enabled>true</Enabled><UserId>{user}</UserId></LogonTrigger>")
    # S4U: runs at boot as the user without storing a password (local resources only).
    logon = "S4U" if t.system else "InteractiveToken"
    arguments = subprocess.list2cmdline(list(t.argv[1:]))
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<!-- {escape(HEADER)} -->
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>filerexec: run jobs dropped into {escape(str(t.spool))}</Description>
  </RegistrationInfo>
  <Triggers>
    {trigger}
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <LogonType>{logon}</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <StartWhenAvailable>true</StartWhenAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <Enabled>true</Enabled>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>5</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(t.argv[0])}</Command>
      <Arguments>{escape(arguments)}</Arguments>
    </Exec>
  </Actions>
</Task>
"""


# --- plans ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    path: Path
    text: str
    encoding: str = "utf-8"


@dataclass(frozen=True, slots=True)
class Remove:
    path: Path


@dataclass(frozen=True, slots=True)
class Run:
    argv: tuple[str, ...]
    may_fail: bool = False  # e.g. stopping what may not be running


Step: TypeAlias = Write | Remove | Run


def definition_path(t: Target) -> Path:
    """Where the service definition is written."""
    if t.platform == "systemd":
        folder = Path("/etc/systemd/system") if t.system else t.config_home / "systemd" / "user"
        return folder / f"{t.name}.service"
    if t.platform == "launchd":
        folder = Path("/Library/LaunchDaemons") if t.system else t.home / "Library/LaunchAgents"
        return folder / f"{launchd_label(t)}.plist"
    return t.home / "AppData" / "Local" / APP / f"{t.name}-task.xml"  # beside the config


def install(t: Target) -> list[Step]:
    """The steps that install and start the service (re-installing restarts it)."""
    path = definition_path(t)
    if t.platform == "systemd":
        ctl = _systemctl(t)
        steps: list[Step] = [Write(path, systemd_unit(t)), Run((*ctl, "daemon-reload")),
                             Run((*ctl, "enable", f"{t.name}.service")),
                             Run((*ctl, "restart", f"{t.name}.service"))]
        if not t.system:  # without lingering, a user's units start at login, not at boot
            steps.append(Run(("loginctl", "enable-linger", t.user)))
        return steps
    if t.platform == "launchd":
        domain = "system" if t.system else f"gui/{t.uid}"
        return [Write(path, launchd_plist(t)),
                Run(("launchctl", "bootout", f"{domain}/{launchd_label(t)}"), may_fail=True),
                Run(("launchctl", "bootstrap", domain, path.as_posix()))]
    schtasks = _schtasks(t)
    return [Write(path, windows_task(t), "utf-16"),
            Run((schtasks, "/Create", "/TN", t.name, "/XML", str(path), "/F")),
            Run((schtasks, "/Run", "/TN", t.name))]


def uninstall(t: Target) -> list[Step]:
    """The steps that stop the daemon (never its jobs) and remove the service."""
    path = definition_path(t)
    if t.platform == "systemd":
        ctl = _systemctl(t)
        return [Run((*ctl, "disable", "--now", f"{t.name}.service"), may_fail=True),
                Remove(path), Run((*ctl, "daemon-reload"))]
    if t.platform == "launchd":
        domain = "system" if t.system else f"gui/{t.uid}"
        return [Run(("launchctl", "bootout", f"{domain}/{launchd_label(t)}"), may_fail=True),
                Remove(path)]
    schtasks = _schtasks(t)
    return [Run((schtasks, "/End", "/TN", t.name), may_fail=True),
            Run((schtasks, "/Delete", "/TN", t.name, "/F")), Remove(path)]


def _systemctl(t: Target) -> tuple[str, ...]:
    return ("systemctl",) if t.system else ("systemctl", "--user")


def _schtasks(t: Target) -> str:
    # By absolute path, like taskkill: a schtasks.exe in the current folder must not run.
    return str(PureWindowsPath(t.system_root, "System32", "schtasks.exe"))


def describe(steps: Sequence[Step]) -> str:
    """The plan as a person reads it: each file in full, each command as typed."""
    out = []
    for step in steps:
        if isinstance(step, Write):
            out.append(f"# write {step.path}\n{step.text.rstrip()}\n")
        elif isinstance(step, Remove):
            out.append(f"# remove {step.path}")
        else:
            out.append(f"$ {_shown(step.argv)}" + ("    # may fail" if step.may_fail else ""))
    return "\n".join(out) + "\n"


def _shown(argv: Sequence[str]) -> str:
    return subprocess.list2cmdline(argv) if "\\" in argv[0] else shlex.join(argv)


def execute(steps: Sequence[Step], runner: Callable[[list[str]], int] | None = None) -> None:
    """Carry out a plan in order; stop at the first failure with a ServiceError."""
    run = runner or process.run_tool
    for step in steps:
        try:
            if isinstance(step, Write):
                step.path.parent.mkdir(parents=True, exist_ok=True)
                step.path.write_text(step.text, encoding=step.encoding)
                print(f"wrote {step.path}")
            elif isinstance(step, Remove):
                step.path.unlink(missing_ok=True)
                print(f"removed {step.path}")
            else:
                print(f"running: {_shown(step.argv)}")
                code = run(list(step.argv))
                if code != 0 and not step.may_fail:
                    raise ServiceError(f"{_shown(step.argv)} failed (exit status {code})")
        except PermissionError as e:
            raise ServiceError(f"{e.filename}: permission denied (a --system service is "
                               "installed with root or administrator rights)") from None
