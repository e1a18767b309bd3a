"""`python -m app market-history` (load the bundled history) and `python -m app market-backfill`
(Polygon REST gap fill of minute and daily bars, once, without the WebSocket)."""

from __future__ import annotations

import argparse
import asyncio


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("market-history", help="load the bundled daily history when missing")
    p.set_defaults(func=cmd_history)
    p = subparsers.add_parser("market-backfill",
                              help="fill minute/daily bars from Polygon REST since the last stored ones")
    p.add_argument("--days", type=int, default=None, help="minute-bar horizon (default POLYGON_BACKFILL_DAYS)")
    p.set_defaults(func=cmd_backfill)


async def _with_db(settings, work):  # type: ignore[no-untyped-def]
    from app.db import Database, check_timescaledb, create_pool, migrate

    pool = await create_pool(settings, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await check_timescaledb(conn)
            if settings.migrate_on_start:
                await migrate(conn)
        return await work(Database(pool))
    finally:
        await pool.close()


def cmd_history(args: argparse.Namespace) -> None:
    from app.__main__ import fail, settings_or_exit
    from app.db import DatabaseError
    from app.market.history import ensure_bundled_history

    settings = settings_or_exit()
    try:
        n = asyncio.run(_with_db(settings, ensure_bundled_history))
    except DatabaseError as exc:
        fail(str(exc))
    print(f"bundled history: {n} rows written" if n else "bundled history: already loaded")


def cmd_backfill(args: argparse.Namespace) -> None:
    import msgspec

    from app.__main__ import fail, settings_or_exit
    from app.db import DatabaseError
    from app.market.feeds.events import FrameDecoder
    from app.market.feeds.polygon import PolygonFeed
    from app.market.ingest import Pipeline

    settings = settings_or_exit()
    if not settings.polygon_api_key:
        fail("POLYGON_API_KEY is not set")
    if args.days is not None:
        if not 0 < args.days <= 365:
            fail("--days must be between 1 and 365")
        settings = msgspec.structs.replace(settings, polygon_backfill_days=args.days)

    async def work(db):  # type: ignore[no-untyped-def]
        pipeline = Pipeline(db, queue_size=10_000_000, batch_size=settings.ingest_batch_size,
                            flush_interval=settings.ingest_flush_interval, source="polygon")
        pipeline.start()
        feed = PolygonFeed(settings, pipeline, FrameDecoder(), db)
        try:
            queued = await feed.backfill()
            await pipeline.flushed(timeout=600)
        finally:
            await pipeline.stop()
            await feed.rest.close()
        return queued, feed.backfill_error

    try:
        queued, error = asyncio.run(_with_db(settings, work))
    except DatabaseError as exc:
        fail(str(exc))
    if error:
        fail(f"backfill failed: {error}")
    print(f"backfill: {queued} bars written")
