"""Database's statement lane (app/db.py StatementLane) on the real PostgreSQL: dedicated connections for
single statements, grown in the background up to their number, kept after a server-side error, thrown
away after a cancelled or broken statement, closed with the database."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from app.db import Database, StatementLane

PID = "SELECT pg_backend_pid()"


@pytest.fixture
async def db(database_url: str):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database_url)

    database = Database(pool, StatementLane(connect, size=2))
    yield database
    await database.close()


async def _settle(db: Database, lane_size: int) -> None:
    """Concurrent statements until the lane has grown to `lane_size` (it grows only when all its
    connections are busy)."""
    for _ in range(100):
        if db.pool_stats()["lane"] == lane_size:
            return
        await asyncio.gather(*[db.fetchval("SELECT pg_sleep(0.01)") for _ in range(4)])
        await asyncio.sleep(0.01)
    raise AssertionError(f"lane never reached {lane_size}: {db.pool_stats()}")


async def _lane_pids(db: Database) -> set[int]:
    """Backends that serve sequential statements: with an idle lane connection there, always the lane's."""
    return {await db.fetchval(PID) for _ in range(10)}


async def test_statements_move_to_the_lane_and_it_stays_within_its_size(db: Database) -> None:
    assert db.pool_stats()["lane"] == 0
    await _settle(db, 2)
    await asyncio.gather(*[db.fetchval("SELECT pg_sleep(0.005)") for _ in range(40)])
    assert db.pool_stats()["lane"] == 2  # never more than its size; the rest went through the pool
    lane = await _lane_pids(db)
    assert len(lane) == 1  # one idle connection is enough for one statement at a time
    async with db.pool.acquire() as conn:
        assert await conn.fetchval(PID) not in lane
    # every kind of single statement works through it
    assert await db.fetchrow("SELECT 1 AS a, 'x' AS b") == (1, "x")
    assert [r[0] for r in await db.fetch("SELECT generate_series(1, 3)")] == [1, 2, 3]
    assert await db.execute("SELECT 1") == "SELECT 1"
    assert await _lane_pids(db) == lane


async def test_a_server_error_keeps_the_connection(db: Database) -> None:
    await _settle(db, 2)
    before = db.pool_stats()
    with pytest.raises(asyncpg.DivisionByZeroError):
        await db.fetchval("SELECT 1 / 0")
    assert db.pool_stats() == before  # still open, back among the idle ones
    assert await db.fetchval("SELECT 41 + 1") == 42


async def test_a_cancelled_statement_throws_its_connection_away(db: Database, database_url: str) -> None:
    await _settle(db, 2)
    task = asyncio.create_task(db.fetchval("SELECT pg_backend_pid() FROM pg_sleep(30)"))
    await asyncio.sleep(0.2)
    assert db.pool_stats()["lane_idle"] == 1  # the other one is busy sleeping
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.pool_stats()["lane"] == 1  # terminated, not reused: its state is unknown
    assert await db.fetchval("SELECT 7") == 7
    await _settle(db, 2)  # and replaced


async def test_a_connection_the_server_dropped_is_not_used(db: Database) -> None:
    await _settle(db, 2)
    dropped = await _lane_pids(db)
    for pid in dropped:
        await db.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    await asyncio.sleep(0.2)  # the client sees the socket close
    assert await db.fetchval("SELECT 5") == 5
    await _settle(db, 2)
    assert not (await _lane_pids(db)) & dropped


async def test_close_closes_the_lane(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    opened: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(database_url)
        opened.append(conn)
        return conn

    db = Database(pool, StatementLane(connect, size=1))
    await _settle(db, 1)
    await db.close()
    assert opened and all(c.is_closed() for c in opened)
