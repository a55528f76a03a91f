"""The command line (DESIGN §7): ``filerexec init|serve|status|validate|submit``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from filerexec import __version__
from filerexec.config import Settings, default_host, spool_state_dir, state_base
from filerexec.daemon import AlreadyRunning, Daemon
from filerexec.spec import SpecError, parse_job
from filerexec.spool import init as init_spool

OK, FAILURE, USAGE, ALREADY_RUNNING = 0, 1, 2, 3

logger = logging.getLogger("filerexec")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return USAGE
    result: int = args.func(args)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="filerexec",
        description="Run commands on this host when job files appear in a synced folder.")
    p.add_argument("--version", action="version", version=f"filerexec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("init", help="create jobs/, status/ and an example job")
    s.add_argument("spool", type=Path)
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="run the daemon for a spool")
    s.add_argument("spool", type=Path)
    s.add_argument("--host", default=None, help="this host's name (default: the OS host name)")
    s.add_argument("--state-dir", type=Path, default=None,
                   help="private state (ledger, lock); default: FILEREXEC_STATE_DIR or the "
                        "platform's state directory")
    s.add_argument("--poll", action="store_true",
                   help="no filesystem events (network shares): rescan every second")
    s.add_argument("--rescan", type=float, default=None, metavar="SECONDS",
                   help="periodic full rescan interval (default 10)")
    s.add_argument("--once", action="store_true",
                   help="reconcile, run what is due, wait for it, exit")
    s.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="run at most N jobs at once (default 16)")
    s.add_argument("--storm-starts", type=int, default=None, metavar="N",
                   help="safe mode after more than N daemon starts within --storm-minutes "
                        "(default 5)")
    s.add_argument("--storm-minutes", type=float, default=None, metavar="M",
                   help="the restart-storm window in minutes (default 2)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("status", help="show every host's jobs")
    s.add_argument("spool", type=Path)
    s.add_argument("--host", default=None, help="only this host")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("validate", help="check job files; exit 1 with line/column errors")
    s.add_argument("files", type=Path, nargs="+")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("submit", help="write a job file atomically")
    s.add_argument("spool", type=Path)
    s.add_argument("name", help="job name, e.g. backup or nightly/db")
    s.add_argument("--host", action="append", default=None, help="run only on this host")
    s.add_argument("--replace", action="store_true", help="overwrite an existing job file")
    s.add_argument("words", nargs=argparse.REMAINDER, help="-- COMMAND...")
    s.set_defaults(func=cmd_submit)
    return p


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
    spool = args.spool.resolve()
    if not spool.is_dir():
        print(f"filerexec: {spool} is not a folder (create it with: filerexec init {spool})",
              file=sys.stderr)
        return USAGE
    host = args.host or default_host()
    overrides: dict[str, Any] = {"poll": args.poll}
    if args.rescan is not None:
        overrides["rescan_interval"] = args.rescan
    for flag, key in (("max_parallel", "max_parallel"), ("storm_starts", "storm_starts"),
                      ("storm_minutes", "storm_minutes")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    settings = Settings(
        spool=spool, host=host,
        state_dir=spool_state_dir(state_base(args.state_dir), spool), **overrides)
    daemon = Daemon(settings)
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


def cmd_status(args: argparse.Namespace) -> int:
    root = args.spool / "status"
    docs: list[dict[str, Any]] = []
    hosts = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for host_dir in hosts:
        if args.host and host_dir.name != args.host:
            continue
        for path in sorted(host_dir.rglob("*.yaml")):
            if path.name == "host.yaml" and path.parent == host_dir:
                continue
            try:
                doc = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, dict) and "job" in doc:
                docs.append(doc)
    if args.json:
        print(json.dumps(docs, indent=2, default=str))
        return OK
    if not docs:
        print("no jobs yet")
        return OK
    rows = [("HOST", "JOB", "STATE", "EXIT", "STARTED", "REASON")]
    for d in docs:
        rows.append((str(d.get("host", "")), str(d["job"]), str(d.get("state", "")),
                     str(d.get("exit_code", "")), str(d.get("started", "")),
                     str(d.get("reason", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
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
    return status


def cmd_submit(args: argparse.Namespace) -> int:
    words = [w for w in args.words if w != "--"] if args.words[:1] == ["--"] else args.words
    if not words:
        print("filerexec: nothing to run: filerexec submit SPOOL NAME -- COMMAND...",
              file=sys.stderr)
        return USAGE
    doc: dict[str, Any] = {"commands": " ".join(words)}
    if args.host:
        doc["host"] = args.host[0] if len(args.host) == 1 else args.host
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
    try:
        parse_job(text, args.name)
    except SpecError as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    target = args.spool / "jobs" / f"{args.name}.yaml"
    if target.exists() and not args.replace:
        print(f"filerexec: {target} exists (use --replace to change it)", file=sys.stderr)
        return FAILURE
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target under a name no reconciler reads, then renamed into place.
    with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=".~filerexec-",
                                     suffix=".tmp", delete=False) as f:
        f.write(text)
    Path(f.name).replace(target)
    print(f"submitted {target}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
