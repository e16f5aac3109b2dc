"""`llnm console`: the web console on LLNM_CONSOLE_PORT over the data dir's audit database (for a hospital
install beside `llnm listener` / `llnm worker`; `llnm serve` runs it itself). `llnm console add-user NAME
--role ROLE` adds or replaces a user (password from the terminal, or one line on standard input)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    serve = sub.add_parser("serve", help="serve the console (the default)")
    serve.add_argument("--port", type=int, help="LLNM_CONSOLE_PORT (default 8080)")
    serve.add_argument("--data-dir", help="LLNM_DATA_DIR")
    add = sub.add_parser("add-user", help="add or replace a console user")
    add.add_argument("name")
    add.add_argument("--role", required=True, help="viewer, operator, radiologist or admin")
    add.add_argument("--data-dir", help="LLNM_DATA_DIR (the users file's default folder)")
    parser.set_defaults(action="serve", port=None, data_dir=None)


def _settings(args: argparse.Namespace):
    from pathlib import Path

    from llnm.config import Settings

    return Settings.from_env(console_port=getattr(args, "port", None),
                             data_dir=Path(args.data_dir) if args.data_dir else None)


def _password() -> str:
    import getpass
    import sys

    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise SystemExit("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def run(args: argparse.Namespace) -> int:
    from llnm.observability.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if args.action == "add-user":
        from llnm.console.auth import ROLES, Users, UsersFileError

        password = _password()
        if len(password) < 8:
            print("the password must have at least 8 characters")
            return 2
        try:
            Users(settings.console_users_path).add(args.name, args.role, password)
        except UsersFileError as exc:
            print(exc)
            return 2
        print(f"{args.name} ({args.role}) in {settings.console_users_path}; roles: {', '.join(ROLES)}")
        return 0
    from llnm.console.server import ConsoleServer
    from llnm.service import _stop_on_signals, console_checks

    if settings.console_port == 0:
        print("LLNM_CONSOLE_PORT is 0: nothing to serve")
        return 2
    from llnm.console.auth import SecretKeyError
    from llnm.console.oidc import OidcConfigError

    stop = _stop_on_signals()  # the service's own handlers: SIGTERM ends with status 0
    try:
        server = ConsoleServer(settings, checks=console_checks(settings))
        server.start()
    except (OSError, SecretKeyError, OidcConfigError) as exc:  # our settings' own messages, or the port's
        print(exc)
        return 1
    health = None
    if settings.metrics_port:  # llnm_feedback_* and llnm_outcome_* for Prometheus
        from llnm.observability.health import HealthServer

        health = HealthServer(settings.metrics_port, {}, host=settings.bind_address).start()
    stop.wait()
    server.stop()
    if health:
        health.stop()
    return 0
