"""The `dicom-node` command (also `python -m node`). Wiring only: parse arguments, load settings, call the
module that does the work."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from node import COMMAND
from node.config import Settings, load_settings
from node.errors import ConfigError, ListenError, NodeError, NotFoundError
from node.training.cli import add_training_commands

logger = logging.getLogger(__name__)

NO_RULES = (
    "give a rules file (a path, or --rules FILE), or set rules_path in the config file "
    "(--config FILE or $NODE_CONFIG)"
)


def _config_path(args: argparse.Namespace) -> Path | None:
    path = getattr(args, "config", None)
    if path is not None:
        return Path(path)
    return Path(os.environ["NODE_CONFIG"]) if os.environ.get("NODE_CONFIG") else None


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "rules", None):
        overrides["rules_path"] = args.rules
    receive: dict[str, object] = {}
    if getattr(args, "port", None) is not None:
        receive["port"] = args.port
    if getattr(args, "ae_title", None):
        receive["ae_title"] = args.ae_title
    if receive:
        overrides["receive"] = receive
    return load_settings(_config_path(args), overrides)


def _rules_path(args: argparse.Namespace, settings: Settings) -> Path | None:
    if getattr(args, "rules", None):
        return Path(args.rules)
    return settings.rules_path


def _with_database(args: argparse.Namespace, work: Callable[[Session], int]) -> int:
    """Run a command on the EXISTING database of the settings (nothing is created or migrated; see
    node.app.open_existing_database). When the command fails (an unknown series or job, say), the
    database it looked in is named, so that a wrong --config or --data-dir shows at once."""
    from node.app import open_existing_database
    from node.db.session import display_url

    settings = _settings(args)
    sessions = open_existing_database(settings)
    try:
        with sessions() as session:
            try:
                code = int(work(session))
            except NotFoundError as exc:
                print(f"error: {exc}", file=sys.stderr)
                code = 2
    finally:
        bind = sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()
    if code != 0:
        print(f"(database: {display_url(settings.resolved_database_url)})", file=sys.stderr)
    return code


def _listen_setting(args: argparse.Namespace, section: str = "receive") -> str:
    """Where the address that could not be opened came from, for the one-line error."""
    if section == "web":
        where = f" in {_config_path(args)}" if _config_path(args) is not None else " (default 8080)"
        return f"web.host / web.port{where}, or set web.enabled: false"
    if getattr(args, "port", None) is not None:
        return "--port"
    config = _config_path(args)
    if config is not None:
        return f"receive.host / receive.port in {config}"
    return "receive.host / receive.port (defaults: 0.0.0.0, 11112; set them in a --config file), or --port"


def cmd_run(args: argparse.Namespace) -> int:
    from node.app import NodeService

    settings = _settings(args)
    if not getattr(args, "verbose", False):
        logging.getLogger().setLevel(settings.log_level)
    service = NodeService(settings)
    try:
        service.run_until_signalled()
    except ListenError as exc:
        print(f"error: {exc}; change {_listen_setting(args, exc.section)}", file=sys.stderr)
        return 2
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    from node.rules.dryrun import cmd_rules_check as check

    path = Path(args.path) if args.path else _rules_path(args, _settings(args))
    if path is None:
        print(f"error: {NO_RULES}", file=sys.stderr)
        return 2
    return check(path)


def cmd_rules_test(args: argparse.Namespace) -> int:
    from node.rules.dryrun import cmd_rules_test as dry_run

    settings = _settings(args)
    rules_path = _rules_path(args, settings)
    if rules_path is None:
        print(f"error: {NO_RULES}", file=sys.stderr)
        return 2
    analyser = None
    if settings.classify.enabled and not args.no_classify:
        from node.classify.factory import build_analyser

        analyser = build_analyser(settings.classify)[0]
    called_ae = args.called_ae or settings.receive.ae_title
    return dry_run(
        rules_path, Path(args.path), args.json, analyser, calling_ae=args.calling_ae, called_ae=called_ae
    )


def cmd_rules_reload(args: argparse.Namespace) -> int:
    from node.app import pid_file

    settings = _settings(args)
    pid_path = pid_file(settings)
    try:
        pid = int(pid_path.read_text())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"no running node found via {pid_path}: {exc}", file=sys.stderr)
        return 2
    print(f"asked node (pid {pid}) to reload its rules; see `{COMMAND} audit recent --event rules.`")
    return 0


def cmd_series_complete(args: argparse.Namespace) -> int:
    from node.tracker import complete_series

    def work(session: Session) -> int:
        done = complete_series(session, args.uid, "manual")
        session.commit()
        if done:
            print(f"series {args.uid} marked complete; the running node routes it")
            return 0
        print(f"series {args.uid} is not receiving (already complete); nothing done", file=sys.stderr)
        return 1

    return _with_database(args, work)


def cmd_audit_series(args: argparse.Namespace) -> int:
    from node.audit.query import cmd_audit_series as show

    return _with_database(args, lambda session: show(session, args.uid, args.json, all_events=args.all))


def cmd_audit_recent(args: argparse.Namespace) -> int:
    from node.audit.query import cmd_audit_recent as recent

    return _with_database(
        args, lambda session: recent(session, args.limit, args.event, args.since, args.json)
    )


def cmd_deliveries_list(args: argparse.Namespace) -> int:
    from node.deliveries import cmd_deliveries_list as listing

    return _with_database(
        args, lambda session: listing(session, args.state, args.destination, args.json, kind=args.kind)
    )


def cmd_deliveries_retry(args: argparse.Namespace) -> int:
    from node.deliveries import cmd_deliveries_retry as retry

    if args.id is None and not args.all_failed:
        print("give a delivery ID or --all-failed", file=sys.stderr)
        return 2
    return _with_database(
        args,
        lambda session: retry(session, args.id, args.all_failed, args.destination, args.force, args.replan),
    )


def cmd_web_hash_password(args: argparse.Namespace) -> int:
    """Print the PBKDF2 hash for web.auth.users[].password_hash: the password from stdin (first line),
    or asked twice on a terminal. It is never an argument (it would show in ps and the shell history)."""
    from node.web.auth import hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the running node reports healthy, 1 when not (or when it is not running)."""
    from node.health import HEALTH_FILE, read_health

    path = _settings(args).data_dir / HEALTH_FILE
    healthy, report = read_health(path)
    if args.json:
        import json

        print(json.dumps({"healthy": healthy, **report}, indent=2, sort_keys=True))
    else:
        print(f"{'healthy' if healthy else 'UNHEALTHY'} ({path})")
        for problem in report.get("problems", []):
            print(f"  {problem}")
    return 0 if healthy else 1


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from node.app import open_database
    from node.db.session import display_url

    settings = _settings(args)
    sessions = open_database(settings)
    bind = sessions.kw.get("bind")
    if bind is not None:
        bind.dispose()
    print(f"database at {display_url(settings.resolved_database_url)} is at the newest schema")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # The global options, accepted before the command, between a command group and its subcommand, and
    # after it (`dicom-node --config x.yaml audit recent` = `dicom-node audit recent --config x.yaml`).
    # Every copy has default=SUPPRESS: a subparser's copy left at its default must not overwrite the
    # value that an earlier position set (argparse copies the subparser's namespace over the parent's).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="YAML settings file (default: $NODE_CONFIG or built-in defaults)",
    )
    common.add_argument(
        "--data-dir", type=Path, default=argparse.SUPPRESS, help="override data_dir (database, spool)"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )

    parser = argparse.ArgumentParser(prog=COMMAND, description="DICOM routing node", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="receive, complete, route and forward until SIGTERM")
    run.add_argument("--port", type=int, help="DICOM port (default 11112)")
    run.add_argument("--ae-title", help="our AE title (default NODE)")
    run.add_argument("--rules", type=Path, help="rules YAML (default: rules_path from the config)")
    run.set_defaults(func=cmd_run)

    rules = sub.add_parser(
        "rules", parents=[common], help="check, dry-run or reload routing rules"
    ).add_subparsers(dest="rules_command", required=True)
    check = rules.add_parser("check", parents=[common], help="validate a rules file")
    check.add_argument("path", nargs="?", help="rules YAML (default: rules_path from the config)")
    check.set_defaults(func=cmd_rules_check)
    test = rules.add_parser("test", parents=[common], help="show where DICOM files would be routed, and why")
    test.add_argument("path", help="a DICOM file or a folder of them")
    test.add_argument("--rules", type=Path, help="rules YAML (default: rules_path from the config)")
    test.add_argument("--json", action="store_true")
    test.add_argument(
        "--no-classify", action="store_true", help="headers only: skip volume assembly and the classifier"
    )
    test.add_argument(
        "--calling-ae", help="the sender's AE title, as series.calling_ae (default: none, i.e. missing)"
    )
    test.add_argument(
        "--called-ae",
        help="the AE title the sender addressed, as series.called_ae (default: receive.ae_title)",
    )
    test.set_defaults(func=cmd_rules_test)
    reload = rules.add_parser("reload", parents=[common], help="ask the running node to reload its rules")
    reload.set_defaults(func=cmd_rules_reload)

    series = sub.add_parser("series", parents=[common], help="series commands").add_subparsers(
        dest="series_command", required=True
    )
    complete = series.add_parser("complete", parents=[common], help="mark a receiving series complete now")
    complete.add_argument("uid")
    complete.set_defaults(func=cmd_series_complete)

    audit_cmd = sub.add_parser("audit", parents=[common], help="query the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    story = audit_cmd.add_parser("series", parents=[common], help="the full story of one series")
    story.add_argument("uid")
    story.add_argument("--json", action="store_true")
    story.add_argument("--all", action="store_true", help="list every per-instance event, unfolded")
    story.set_defaults(func=cmd_audit_series)
    recent = audit_cmd.add_parser("recent", parents=[common], help="latest audit events")
    recent.add_argument("--limit", type=int, default=50)
    recent.add_argument("--event", help="event name prefix, e.g. delivery.")
    recent.add_argument("--since", help="ISO 8601 time (UTC if no offset) or an age: 30m, 24h, 7d")
    recent.add_argument("--json", action="store_true")
    recent.set_defaults(func=cmd_audit_recent)

    deliveries = sub.add_parser(
        "deliveries", parents=[common], help="list or requeue deliveries"
    ).add_subparsers(dest="deliveries_command", required=True)
    listing = deliveries.add_parser("list", parents=[common], help="deliveries, newest first")
    listing.add_argument("--state", choices=["queued", "running", "done", "failed", "dead"])
    listing.add_argument("--destination")
    listing.add_argument(
        "--kind",
        choices=["deliver", "route", "all"],
        default="deliver",
        help="deliveries (default), route jobs (decide and queue deliveries), or both",
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_deliveries_list)
    retry = deliveries.add_parser(
        "retry", parents=[common], help="requeue a failed delivery or route job (or all of them)"
    )
    retry.add_argument("id", nargs="?", type=int, help="a delivery or route job ID (deliveries list)")
    retry.add_argument("--all-failed", action="store_true")
    retry.add_argument(
        "--replan",
        action="store_true",
        help="decide again with the rules in force (new destinations and settings); "
        "without it a delivery keeps the plan it was queued with",
    )
    retry.add_argument("--destination", help="with --all-failed: only this destination")
    retry.add_argument("--force", action="store_true", help="also resend a delivery that succeeded")
    retry.set_defaults(func=cmd_deliveries_retry)

    health = sub.add_parser("health", parents=[common], help="is the running node healthy? (exit 0 / 1)")
    health.add_argument("--json", action="store_true")
    health.set_defaults(func=cmd_health)

    web = sub.add_parser("web", help="HTTP side (STOW-RS) helpers").add_subparsers(
        dest="web_command", required=True
    )
    web.add_parser(
        "hash-password", help="print the PBKDF2 hash of a password (read from stdin) for web.auth.users"
    ).set_defaults(func=cmd_web_hash_password)

    db = sub.add_parser("db", parents=[common], help="database maintenance").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser(
        "upgrade", parents=[common], help="create the database or apply migrations (only `run` does too)"
    ).set_defaults(func=cmd_db_upgrade)
    add_training_commands(sub, common)  # train, evaluate, crossval
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic reports every migration check at INFO, APScheduler every completion timer (re-)armed and
    # pynetdicom's standard handlers every C-STORE request: lines per received instance. Only the
    # node's own log (and pynetdicom's per-association lines) is of interest unless -v.
    for noisy in ("alembic", "apscheduler", "pynetdicom._handlers"):
        logging.getLogger(noisy).setLevel(logging.NOTSET if verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
