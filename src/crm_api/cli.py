"""``crm-api`` (also ``python -m crm_api``): serve, migrate, seed-demo, create-admin, backup,
restore, openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from crm_api.config import get_settings

OPENAPI_PATH = Path("openapi/openapi.json")


def _url() -> str:
    """The database URL (starting the embedded cluster when none is configured), checked
    to answer: :class:`DatabaseUnavailable` (one line for the user) when it does not."""
    from crm_api.db.check import check_database
    from crm_api.db.engine import resolve_database_url

    url = resolve_database_url(get_settings())
    check_database(url)
    return url


def cmd_migrate(_: argparse.Namespace) -> int:
    from crm_api.db.migrate import upgrade

    upgrade(_url())
    print("database migrated to head")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from crm_api.seed import seed_demo

    if get_settings().is_production:
        print(
            "crm-api seed-demo: refused with CRM_ENV=production (the demo users share a "
            "published password)",
            file=sys.stderr,
        )
        return 2
    url = _url()
    _migrate(url)
    result = asyncio.run(seed_demo(url, customers=args.customers, progress=_progress))
    print(
        f"demo data: {result['org_units']} org units ({result['new_org_units']} new), "
        f"{result['users']} users ({result['new_users']} new), "
        f"{result['customers_added']} customers and {result['products_added']} products "
        f"added; demo password {result['password']}"
    )
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _migrate(url: str) -> None:
    """Migrate to head (a no-op when already there; waits for a migration in progress)."""
    from crm_api.db.migrate import upgrade

    upgrade(url)


def cmd_create_admin(args: argparse.Namespace) -> int:
    """Create the first administrator (or give an existing person ``admin``). Prompts for
    what is not given; with both ``--email`` and ``--password`` it never reads the
    terminal, so deploy scripts can run it. Migrates the database to head first."""
    import getpass

    from crm_api.auth.bootstrap import BootstrapError, ensure_admin
    from crm_api.auth.passwords import POLICY, policy_violations

    email = (args.email or input("E-mail: ")).strip()
    if "@" not in email or len(email) > 320 or any(c.isspace() for c in email):
        print(f"not an e-mail address: {email!r}", file=sys.stderr)
        return 2
    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    problems = policy_violations(password, email)
    if problems:
        print(f"password rejected: {'; '.join(problems)}. Policy: {POLICY}", file=sys.stderr)
        return 2
    url = _url()
    _migrate(url)  # a fresh database (first `docker run … create-admin`) gets the schema
    try:
        result = asyncio.run(ensure_admin(url, email, password, args.name))
    except BootstrapError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if result.created:
        print(f"created administrator {email} ({result.user_id})")
    else:
        note = "given the admin role" if result.role_added else "already an administrator"
        print(f"user {email} already exists ({result.user_id}): {note}; password unchanged")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from crm_api.db.backup import backup

    outcome = backup(_url(), Path(args.file))
    size = outcome.file.stat().st_size
    print(
        f"backed up database {outcome.database} to {outcome.file} ({size:,} bytes, "
        f"{outcome.tool.path.name} {outcome.tool.major}, server {outcome.server_major})"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from crm_api.db.backup import restore

    outcome = restore(_url(), Path(args.file), force=args.force)
    print(
        f"restored {outcome.file} into database {outcome.database} "
        f"({outcome.tool.path.name} {outcome.tool.major}, server {outcome.server_major}); "
        "run `crm-api migrate` if the backup is from an older version"
    )
    return 0


def render_openapi() -> str:
    from crm_api.main import create_app

    app = create_app()
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def cmd_openapi(args: argparse.Namespace) -> int:
    document = render_openapi()
    path = Path(args.output)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != document:
            print(f"{path} is out of date: run `crm-api openapi`", file=sys.stderr)
            return 1
        print(f"{path} matches the app")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from crm_api.db.migrate import upgrade
    from crm_api.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    host, port = args.host or settings.host, args.port or settings.port
    _require_free_port(host, port)  # before the database work, not after it
    url = _url()  # starts the embedded cluster when no URL is configured
    upgrade(url)
    embedded = settings.database_url is None
    if embedded or settings.demo_data:
        from crm_api.seed import seed_demo

        asyncio.run(
            seed_demo(url, customers=args.demo_customers, only_if_empty=True, progress=_progress)
        )
    print(f"crm-api on http://{host}:{port}  (interactive docs: http://{host}:{port}/docs)")
    if embedded:
        print(f"embedded PostgreSQL in {settings.data_dir.resolve() / 'pg'}")
    import os

    os.environ["CRM_DATABASE_URL"] = url  # workers join the same cluster
    from crm_api.protocol import BoundedHttpToolsProtocol

    uvicorn.run(
        "crm_api.main:create_app",
        factory=True,
        # httptools with a bounded request head; answers what it refuses as problems
        http=BoundedHttpToolsProtocol,
        host=host,
        port=port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        # X-Forwarded-For/-Proto only from the proxies the login throttle trusts too
        # (uvicorn's default trusts 127.0.0.1, whoever connects through it).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=[str(n) for n in settings.trusted_proxies] or None,
        server_header=False,  # no "Server: uvicorn" advertising the stack
    )
    return 0


class PortInUse(Exception):
    """The address ``serve`` is to listen on is taken (e.g. another server on 8000)."""


def _require_free_port(host: str, port: int) -> None:
    """Raise ``PortInUse`` when ``host:port`` cannot be bound, so a first run on a machine
    where 8000 is taken says what to do in one line instead of starting the database,
    announcing a URL that is not ours and ending in uvicorn's log line. (uvicorn binds with
    ``SO_REUSEADDR`` too, so a port merely in TIME_WAIT is not reported.)"""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # an unresolvable host: let uvicorn report it
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return
            raise PortInUse(
                f"cannot listen on {host}:{port}: address already in use; choose another "
                "port with --port or CRM_PORT (e.g. python3 dev.py serve --port 8001)"
            ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crm-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate, then run the API server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--demo-customers", type=int, default=200)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database to the latest schema")
    migrate.set_defaults(func=cmd_migrate)

    seed = sub.add_parser("seed-demo", help="load the demo org tree, users and customers")
    seed.add_argument(
        "--customers",
        type=int,
        metavar="N",
        help="add N more demo customers (default: 200 on a database without demo data, "
        "none when it is already there: re-running is a no-op)",
    )
    seed.set_defaults(func=cmd_seed)

    admin = sub.add_parser(
        "create-admin", help="create an administrator (idempotent; prompts for what is missing)"
    )
    admin.add_argument("--email")
    admin.add_argument("--password", help="omit to be prompted (keeps it out of shell history)")
    admin.add_argument("--name", help="display name (default: the e-mail's local part)")
    admin.set_defaults(func=cmd_create_admin)

    dump = sub.add_parser("backup", help="dump the database into FILE (pg_dump custom format)")
    dump.add_argument("file", metavar="FILE")
    dump.set_defaults(func=cmd_backup)

    load = sub.add_parser("restore", help="restore FILE (from `backup`) into an empty database")
    load.add_argument("file", metavar="FILE")
    load.add_argument(
        "--force",
        action="store_true",
        help="replace what the database holds (default: refuse unless it is empty)",
    )
    load.set_defaults(func=cmd_restore)

    openapi = sub.add_parser("openapi", help="write (or --check) openapi/openapi.json")
    openapi.add_argument("--check", action="store_true")
    openapi.add_argument("--output", default=str(OPENAPI_PATH))
    openapi.set_defaults(func=cmd_openapi)
    return parser


def _settings_problem(exc: Exception) -> str:
    """One line from a settings ``ValidationError`` (pydantic prints a screenful)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for err in errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"CRM_{field.upper()}: {message}" if field else message)
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Failures an operator can act on (settings refused, database
    unreachable, embedded PostgreSQL not installed, a refused restore) end with one line on
    stderr and a non-zero exit code (2: refused or misconfigured, 1: failed), not a
    traceback."""
    from pydantic import ValidationError

    from crm_api.db.backup import BackupError
    from crm_api.db.check import DatabaseUnavailable
    from crm_api.db.embedded import EmbeddedUnavailable

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(f"crm-api: invalid settings: {_settings_problem(exc)}", file=sys.stderr)
        return 2
    except (DatabaseUnavailable, EmbeddedUnavailable) as exc:
        print(f"crm-api: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, EmbeddedUnavailable) else 1
    except PortInUse as exc:
        print(f"crm-api: {exc}", file=sys.stderr)
        return 1
    except BackupError as exc:
        print(f"crm-api {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
