"""The command line (DESIGN §7): parse arguments, call the module that does the work."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from filerexec import (
    __version__,
    completion,
    config,
    keycmds,
    migrate,
    notify,
    process,
    service,
    view,
)
from filerexec.completion import with_completion
from filerexec.config import default_host
from filerexec.machine import State
from filerexec.names import job_name
from filerexec.safefile import atomic_write
from filerexec.shellwords import CannotQuote, command_line, shell_kind
from filerexec.spec import JobSpec, SpecError, parse_job
from filerexec.spool import init as init_spool

OK, FAILURE, USAGE, ALREADY_RUNNING = 0, 1, 2, 3

logger = logging.getLogger("filerexec")


def main(argv: Sequence[str] | None = None, procs: process.Api = process) -> int:
    """The command line; ``procs`` is the process API ``serve`` runs jobs with (a test
    injects one that fails where it wants a fault: tests/dying_daemon.py)."""
    parser = _parser()
    completion.autocomplete(parser)  # answers a TAB and exits, when the shell asks
    before, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(before)
    if command is not None:
        args.words = command
    args.procs = procs
    if not getattr(args, "command", None):
        parser.print_help()
        return USAGE
    try:
        result: int = args.func(args)
    except config.ConfigError as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return USAGE
    return result


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`submit`'s own arguments, and the words after its first `--` exactly as given.

    Split here, not by argparse, which drops a second `--` from the words (`rsync -a --
    -odd-name` must keep it) and cannot take options after NAME with REMAINDER.
    """
    words = [w for w in argv if not w.startswith("-")]
    if words[:1] != ["submit"] or "--" not in argv:
        return argv, None
    split = argv.index("--")
    return argv[:split], argv[split + 1:]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="filerexec",
        description="Run commands on this host when job files appear in a synced folder.")
    p.add_argument("--version", action="version", version=f"filerexec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("init", help="create jobs/, status/ and an example job")
    with_completion(s.add_argument("spool", type=Path), "spool")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="run the daemon for a spool")
    with_completion(s.add_argument("spool", type=Path, nargs="?",
                                   help="default: `spool:` in the config file"), "spool")
    _setting_flags(s)
    s.add_argument("--once", action="store_true",
                   help="reconcile, run what is due, wait for it, exit")
    s.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    s.set_defaults(func=cmd_serve)

    for name, what in (("drain", "let running jobs finish and start nothing new"),
                       ("resume", "end a drain: start jobs again")):
        s = sub.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]} on this "
                           "host (it outlasts restarts; host.yaml shows it).")
        with_completion(s.add_argument("spool", type=Path, nargs="?",
                                       help="default: `spool:` in the config file"), "spool")
        s.add_argument("--state-dir", dest="state_dir", type=Path, default=None,
                       metavar="DIR", help="the state directory `serve` uses")
        _config_flag(s)
        s.set_defaults(func=cmd_drain)

    s = sub.add_parser("status", help="show every host's jobs")
    with_completion(s.add_argument("spool", type=Path, nargs="?",
                                   help="default: `spool:` in the config file"), "spool")
    with_completion(s.add_argument("--host", action="append", default=None,
                                   help="only this host (repeatable)"), "host")
    with_completion(s.add_argument("--job", action="append", default=None, metavar="NAME",
                                   help="only this job (repeatable)"), "job")
    s.add_argument("--state", action="append", default=None, choices=[x.value for x in State],
                   help="only jobs in this state (repeatable)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _config_flag(s)
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("logs", help="show or follow a job's log")
    with_completion(s.add_argument("where", nargs="+", metavar="[SPOOL] NAME"), "where")
    with_completion(s.add_argument("--host", default=None,
                                   help="whose log (default: the only host with one)"), "host")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    _config_flag(s)
    s.set_defaults(func=cmd_logs)

    s = sub.add_parser("validate", help="check job files; exit 1 with line/column errors")
    s.add_argument("files", type=Path, nargs="+")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("submit", help="write a job file atomically",
                       description="Write a job file atomically. One word after -- is a shell "
                       "line as given (-- 'ls | wc -l'); several are quoted word by word, so "
                       "that each reaches the program as one argument.")
    with_completion(s.add_argument("spool", type=Path), "spool")
    with_completion(s.add_argument("name", help="job name, e.g. backup or nightly/db"), "job")
    with_completion(s.add_argument("--host", action="append", default=None,
                                   help="run only on this host"), "host")
    s.add_argument("--shell", default=None,
                   help="the job's shell (bash, cmd.exe, …); words are quoted for it")
    s.add_argument("--replace", action="store_true", help="overwrite an existing job file")
    s.add_argument("words", nargs="*", metavar="-- COMMAND", help="the command to run")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("import", help="split the seed's filerexec.yaml into job files")
    s.add_argument("old", type=Path, metavar="OLD_FILEREXEC_YAML")
    s.add_argument("spool", type=Path)
    s.add_argument("--force", action="store_true", help="overwrite existing job files")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("config", help="show the effective settings and where they come from")
    s.add_argument("action", choices=["show"])
    s.add_argument("spool", type=Path, nargs="?")
    _setting_flags(s)
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("service", help="start `filerexec serve` at boot (systemd, launchd, "
                                       "Windows Task Scheduler)")
    s.add_argument("action", choices=["install", "uninstall", "show"])
    s.add_argument("spool", type=Path, nargs="?", help="default: `spool:` in the config file")
    s.add_argument("--system", action="store_true",
                   help="start at boot, before anyone logs in; runs as you (needs root/admin)")
    s.add_argument("--platform", choices=service.PLATFORMS, default=None,
                   help="render for this platform (default: this one's)")
    s.add_argument("--name", default="filerexec", help="unit / agent / task name")
    s.add_argument("--user", default=None,
                   help="run as this user (default: you; root only when named here)")
    _config_flag(s)
    s.set_defaults(func=cmd_service)

    s = sub.add_parser("keygen", help="create a signing key, or a phone's TOTP secret")
    s.add_argument("--name", default=None, help="the device it is for (default: this host)")
    s.add_argument("--totp", action="store_true",
                   help="enrol an authenticator app: print an otpauth:// URI and a QR code")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("sign", help="sign job files (a trailing comment line)")
    s.add_argument("files", type=Path, nargs="+")
    s.add_argument("--key", default=None, help="the key to sign with (default: the only one)")
    s.add_argument("--name", default=None,
                   help="the job name (default: the path below jobs/, or the file name)")
    s.set_defaults(func=cmd_sign)

    s = sub.add_parser("notify", help="send a test notification to the config's targets")
    s.add_argument("action", choices=["test"])
    s.add_argument("target", nargs="?", help="one target's name (default: every target)")
    _config_flag(s)
    s.set_defaults(func=cmd_notify)

    s = sub.add_parser("completion", help="print the shell completion script",
                       description="Print the completion script for SHELL: "
                       "commands, options, and job and host names from the spool.")
    s.add_argument("shell", choices=completion.SHELLS)
    s.set_defaults(func=cmd_completion)
    return p


def _config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=f"config file (default: ${config.CONFIG_VAR} or the platform's place)")


