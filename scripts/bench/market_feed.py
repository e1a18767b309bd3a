"""Feed latency benchmark: p50/p99 from an event's arrival (the simulator's trade timestamp) to a
subscribed WebSocket client receiving it, with 100 clients and 10,000 events/s (a third trades, two
thirds quotes, as the simulator makes them; latency is measured on trades, which are never conflated).

    .venv/bin/python scripts/bench/market_feed.py [--clients 100] [--rate 10000] [--seconds 10]

Starts its own PostgreSQL+TimescaleDB cluster, Redis and one app process (uvicorn, the real
/market-feed through Redis pub/sub). Each client subscribes to 2 symbols (trades and quotes).
Budget: p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import httpx  # noqa: E402
import msgspec  # noqa: E402
import websockets  # noqa: E402

from tests.support.auth import make_admin  # noqa: E402
from tests.support.services import AppProcess, RedisServer, start_cluster  # noqa: E402

SYMBOLS = ["AAPL", "AMD", "AMZN", "BABA", "BAC", "BBY", "GE", "GM", "GOOG", "JPM", "MA", "META", "PFE", "RRC",
           "SBUX", "T", "UAA", "WMT", "XOM", "SPY"]


class Ev(msgspec.Struct):
    type: str
    ts: int | None = None


decode = msgspec.json.Decoder(list[Ev]).decode


async def client(url: str, token: str, symbols: list[str], lat: list[float], stop: asyncio.Event,
                 measure: asyncio.Event, counts: list[int]) -> None:
    async with websockets.connect(url, max_size=2**24) as ws:
        await ws.send(msgspec.json.encode({"action": "auth", "token": token}).decode())
        await ws.send(msgspec.json.encode({"action": "subscribe", "symbols": symbols,
                                           "channels": ["trades", "quotes"]}).decode())
        while not stop.is_set():
            try:
                frame = await asyncio.wait_for(ws.recv(), 1)
            except TimeoutError:
                continue
            now = time.time() * 1000
            if not measure.is_set():
                continue
            for ev in decode(frame):
                if ev.type == "trade":
                    lat.append(now - ev.ts)  # type: ignore[operator]
                    counts[0] += 1


def client_group(url: str, token: str, ids: list[int], seconds: float) -> tuple[list[float], float]:
    """One client process: its share of the clients; returns latencies (ms) and the measured time."""

    async def run() -> tuple[list[float], float]:
        lat: list[float] = []
        counts = [0]
        stop, measure = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(client(url, token, [SYMBOLS[i % 20], SYMBOLS[(i * 7 + 3) % 20]], lat, stop,
                                            measure, counts)) for i in ids]
        await asyncio.sleep(5)  # connect, subscribe, warm up
        measure.set()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        stop.set()
        elapsed = time.monotonic() - started
        await asyncio.gather(*tasks, return_exceptions=True)
        return lat, elapsed

    return asyncio.run(run())


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10_000, help="events/s: trades (1/3) + quotes (2/3)")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--flush", type=float, default=None, help="FEED_FLUSH_INTERVAL (default: the app's default)")
    args = ap.parse_args()
    cluster = start_cluster()
    redis = RedisServer()
    redis.start()
    app = None
    try:
        cluster.create_database("bench")
        env = {"ENV": "test", "DATABASE_URL": cluster.url("bench"), "REDIS_URL": redis.url, "JWT_SECRET": "b" * 40,
               "BCRYPT_ROUNDS": "4", "MARKET_FEED": "simulator", "SIMULATOR_RATE": str(args.rate / 3),
               "LOG_LEVEL": "WARNING", "WS_MAX_CONNECTIONS_PER_USER": str(args.clients + 1),
               "RATE_LIMIT_PER_MINUTE": "100000", "DATA_DIR": "/tmp/wt-bench-feed"}
        if args.flush:
            env["FEED_FLUSH_INTERVAL"] = str(args.flush)
        app = AppProcess(env)
        app.start(90)
        async with httpx.AsyncClient(base_url=app.base_url) as c:
            r = await c.post("/api/auth/register", json={"email": "bench@example.com", "password": "pw-" + "b" * 20})
            token = r.json()["access_token"]
            await make_admin(cluster.url("bench"), r.json()["user"]["id"])
        url = f"ws://127.0.0.1:{app.port}/market-feed"
        per = [list(range(i, args.clients, args.procs)) for i in range(args.procs)]
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(args.procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [loop.run_in_executor(pool, client_group, url, token, ids, args.seconds) for ids in per]
            await asyncio.sleep(5 + args.seconds / 2)
            async with httpx.AsyncClient(base_url=app.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
                status = (await c.get("/api/markets/status")).json()
            results = await asyncio.gather(*futures)
        lat = [x for group in results for x in group[0]]
        elapsed = results[0][1]
        lat.sort()
        n = len(lat)
        pct = lambda q: lat[min(n - 1, int(n * q))]  # noqa: E731
        print(f"{args.clients} clients ({args.procs} client processes) x 2 symbols, simulator {args.rate:,.0f} events/s "
              f"({args.rate / 3:,.0f} trades + {args.rate * 2 / 3:,.0f} quotes), {elapsed:.1f} s")
        print(f"trade events received by clients: {n:,} ({n / elapsed:,.0f}/s)")
        print(f"latency event → client: p50 {pct(0.5):.1f} ms  p90 {pct(0.9):.1f} ms  p99 {pct(0.99):.1f} ms  "
              f"max {lat[-1]:.1f} ms   budget: p99 <= 50 ms")
        print("server: " + ", ".join(f"{k}={status.get(k)}" for k in ("events_per_second", "loop_lag_ms",
                                                                       "last_batch_lag_ms", "lag_ms", "dropped",
                                                                       "ws_clients", "slow_disconnects")))
        print(f"load average {os.getloadavg()[0]:.1f} (2 shared CPUs; client and server on the same machine)")
    finally:
        if app:
            app.stop()
        redis.destroy()
        cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
