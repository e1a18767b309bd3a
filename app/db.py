"""The asyncpg pool, transactions, SQL files and the migration runner."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from app.config import PROJECT_ROOT, Settings

log = logging.getLogger("app.db")

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
SQL_DIR = PROJECT_ROOT / "sql"
# Any constant will do; it only has to be the same in every replica.
MIGRATION_LOCK_KEY = 0x5745_414C_5448  # "WEALTH"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class DatabaseError(RuntimeError):
    """Start-up cannot continue; the message is one line naming the fix."""


class MigrationError(DatabaseError):
    pass


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda v: msgspec.json.encode(v).decode(),
                              decoder=msgspec.json.decode, format="text")
    await conn.set_type_codec("json", schema="pg_catalog", encoder=lambda v: msgspec.json.encode(v).decode(),
                              decoder=msgspec.json.decode, format="text")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool `reset`: asyncpg has already rolled back any open transaction and dropped listeners; we skip
    its reset *query* (advisory unlock all, CLOSE ALL, UNLISTEN, RESET ALL), a second round trip to the
    server on every release that cost ~6 % of a request's time under load. The house rule that makes
    this safe (checked by tests/unit/test_db_session_rule.py): nothing takes session-level state on a
    pool connection — no session `SET`, `LISTEN` or session advisory lock left behind; code that needs
    one (the market leader) uses a dedicated connection, and `migrate` releases its lock itself."""


async def create_pool(settings: Settings, *, min_size: int | None = None, max_size: int | None = None,
                      timeout: float = 10.0) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(
            settings.effective_database_url,
            min_size=settings.db_pool_min if min_size is None else min_size,
            max_size=settings.db_pool_max if max_size is None else max_size,
            command_timeout=settings.db_command_timeout,
            init=_init_connection,
            reset=_keep_session,
            timeout=timeout,
        )
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        where = "the embedded cluster (run `python -m app db start`)" if not settings.database_url else "DATABASE_URL"
        raise DatabaseError(f"cannot connect to PostgreSQL at {where}: {exc}") from None


async def check_timescaledb(conn: asyncpg.Connection) -> str:
    """The TimescaleDB version available to this database, or DatabaseError naming the fix."""
    row = await conn.fetchrow(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'")
    if row is None:
        raise DatabaseError("the database lacks the TimescaleDB extension: install it (scripts/install-timescaledb.sh) "
                            "and set shared_preload_libraries = 'timescaledb'")
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    if "timescaledb" not in preload:
        raise DatabaseError("TimescaleDB is installed but not preloaded: add shared_preload_libraries = "
                            "'timescaledb' to postgresql.conf and restart PostgreSQL")
    return row["installed_version"] or row["default_version"]


# --- SQL files ------------------------------------------------------------------------------------

@cache
def sql_file(name: str) -> dict[str, str]:
    """Named queries from sql/<name>.sql. Each query starts with a line `-- name: query_name`."""
    text = (SQL_DIR / f"{name}.sql").read_text()
    queries: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^--\s*name:\s*([a-z0-9_]+)\s*$", line)
        if m:
            if current:
                queries[current] = "\n".join(lines).strip()
            current, lines = m.group(1), []
        elif current:
            lines.append(line)
    if current:
        queries[current] = "\n".join(lines).strip()
    return queries


# --- migrations -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name {path.name!r} must look like 0001_description.sql")
        found.append(Migration(int(m.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations, each in its own transaction, under an advisory lock.

    Two replicas starting together serialize on the lock; the second finds nothing to do. An
    already-applied migration whose file changed is refused.
    """
    migrations = discover_migrations(directory)
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_LEDGER_DDL)
        applied = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")}
        for mig in migrations:
            done = applied.get(mig.version)
            if done is not None:
                if done["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.name} was edited after it was applied (checksum differs); "
                        "add a new migration instead of changing an applied one")
                continue
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   mig.version, mig.name, mig.checksum)
            log.info("migration applied", extra={"migration": mig.name,
                                                 "ms": round((time.perf_counter() - started) * 1000, 1)})
            applied_now.append(mig.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def pending_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.name for m in discover_migrations(directory) if m.version not in applied]


# --- the Database handle -------------------------------------------------------------------------

class Database:
    """The pool plus a few conveniences. Handlers receive it by dependency injection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self.pool.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self.pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self.pool.execute(query, *args)

    async def ping(self, timeout: float = 2.0) -> float:
        """Round-trip time in milliseconds; raises when the database does not answer in time."""
        started = time.perf_counter()
        async with asyncio.timeout(timeout):
            async with self.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        return (time.perf_counter() - started) * 1000

    def pool_stats(self) -> dict[str, int]:
        return {"size": self.pool.get_size(), "idle": self.pool.get_idle_size(),
                "min": self.pool.get_min_size(), "max": self.pool.get_max_size()}

    async def close(self, timeout: float = 5.0) -> None:
        """Close gracefully; connections still held after `timeout` are terminated (a stuck query
        must not hold up a shutdown)."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("database pool did not close in time; terminating its connections")
            self.pool.terminate()