def _setting_flags(p: argparse.ArgumentParser) -> None:
    """One flag per setting that has one; None means "not given" (the config file decides)."""
    for key in config.KEYS:
        if key.flag is None:
            continue
        if isinstance(key.default, bool):
            p.add_argument(key.flag, dest=key.name, action="store_true", default=None,
                           help=key.help)
        elif isinstance(key.default, tuple):  # a list: the flag is repeated, one item each
            p.add_argument(key.flag, dest=key.name, action="append", default=None,
                           type=_typed(_item_of(key.parse)),
                           metavar=key.metavar, help=key.help + " (repeatable)")
        else:
            default = "" if key.default is None else f" (default {key.show(key.default)})"
            p.add_argument(key.flag, dest=key.name, type=_typed(key.parse), default=None,
                           metavar=key.metavar, help=key.help + default)
    _config_flag(p)


def _item_of(parse: Callable[[object], Any]) -> Callable[[object], Any]:
    """One item of a list setting, checked as the setting checks each of its items."""
    return lambda text: parse([text])[0]


def _typed(parse: Callable[[object], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _effective(args: argparse.Namespace, spool_only: bool = False) -> config.Effective:
    """The settings of this invocation; commands that only read take just SPOOL from flags."""
    names = ("spool",) if spool_only else config.KEY_NAMES
    flags = {k: tuple(v) if isinstance(v := getattr(args, k), list) else v
             for k in names if hasattr(args, k)}
    return config.resolve(flags, args.config)


def _spool(args: argparse.Namespace) -> Path:
    """SPOOL as given, else the config file's `spool:`; raises ConfigError if neither."""
    return _effective(args, spool_only=True).settings().spool


def cmd_init(args: argparse.Namespace) -> int:
    created = init_spool(args.spool)
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"{args.spool} is already a spool")
    return OK


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("watchdog", "filelock"):  # their debug lines drown the daemon's own
        logging.getLogger(noisy).setLevel(logging.INFO)
    settings = _effective(args).settings()
    if not settings.spool.is_dir():
        print(f"filerexec: {settings.spool} is not a folder "
              f"(create it with: filerexec init {settings.spool})", file=sys.stderr)
        return USAGE
    # Imported here: every TAB of shell completion runs this module, and the daemon's
    # imports (watchdog, psutil, sqlite3) would make each one slower.
    from filerexec.daemon import AlreadyRunning, Daemon

    daemon = Daemon(settings, procs=args.procs)
    try:
        daemon.open()
    except AlreadyRunning as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return ALREADY_RUNNING
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only set flags: the loop does the work (and leaves running jobs running).
        stop.set()
        daemon.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.run(stop, once=args.once)
    finally:
        daemon.close()
    logger.info("stopped; running jobs keep running and are adopted at the next start")
    return OK


def cmd_drain(args: argparse.Namespace) -> int:
    from filerexec import lifecycle  # not at the top: see cmd_serve

    settings = _effective(args).settings()
    if args.command == "drain":
        new = lifecycle.drain(settings.state_dir, time.time())
        print(f"{'draining' if new else 'already draining'} {settings.spool} on this host: "
              f"running jobs finish, nothing new starts (`filerexec resume` ends it)")
    else:
        new = lifecycle.resume(settings.state_dir)
        print(f"resumed {settings.spool}: jobs start again" if new
              else f"{settings.spool} was not draining on this host")
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    docs = view.job_docs(_spool(args), hosts=args.host, states=args.state)
    if args.job:
        docs = [d for d in docs if d.get("job") in args.job]
    if args.json:
        print(json.dumps(docs, indent=2, default=str))
        return OK
    print(view.table(docs) if docs else "no jobs yet" if not (args.host or args.state or args.job)
          else "no jobs match")
    if not (args.state or args.job) and (hosts := view.host_docs(_spool(args), args.host)):
        print("\n" + view.hosts_table(hosts))  # each host's state and labels
    return OK


def cmd_logs(args: argparse.Namespace) -> int:
    if len(args.where) > 2:
        print("filerexec: usage: filerexec logs [SPOOL] NAME", file=sys.stderr)
        return USAGE
    args.spool = Path(args.where[0]) if len(args.where) == 2 else None
    spool, name = _spool(args), args.where[-1]
    try:
        log = view.find_log(spool, name, args.host)
    except view.NotFound as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    if not args.follow:
        if not log.exists():
            print(f"filerexec: {name} has no output yet", file=sys.stderr)
            return OK
        sys.stdout.buffer.write(log.read_bytes())
        return OK
    with contextlib.suppress(KeyboardInterrupt):
        for chunk in view.follow(log):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    return OK


def cmd_config(args: argparse.Namespace) -> int:
    print(config.describe(_effective(args)), end="")
    return OK


def cmd_notify(args: argparse.Namespace) -> int:
    """Send a test event to each target (or one) now, and say what each receiver answered."""
    from filerexec import sender  # only this command sends from the command line

    values = config.resolve({}, args.config).values
    targets: dict[str, str] = dict(values["notify"])
    if args.target is not None and args.target not in targets:
        known = ", ".join(sorted(targets)) or "none"
        print(f"filerexec: no notification target {args.target!r} in the config file "
              f"(targets: {known})", file=sys.stderr)
        return USAGE
    if not targets:
        print("filerexec: no notification targets: add `notify:` to the config file "
              "(README, Notifications)", file=sys.stderr)
        return USAGE
    event = notify.trial_event(values["host"], time.time())
    code = OK
    for name in [args.target] if args.target else sorted(targets):
        try:
            answer = sender.send(targets[name], event)
        except sender.DeliveryError as e:
            print(f"{name}: not sent: {e}", file=sys.stderr)
            code = FAILURE
        else:
            print(f"{name}: sent{f' ({answer})' if answer else ''}")
    return code


def cmd_import(args: argparse.Namespace) -> int:
    try:
        report = migrate.import_seed(args.old, args.spool, force=args.force)
    except migrate.ImportRefused as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    print(report, end="")
    return OK


def cmd_service(args: argparse.Namespace) -> int:
    effective = _effective(args, spool_only=True)
    try:
        target = service.Target.here(effective, system=args.system, platform=args.platform,
                                     name=args.name, user=args.user)
        plan = getattr(service, args.action if args.action != "show" else "install")(target)
    except service.ServiceError as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    if args.action == "show":
        print(service.describe(plan), end="")
        return OK
    try:
        service.execute(plan)
    except service.ServiceError as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    return OK


def cmd_validate(args: argparse.Namespace) -> int:
    status = OK
    for path in args.files:
        name = path.name.split(".")[0]
        try:
            spec = parse_job(path.read_bytes(), name)
        except OSError as e:
            print(f"{path}: cannot read: {e.strerror}")
            status = FAILURE
        except SpecError as e:
            print(f"{path}: {e}")
            status = FAILURE
        else:
            print(f"{path}: ok (digest {spec.short_digest})")
            print(what_runs(spec), end="")
    return status


def what_runs(spec: JobSpec) -> str:
    """What a host would run for ``spec``, as `validate` shows it: each command after
    YAML's joins, numbered, and where and how it runs."""
    where = " ".join(part for part in (
        "on " + (", ".join(spec.hosts) if spec.hosts else "every host"),
        spec.shell and f"with {spec.shell}", spec.cwd and f"in {spec.cwd}") if part)
    lines = [f"  runs {where}" + (", in order:" if len(spec.commands) > 1 else ":")]
    width = len(str(len(spec.commands)))
    for number, command in enumerate(spec.commands, 1):
        first, *rest = command.split("\n")
        lines.append(f"  {number:>{width}}. {first}")
        lines.extend(f"  {'':>{width}}  {line}" for line in rest)  # a script's further lines
    if spec.operation == "stop":
        lines.append("  (operation: stop — it does not start, and is killed if it runs)")
    if (told := notify.told(spec)) is not None:
        lines.append(f"  {told}")
    return "".join(f"{line}\n" for line in lines)


def _submit_kind(args: argparse.Namespace) -> str:
    """The shell kind several words are quoted for: ``--shell``, else the one the hosts
    that will run the job published (their host.yaml's ``shell:``); POSIX if none did."""
    if args.shell or len(args.words) < 2:
        return shell_kind(args.shell)
    from filerexec.view import host_shells

    shells = host_shells(args.spool, args.host)
    kinds = {shell_kind(shell) for shell in shells.values()}
    if len(kinds) > 1:
        named = ", ".join(f"{host}: {shell}" for host, shell in sorted(shells.items()))
        raise CannotQuote(f"the hosts run jobs in different shells ({named}): choose one "
                          "with --shell or --host, or give the command as one line")
    return kinds.pop() if kinds else "posix"


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        line = command_line(args.words, _submit_kind(args))
    except CannotQuote as e:
        print(f"filerexec: {e}: filerexec submit SPOOL NAME -- COMMAND...", file=sys.stderr)
        return USAGE
    doc: dict[str, Any] = {"commands": line}
    if args.host:
        doc["host"] = args.host[0] if len(args.host) == 1 else args.host
    if args.shell:
        doc["shell"] = args.shell
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
    try:
        parse_job(text, args.name)
    except SpecError as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    if job_name(f"{args.name}.yaml") != args.name:
        print(f"filerexec: {args.name!r} is not a usable job name (letters, digits, '-', '_', "
              "'.', and '/' for sub-folders)", file=sys.stderr)
        return USAGE
    target = args.spool / "jobs" / f"{args.name}.yaml"
    if target.exists() and not args.replace:
        print(f"filerexec: {target} exists (use --replace to change it)", file=sys.stderr)
        return FAILURE
    # Written beside the target under a name no reconciler reads, then renamed into place.
    atomic_write(target, text.encode())
    print(f"submitted {target}")
    return OK


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion.script(args.shell), end="")
    return OK


def cmd_keygen(args: argparse.Namespace) -> int:
    return OK if keycmds.keygen(args.name or default_host(), args.totp) else FAILURE


def cmd_sign(args: argparse.Namespace) -> int:
    return OK if keycmds.sign(args.files, args.key, args.name) else FAILURE


if __name__ == "__main__":
    sys.exit(main())
