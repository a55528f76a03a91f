"""The command line (DESIGN §7): ``filerexec init|serve|status|validate|submit``."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from filerexec import __version__, keystore, signing
from filerexec.config import Settings, default_host, spool_state_dir, state_base
from filerexec.daemon import AlreadyRunning, Daemon
from filerexec.names import job_name
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
    s.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    s.add_argument("--require-signature", action="store_true", default=None,
                   help="run only signed jobs (filerexec sign) or jobs with a phone code")
    s.add_argument("--allow", action="append", default=None, metavar="PATTERN",
                   help="run only commands matching this wildcard pattern (repeatable)")
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
    for noisy in ("watchdog", "filelock"):  # their debug lines drown the daemon's own
        logging.getLogger(noisy).setLevel(logging.INFO)
    spool = args.spool.resolve()
    if not spool.is_dir():
        print(f"filerexec: {spool} is not a folder (create it with: filerexec init {spool})",
              file=sys.stderr)
        return USAGE
    host = args.host or default_host()
    overrides: dict[str, Any] = {"poll": args.poll}
    if args.rescan is not None:
        overrides["rescan_interval"] = args.rescan
    if args.require_signature is not None:
        overrides["require_signature"] = args.require_signature
    if args.allow is not None:
        overrides["allow"] = tuple(args.allow)
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
    if job_name(f"{args.name}.yaml") != args.name:
        print(f"filerexec: {args.name!r} is not a usable job name (letters, digits, '-', '_', "
              "'.', and '/' for sub-folders)", file=sys.stderr)
        return USAGE
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


def cmd_keygen(args: argparse.Namespace) -> int:
    key_dir = keystore.default_key_dir()
    name = args.name or default_host()
    try:
        if not args.totp:
            path = keystore.create_key(key_dir, name)
            print(f"created {path} (readable by you only)")
            print("Copy it to the keys/ folder of every host that should trust it, over a "
                  "channel you trust (not the synced folder). Revoke it by removing the file.")
            return OK
        path, secret = keystore.create_totp(key_dir, name)
    except keystore.KeyProblem as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    uri = signing.otpauth_uri(secret, f"{name}@{default_host()}")
    print(f"created {path} (readable by you only); scan this with your authenticator app:")
    try:
        import segno  # only here: the daemon never needs it
    except ImportError:  # pragma: no cover - segno is a dependency
        print("(no QR code: the segno library is missing; type the secret from the URI)")
    else:
        segno.make(uri, error="m").terminal(compact=True)
    print(uri)
    print("Then put `otp: CODE` into a job file. This secret lives on this host only; "
          "revoke it by removing the file.")
    return OK


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        key_id, secret = keystore.signing_key(keystore.default_key_dir(), args.key)
    except keystore.KeyProblem as e:
        print(f"filerexec: {e}", file=sys.stderr)
        return FAILURE
    status = OK
    for path in args.files:
        name = args.name or _job_name_of(path)
        if name is None:
            print(f"{path}: not a job file name (NAME.yaml); give the job's name with --name")
            status = FAILURE
            continue
        try:
            data = path.read_bytes()
            parse_job(signing.split_signature(data)[0], name)
        except OSError as e:
            print(f"{path}: cannot read: {e.strerror}")
            status = FAILURE
            continue
        except SpecError as e:
            print(f"{path}: not signed, fix it first: {e}")
            status = FAILURE
            continue
        # A fresh nonce each time: signing an unchanged file again makes a new run request.
        nonce = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
        signed = signing.sign(data, name, key_id, secret, nonce)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=".~filerexec-",
                                         suffix=".tmp", delete=False) as f:
            f.write(signed)
        Path(f.name).replace(path)
        print(f"{path}: signed as job {name!r} with key {key_id!r}")
    return status


def _job_name_of(path: Path) -> str | None:
    """The job a file is (or will be): its path below the nearest jobs/, else its own name."""
    parts = path.resolve().parts
    if "jobs" in parts:
        below = parts[len(parts) - parts[::-1].index("jobs"):]
        return job_name("/".join(below))
    return job_name(path.name)


if __name__ == "__main__":
    sys.exit(main())
