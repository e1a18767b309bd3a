"""The asyncpg pool, transactions, SQL files and the migration runner."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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

class StatementLane:
    """A few dedicated connections, outside the pool, for `Database`'s single statements (fetch,
    fetchrow, fetchval, execute: autocommit, nothing left on the connection).

    Why: asyncpg's pool costs ~45 µs of CPU per acquire/release (a queue, a proxy object, a shielded
    release task, timers) against ~17 µs for the statement itself on a held connection — a tenth of
    an authenticated API request. Here taking an idle connection is a list pop. When none is idle the
    statement goes through the pool as before, and the lane opens another connection in the
    background (up to `size`; after a failed connect, not again for RETRY_AFTER s). A connection whose
    statement ended in anything but an answer from the server (cancelled, timed out, broken) is
    terminated, never reused; the pool's connections and transactions are untouched by all this."""

    RETRY_AFTER = 5.0

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], size: int) -> None:
        self._connect = connect
        self.size = size
        self._idle: list[asyncpg.Connection] = []
        self._open = 0
        self._growing: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._closed = False

    def take(self) -> asyncpg.Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
            self._open -= 1
        if (self._growing is None and self._open < self.size and not self._closed
                and time.monotonic() >= self._retry_at):
            self._growing = asyncio.get_running_loop().create_task(self._grow())
        return None

    async def _grow(self) -> None:
        try:
            conn = await self._connect()
        except Exception as exc:  # the pool path still serves; try again later
            self._retry_at = time.monotonic() + self.RETRY_AFTER
            log.warning("statement lane: cannot open a connection", extra={"error": str(exc)})
        else:
            if self._closed:
                await conn.close()
            else:
                self._open += 1
                self._idle.append(conn)
        finally:
            self._growing = None

    def give_back(self, conn: asyncpg.Connection, reusable: bool) -> None:
        if reusable and not self._closed and not conn.is_closed():
            self._idle.append(conn)
        else:
            self._open -= 1
            conn.terminate()

    async def run(self, conn: asyncpg.Connection, method: str, query: str, args: tuple[Any, ...]) -> Any:
        reusable = False
        try:
            result = await getattr(conn, method)(query, *args)
            reusable = True
            return result
        except asyncpg.PostgresError:
            reusable = True  # the server answered (a constraint, a bad value …): the connection is ready
            raise
        finally:
            self.give_back(conn, reusable)

    def stats(self) -> dict[str, int]:
        return {"lane": self._open, "lane_idle": len(self._idle)}

    async def close(self) -> None:
        self._closed = True
        if self._growing is not None:
            self._growing.cancel()
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (Exception, asyncio.TimeoutError):
                conn.terminate()


def statement_lane(settings: Settings) -> StatementLane | None:
    """The app's lane (DB_LANE_SIZE connections; 0: none), connected like the pool's connections."""
    if settings.db_lane_size <= 0:
        return None

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(settings.effective_database_url, command_timeout=settings.db_command_timeout,
                                     timeout=10.0)
        await _init_connection(conn)
        return conn

    return StatementLane(connect, settings.db_lane_size)


class Database:
    """The pool plus a few conveniences. Handlers receive it by dependency injection. Single
    statements use the statement lane when there is one (see StatementLane)."""

    def __init__(self, pool: asyncpg.Pool, lane: StatementLane | None = None) -> None:
        self.pool = pool
        self.lane = lane

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = self.lane.take() if self.lane is not None else None
        if conn is None:
            return await self.pool.fetch(query, *args)
        return await self.lane.run(conn, "fetch", query, args)  # type: ignore[union-attr]

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        conn = self.lane.take() if self.lane is not None else None
        if conn is None:
            return await self.pool.fetchrow(query, *args)
        return await self.lane.run(conn, "fetchrow", query, args)  # type: ignore[union-attr]

    async def fetchval(self, query: str, *args: Any) -> Any:
        conn = self.lane.take() if self.lane is not None else None
        if conn is None:
            return await self.pool.fetchval(query, *args)
        return await self.lane.run(conn, "fetchval", query, args)  # type: ignore[union-attr]

    async def execute(self, query: str, *args: Any) -> str:
        conn = self.lane.take() if self.lane is not None else None
        if conn is None:
            return await self.pool.execute(query, *args)
        return await self.lane.run(conn, "execute", query, args)  # type: ignore[union-attr]

    async def ping(self, timeout: float = 2.0) -> float:
        """Round-trip time in milliseconds; raises when the database does not answer in time."""
        started = time.perf_counter()
        async with asyncio.timeout(timeout):
            async with self.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        return (time.perf_counter() - started) * 1000

    def pool_stats(self) -> dict[str, int]:
        stats = {"size": self.pool.get_size(), "idle": self.pool.get_idle_size(),
                 "min": self.pool.get_min_size(), "max": self.pool.get_max_size()}
        if self.lane is not None:
            stats.update(self.lane.stats())
        return stats

    async def close(self, timeout: float = 5.0) -> None:
        """Close gracefully; connections still held after `timeout` are terminated (a stuck query
        must not hold up a shutdown)."""
        if self.lane is not None:
            await self.lane.close()
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("database pool did not close in time; terminating its connections")
            self.pool.terminate()
