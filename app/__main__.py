"""The command line: `python -m app serve | migrate | db … ` (domains add more, see COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable

from app.config import ConfigError, Settings, load_settings

# Modules with `register(subparsers)`; each adds its commands (seed-demo, create-admin, backfill …).
COMMAND_MODULES: list[str] = [
    "app.auth.cli",
    "app.market.cli",
    "app.portfolio.cli",
]


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable


async def preflight(settings: Settings) -> None:
    """Fail fast with one line when the database cannot serve us."""
    from app.db import DatabaseError, check_timescaledb, create_pool

    try:
        pool = await create_pool(settings, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                await check_timescaledb(conn)
        finally:
            await pool.close()
    except DatabaseError as exc:
        fail(str(exc))


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = settings_or_exit()
    asyncio.run(preflight(settings))
    from app.logs import configure_logging

    configure_logging(settings.log_level)
    from app.system.shutdown import GracefulServer

    config = uvicorn.Config(
        "app.asgi:create_app", factory=True,
        host=args.host or settings.host, port=args.port or settings.port,
        loop="uvloop", http="httptools", ws="websockets-sansio", lifespan="on",
        log_config=None, access_log=False, proxy_headers=False, server_header=False,
        timeout_graceful_shutdown=settings.shutdown_timeout,
    )
    # SIGTERM: stop accepting, readiness 503, WebSockets closed with 1001, in-flight requests finish
    # within SHUTDOWN_TIMEOUT, then the lifespan shutdown (ingestion flush) — see app/system/shutdown.py.
    if settings.web_workers > 1:
        from app.system.metrics import prepare_multiprocess_metrics
        from app.system.shutdown import serve_workers

        settings.signing_key()  # a generated key is written once, here, not raced by the workers
        prepare_multiprocess_metrics(settings)
        serve_workers(config, settings.web_workers)
    else:
        GracefulServer(config).run()


def cmd_migrate(args: argparse.Namespace) -> None:
    from app.db import DatabaseError, check_timescaledb, create_pool, migrate

    settings = settings_or_exit()

    async def run() -> list[str]:
        pool = await create_pool(settings, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                await check_timescaledb(conn)
                return await migrate(conn)
        finally:
            await pool.close()

    try:
        applied = asyncio.run(run())
    except DatabaseError as exc:
        fail(str(exc))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


def cmd_db(args: argparse.Namespace) -> None:
    """Manage the embedded cluster under DATA_DIR (used when DATABASE_URL is unset)."""
    from pathlib import Path

    from app.embedded_pg import Cluster, EmbeddedPgError

    settings = settings_or_exit()
    cluster = Cluster(Path(settings.data_dir) / "pg", settings.embedded_pg_port)
    try:
        if args.action == "start":
            cluster.start()
            cluster.create_database("wealth_terminal")
            print(f"embedded PostgreSQL running: {settings.effective_database_url}")
        elif args.action == "stop":
            cluster.stop()
            print("embedded PostgreSQL stopped")
        elif args.action == "status":
            print("running" if cluster.initialized() and cluster.running() else "stopped")
        elif args.action == "url":
            print(settings.effective_database_url)
    except EmbeddedPgError as exc:
        fail(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Wealth Terminal backend")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(func=cmd_migrate)
    db = sub.add_parser("db", help="the embedded PostgreSQL cluster (when DATABASE_URL is unset)")
    db.add_argument("action", choices=["start", "stop", "status", "url"])
    db.set_defaults(func=cmd_db)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    func(args)


if __name__ == "__main__":
    main()
