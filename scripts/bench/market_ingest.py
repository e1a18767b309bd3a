"""Ingestion benchmark: Polygon trade frames decoded (msgspec) and durably written (COPY, committed)
through the real pipeline, next to a raw asyncpg COPY of the same rows into the same hypertable.

    .venv/bin/python scripts/bench/market_ingest.py [--events 300000] [--frame 100]

Starts its own throwaway PostgreSQL+TimescaleDB cluster. Prints events/s for both and the ratio.
Budget: >= 100,000 trade events/s and >= 60 % of raw COPY on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from app.db import Database, create_pool, migrate  # noqa: E402
from app.market.feeds.events import FrameDecoder  # noqa: E402
from app.market.ingest import TRADE_COLUMNS, Pipeline, trade_rows  # noqa: E402
from app.market.quotes import QuoteBook  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.support.services import start_cluster  # noqa: E402

SYMBOLS = ["AAPL", "AMD", "AMZN", "BABA", "BAC", "BBY", "GE", "GM", "GOOG", "JPM", "MA", "META", "PFE", "RRC",
           "SBUX", "T", "UAA", "WMT", "XOM", "SPY"]


def make_frames(n: int, per_frame: int) -> list[bytes]:
    rng = random.Random(7)
    t0 = int(time.time() * 1000) - 3_600_000
    frames, frame = [], []
    for k in range(n):
        sym = SYMBOLS[k % len(SYMBOLS)]
        frame.append({"ev": "T", "sym": sym, "i": str(100000 + k), "x": rng.choice((4, 10, 11, 12)),
                      "p": round(100 + rng.random() * 50, 2), "s": rng.choice((1, 10, 100, 200, 500)),
                      "c": [12, 37], "t": t0 + k // 50, "q": k, "z": 3})
        if len(frame) == per_frame:
            frames.append(json.dumps(frame).encode())
            frame = []
    if frame:
        frames.append(json.dumps(frame).encode())
    return frames


async def run_pipeline(db: Database, frames: list[bytes], n: int, batch: int, writers: int) -> float:
    decoder = FrameDecoder()
    p = Pipeline(db, queue_size=n + 1, batch_size=batch, flush_interval=0.005, book=QuoteBook(), writers=writers)
    p.book.forward_trades = True
    p.start()
    started = time.perf_counter()
    for k, frame in enumerate(frames):
        p.submit(decoder.decode(frame))
        if k % 20 == 0:
            await asyncio.sleep(0)  # a socket reader yields between frames
        if k % 200 == 0:
            p.book.take_feed()  # what the publisher does every flush
            p.book.take_dirty()
    await p.flushed(timeout=600)
    elapsed = time.perf_counter() - started
    assert p.written_trades == n and p.dropped == 0 and decoder.rejected == 0, p.status()
    await p.stop()
    return n / elapsed


async def run_raw(db: Database, frames: list[bytes], n: int, batch: int, conns: int) -> float:
    decoder = FrameDecoder()
    rows = trade_rows([ev for f in frames for ev in decoder.decode(f)])  # prepared outside the timing
    chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    queue: asyncio.Queue = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)

    async def worker() -> None:
        async with db.pool.acquire() as conn:
            while not queue.empty():
                await conn.copy_records_to_table("trades", records=queue.get_nowait(), columns=TRADE_COLUMNS)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return n / (time.perf_counter() - started)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--frame", type=int, default=100)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cluster = start_cluster()
    try:
        cluster.create_database("bench")
        settings = make_settings({"ENV": "test", "DATABASE_URL": cluster.url("bench")})
        pool = await create_pool(settings, min_size=2, max_size=4)
        async with pool.acquire() as conn:
            await migrate(conn)
        db = Database(pool)
        frames = make_frames(args.events, args.frame)
        print(f"{args.events:,} trade events in {len(frames):,} frames of {args.frame}, COPY batches of {args.batch:,}, "
              f"{os.cpu_count()} CPUs")
        results: dict[str, float] = {}
        allruns: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for name, coro in (("pipeline", lambda: run_pipeline(db, frames, args.events, args.batch, 2)),
                               ("raw COPY, 1 connection", lambda: run_raw(db, frames, args.events, args.batch, 1)),
                               ("raw COPY, 2 connections", lambda: run_raw(db, frames, args.events, args.batch, 2))):
                await db.execute("TRUNCATE trades")
                rate = await coro()
                results[name] = max(results.get(name, 0.0), rate)
                allruns.setdefault(name, []).append(rate)
                print(f"  round {r + 1}: {name:<26} {rate:>10,.0f} events/s")
        raw = max(results["raw COPY, 1 connection"], results["raw COPY, 2 connections"])
        print(f"pipeline (decode + quote book + COPY, durably written): {results['pipeline']:,.0f} events/s")
        print(f"raw asyncpg COPY of the same rows (best):             {raw:,.0f} events/s")
        print(f"ratio: {results['pipeline'] / raw:.0%}   budget: >= 100,000 events/s and >= 60 %")
        med = {k: sorted(v)[len(v) // 2] for k, v in allruns.items()}
        raw_med = max(med["raw COPY, 1 connection"], med["raw COPY, 2 connections"])
        print(f"medians: pipeline {med['pipeline']:,.0f}, raw {raw_med:,.0f}, ratio {med['pipeline'] / raw_med:.0%}; "
              f"load average {os.getloadavg()[0]:.1f} (the machine is shared)")
        await pool.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
