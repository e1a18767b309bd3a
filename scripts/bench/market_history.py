"""History benchmark: one year of minute bars for one symbol, returned as daily bars.

    .venv/bin/python scripts/bench/market_history.py [--hours regular|24x7]

Starts its own PostgreSQL+TimescaleDB cluster, writes a year of minute bars for one symbol through
the real writer (COPY into staging, upsert, daily roll-up), then times
  1. GET /api/markets/history/{symbol}?interval=1d over that year (the whole app in-process: auth,
     routing, query on the daily bars the writer keeps, JSON), and
  2. the same daily bars computed on the fly with time_bucket('1 day') over the minute bars (what a
     continuous aggregate would precompute; our TimescaleDB edition has none).
Budget: <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from litestar.testing import AsyncTestClient  # noqa: E402

from app.asgi import create_app  # noqa: E402
from app.db import Database, create_pool, migrate, sql_file  # noqa: E402
from app.market.ingest import Pipeline  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.support.services import start_cluster  # noqa: E402

UTC = timezone.utc
SYMBOL = "AAPL"


def minute_rows(hours: str) -> list[tuple]:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = end - timedelta(days=365)
    rows, price = [], 100.0
    import random

    rng = random.Random(1)
    while day < end:
        if hours == "24x7":
            minutes = [day + timedelta(minutes=m) for m in range(1440)]
        elif day.weekday() < 5:
            open_ = day + timedelta(hours=14, minutes=30)  # 09:30 New York (winter)
            minutes = [open_ + timedelta(minutes=m) for m in range(390)]
        else:
            minutes = []
        for ts in minutes:
            o = price
            price = max(1.0, price * (1 + rng.gauss(0, 0.0008)))
            h, lo = max(o, price) * 1.0003, min(o, price) * 0.9997
            rows.append((SYMBOL, ts, Decimal(f"{o:.2f}"), Decimal(f"{h:.2f}"), Decimal(f"{lo:.2f}"),
                         Decimal(f"{price:.2f}"), rng.randint(100, 20_000), None, rng.randint(1, 200), "bench"))
        day += timedelta(days=1)
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", choices=["regular", "24x7"], default="regular")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    cluster = start_cluster()
    try:
        cluster.create_database("bench")
        env = {"ENV": "test", "DATABASE_URL": cluster.url("bench"), "JWT_SECRET": "h" * 40, "BCRYPT_ROUNDS": "4",
               "MARKET_FEED": "off", "LOG_LEVEL": "WARNING", "DATA_DIR": "/tmp/wt-bench-history",
               "RATE_LIMIT_PER_MINUTE": "100000"}
        settings = make_settings(env)
        pool = await create_pool(settings, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            await migrate(conn)
        db = Database(pool)
        rows = minute_rows(args.hours)
        p = Pipeline(db, queue_size=10, batch_size=10, flush_interval=1)
        t0 = time.perf_counter()
        for i in range(0, len(rows), 20_000):
            await p.write_bars(rows[i:i + 20_000], [])
        print(f"{len(rows):,} minute bars ({args.hours} hours, one year, {SYMBOL}) written through the writer in "
              f"{time.perf_counter() - t0:.1f} s")
        await db.execute("ANALYZE minute_bars; ANALYZE daily_bars")
        start, end = rows[0][1].date().isoformat(), rows[-1][1].date().isoformat()
        app = create_app(settings)
        async with AsyncTestClient(app=app) as client:
            r = await client.post("/api/auth/register", json={"email": "h@example.com", "password": "pw-" + "h" * 20})
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = await client.get(f"/api/markets/history/{SYMBOL}", params={"interval": "1d", "start": start,
                                                                              "end": end}, headers=headers)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            n = r.json()["count"]
        q = sql_file("market")["history_minute_bucketed"]
        lo = datetime.fromisoformat(start).replace(tzinfo=UTC)
        hi = datetime.fromisoformat(end).replace(tzinfo=UTC) + timedelta(days=1)
        raw = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            agg = await db.fetch(q, SYMBOL, lo, hi, 10_000, timedelta(days=1))
            raw.append((time.perf_counter() - t) * 1000)
        stored = await db.fetch("SELECT ts, close FROM daily_bars WHERE symbol = $1 AND ts >= $2 AND ts < $3 "
                                "ORDER BY ts", SYMBOL, lo, hi)
        same = [(r["ts"], r["close"]) for r in sorted(agg, key=lambda r: r["ts"])] == [(r["ts"], r["close"]) for r in stored]
        med = statistics.median
        print(f"GET /api/markets/history/{SYMBOL}?interval=1d (one year, {n} daily bars): median {med(times):.1f} ms, "
              f"p95 {sorted(times)[int(len(times) * 0.95)]:.1f} ms, first {times[0]:.1f} ms   budget <= 100 ms")
        print(f"time_bucket('1 day') over the {len(rows):,} minute bars: median {med(raw):.1f} ms, "
              f"p95 {sorted(raw)[int(len(raw) * 0.95)]:.1f} ms (same bars as the stored roll-up: {same})")
        print(f"load average {os.getloadavg()[0]:.1f}")
        await pool.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
