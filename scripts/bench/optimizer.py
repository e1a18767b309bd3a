"""Optimizer benchmark: our API's overhead over a direct Riskfolio call, and API responsiveness while
optimizations run.

    .venv/bin/python scripts/bench/optimizer.py [--repeats 5] [--workers 2] [--nice 10]

1. Max-Sharpe (mean-variance, sample covariance, historical means, long-only, CLARABEL) for 20, 100
   and 300 assets, 756 daily returns each, sent inline to POST /api/optimizer/optimize of a real
   `python -m app serve` subprocess; next to it, the same Riskfolio call (Portfolio → assets_stats →
   optimization) made directly, in a process of the same niceness and BLAS threads as a worker.
   Overhead = API median / direct median − 1 (budget ≤ 10 %).
2. p50/p99/max latency of GET /health/live, polled back to back while four 300-asset max-Sharpe
   optimizations run at once (budget p99 ≤ 50 ms).

Synthetic returns (a 5-factor model with fat-ish tails), seeded: the bundled history has 20 symbols.
Starts its own throwaway PostgreSQL cluster; needs nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

# one BLAS thread, as in the optimizer's workers: set before numpy is imported, here and in the
# spawned child that makes the direct calls (it re-imports this module first)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from _http import KeepAlive  # noqa: E402  (scripts/bench/_http.py)

T = 756
SIZES = (20, 100, 300)


def synthetic_returns(n: int, t: int = T, seed: int = 42) -> np.ndarray:
    rng = np.random.default_rng(seed + n)
    factors = rng.standard_t(5, size=(t, 5)) * 0.008
    loadings = rng.normal(0.5, 0.4, size=(5, n)) / 2
    idio = rng.standard_t(5, size=(t, n)) * rng.uniform(0.006, 0.02, size=n)
    drift = rng.normal(0.0004, 0.0005, size=n)
    return factors @ loadings + idio + drift


def trading_dates(t: int) -> list[str]:
    out, d = [], date(2021, 1, 4)
    while len(out) < t:
        if d.weekday() < 5:
            out.append(d.isoformat())
        d += timedelta(days=1)
    return out


# --- the direct call, in a child process set up like a worker ------------------------------------------
def _direct_child(conn, nice: int, rf: float) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if nice:
        os.nice(nice)
    import contextlib
    import io
    import warnings

    import pandas as pd
    import riskfolio as rp

    warnings.simplefilter("ignore")
    frames = {}
    while True:
        message = conn.recv()
        if message is None:
            return
        key, matrix = message
        if key not in frames:
            if matrix is None:
                frames[key] = pd.DataFrame(synthetic_returns(key), columns=[f"X{i:03d}" for i in range(key)])
            else:
                frames[key] = pd.DataFrame(matrix, columns=[f"C{i:03d}" for i in range(matrix.shape[1])])
        t0 = time.perf_counter()
        port = rp.Portfolio(returns=frames[key])
        port.solvers = ["CLARABEL"]
        port.assets_stats(method_mu="hist", method_cov="hist")
        with contextlib.redirect_stdout(io.StringIO()):
            w = port.optimization(model="Classic", rm="MV", obj="Sharpe", rf=rf / 252, l=0, hist=True)
        conn.send(((time.perf_counter() - t0) * 1000, w["weights"].to_numpy()))


class Direct:
    def __init__(self, nice: int, rf: float) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_direct_child, args=(child, nice, rf), daemon=True)
        self.proc.start()

    def run(self, key: Any, matrix: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        self.conn.send((key, matrix))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def bundled_matrix(symbols: list[str], end: str, t: int = T) -> np.ndarray:
    """The bundled closes (the CSVs the market domain loads, rounded to 6 places like it does) as
    t daily returns ending at `end`, for the direct call on the same data as the `symbols` path."""
    import csv

    data = ROOT / "app" / "market" / "data"
    table: dict[str, dict[str, float]] = {}
    for name in ("stock_prices.csv", "spy_prices.csv"):
        with (data / name).open() as f:
            for row in csv.DictReader(f):
                day = row.pop("date")
                for sym, cell in row.items():
                    if cell:
                        table.setdefault(day, {})[sym] = round(float(cell), 6)
    days = [d for d in sorted(table) if d <= end and all(s in table[d] for s in symbols)][-(t + 1):]
    closes = np.array([[table[d][s] for s in symbols] for d in days])
    return closes[1:] / closes[:-1] - 1


async def compare_symbols(client: KeepAlive, headers: dict, direct: Direct, repeats: int,
                          rf: float) -> dict:
    """20 bundled symbols through the `symbols` path (history read from the database)."""
    symbols = ["AAPL", "AMD", "AMZN", "BABA", "BAC", "BBY", "GE", "GM", "GOOG", "JPM", "MA", "META", "PFE",
               "RRC", "SBUX", "SPY", "T", "UAA", "WMT", "XOM"]
    body = {"symbols": symbols, "objective": "max_sharpe", "risk_free_rate": rf, "lookback": T}
    rec: dict[str, Any] = {"direct": [], "api": [], "server": [], "worker": []}
    matrix = None
    payload = json.dumps(body).encode()
    hdrs = {**headers, "Content-Type": "application/json"}
    for k in range(repeats * 3 + 1):
        t0 = time.perf_counter()
        status, answer = await client.post("/api/optimizer/optimize", payload, hdrs)
        a_ms = (time.perf_counter() - t0) * 1000
        assert status == 200, answer[:500]
        js = json.loads(answer)
        if matrix is None:
            matrix = bundled_matrix(js["universe"]["symbols"], js["universe"]["end"])
        d_ms, d_w = await asyncio.to_thread(direct.run, "bundled", matrix)
        if k:
            rec["direct"].append(d_ms)
            rec["api"].append(a_ms)
            rec["server"].append(js["total_ms"])
            rec["worker"].append(js["elapsed_ms"])
        else:
            rec["first_api"], rec["first_server"] = a_ms, js["total_ms"]
    a_w = np.array([js["weights"][s] for s in js["universe"]["symbols"]])
    rec["max_dw"] = float(np.abs(a_w - d_w).max())
    rec["body_mb"] = len(json.dumps(body)) / 1e6
    return rec


# --- through the API ---------------------------------------------------------------------------------
async def compare(client: KeepAlive, headers: dict, direct: Direct, repeats: int, rf: float) -> dict:
    """Direct call and API call alternately, so both see the same machine load."""
    out = {}
    dates = trading_dates(T)
    hdrs = {**headers, "Content-Type": "application/json"}
    for n in SIZES:
        R = synthetic_returns(n)
        payload = json.dumps({"returns": {f"X{i:03d}": R[:, i].tolist() for i in range(n)}, "dates": dates,
                              "objective": "max_sharpe", "risk_free_rate": rf}).encode()
        rec = {"direct": [], "api": [], "server": [], "worker": []}
        rounds = repeats * 3 if n <= 20 else repeats  # short runs are noisier: more of them
        for k in range(rounds + 1):  # the first round warms both up and is not counted
            d_ms, d_w = await asyncio.to_thread(direct.run, n)
            t0 = time.perf_counter()
            status, answer = await client.post("/api/optimizer/optimize", payload, hdrs)
            a_ms = (time.perf_counter() - t0) * 1000
            assert status == 200, answer[:500]
            js = json.loads(answer)
            if k:
                rec["direct"].append(d_ms)
                rec["api"].append(a_ms)
                rec["server"].append(js["total_ms"])
                rec["worker"].append(js["elapsed_ms"])
        a_w = np.array([js["weights"][f"X{i:03d}"] for i in range(n)])
        rec["max_dw"] = float(np.abs(a_w - d_w).max())
        rec["body_mb"] = len(payload) / 1e6
        out[n] = rec
    return out


async def liveness_under_load(client: httpx.AsyncClient, headers: dict, n: int = 300, jobs: int = 4) -> dict:
    R = synthetic_returns(n, seed=7)
    dates = trading_dates(T)
    payload = json.dumps({"returns": {f"X{i:03d}": R[:, i].tolist() for i in range(n)},
                                        "dates": dates}).encode()
    hdrs = {**headers, "content-type": "application/json"}
    # idle baseline
    idle = []
    for _ in range(200):
        t0 = time.perf_counter()
        await client.get("/health/live")
        idle.append((time.perf_counter() - t0) * 1000)
    t_start = time.perf_counter()
    tasks = [asyncio.create_task(client.post("/api/optimizer/optimize", content=payload, headers=hdrs))
             for _ in range(jobs)]
    lat = []
    while not all(t.done() for t in tasks):
        t0 = time.perf_counter()
        r = await client.get("/health/live")
        lat.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200
        await asyncio.sleep(0.005)
    statuses = [t.result().status_code for t in tasks]
    wall = (time.perf_counter() - t_start) * 1000
    lat.sort()
    idle.sort()

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return {"samples": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": lat[-1],
            "idle_p50": pct(idle, 0.5), "idle_p99": pct(idle, 0.99), "statuses": statuses, "wall_ms": wall}


async def run(args: argparse.Namespace) -> None:
    from tests.support.services import AppProcess, start_cluster

    cluster = start_cluster()
    app = None
    try:
        cluster.create_database("wt_bench")
        env = {"ENV": "test", "DATABASE_URL": cluster.url("wt_bench"), "JWT_SECRET": "bench-" + "x" * 40,
               "DATA_DIR": str(Path(cluster.datadir).parent / "data"), "BCRYPT_ROUNDS": "4", "MARKET_FEED": "off",
               "LOG_LEVEL": "WARNING", "RATE_LIMIT_PER_MINUTE": "1000000", "OPTIMIZER_WORKERS": str(args.workers),
               "OPTIMIZER_NICE": str(args.nice), "OPTIMIZER_TIMEOUT": "120"}
        env.pop("REDIS_URL", None)
        app = AppProcess(env)
        t0 = time.perf_counter()
        app.start(wait=60)
        startup_ms = (time.perf_counter() - t0) * 1000
        async with httpx.AsyncClient(base_url=app.base_url, timeout=300) as client:
            r = await client.post("/api/auth/register",
                                  json={"email": f"bench-{uuid.uuid4().hex[:8]}@example.com",
                                        "password": f"pw-{uuid.uuid4().hex}"})
            assert r.status_code == 201, r.text
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            # wait for warm workers: a tiny optimization answers once one is ready
            t1 = time.perf_counter()
            small = synthetic_returns(3, t=80)
            await client.post("/api/optimizer/optimize", headers=headers, json={
                "returns": {f"S{i}": small[:, i].tolist() for i in range(3)}, "dates": trading_dates(80)})
            warm_ms = (time.perf_counter() - t1) * 1000
            print(f"server up in {startup_ms:.0f} ms (health/live answers); first optimization answered "
                  f"{warm_ms:.0f} ms later (workers importing Riskfolio in the background)")
            print(f"workers={args.workers} nice={args.nice} repeats={args.repeats} observations={T}\n")

            direct = Direct(args.nice, args.rf)
            raw = KeepAlive(int(app.base_url.rsplit(":", 1)[1]))
            try:
                res = await compare(raw, headers, direct, args.repeats, args.rf)
                res["20 db"] = await compare_symbols(raw, headers, direct, args.repeats, args.rf)
            finally:
                raw.close()
                direct.close()
            print("max-Sharpe (ms): median of the rounds, and the best round (less sensitive to other load)")
            print(f"{'assets':>6} {'direct':>8} {'api':>8} {'overhead':>9} | {'best d':>7} {'best api':>8} "
                  f"{'overhead':>9} | {'server':>7} {'worker':>7} {'body MB':>7} {'max |Δw|':>8}")
            for n in [*SIZES, "20 db"]:
                rec = res[n]
                d, a = statistics.median(rec["direct"]), statistics.median(rec["api"])
                bd, ba = min(rec["direct"]), min(rec["api"])
                s, w = statistics.median(rec["server"]), statistics.median(rec["worker"])
                print(f"{n:>6} {d:>8.1f} {a:>8.1f} {100 * (a / d - 1):>8.1f}% | {bd:>7.1f} {ba:>8.1f} "
                      f"{100 * (ba / bd - 1):>8.1f}% | {s:>7.1f} {w:>7.1f} {rec['body_mb']:>7.2f} "
                      f"{rec['max_dw']:>8.1e}")
            print("  direct = Riskfolio Portfolio + assets_stats + optimization, in a process like a worker")
            print("  (same niceness, one BLAS thread), alternating with the API calls;")
            print("  api = client-side wall time of POST /api/optimizer/optimize over a raw keep-alive connection")
            print("  (HTTP, JSON, authentication, validation,")
            print("  pool hand-off, the solve, risk contributions, response); server = inside the handler;")
            db = res["20 db"]
            print("  worker = inside the worker. '20 db': the 20 bundled symbols by `symbols`, direct call on")
            print("  the same returns; the closes are read from the database on the first call")
            print(f"  ({db['first_api']:.1f} ms in all, {db['first_server']:.1f} ms in the handler) and kept 60 s.")
            print(f"  load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")

            live = await liveness_under_load(client, headers)
            print(f"GET /health/live during {len(live['statuses'])} concurrent 300-asset max-Sharpe optimizations "
                  f"(statuses {live['statuses']}, {live['wall_ms']:.0f} ms in all):")
            print(f"  {live['samples']} samples: p50 {live['p50']:.1f} ms, p99 {live['p99']:.1f} ms, "
                  f"max {live['max']:.1f} ms  (idle: p50 {live['idle_p50']:.1f} ms, p99 {live['idle_p99']:.1f} ms)")
    finally:
        if app is not None:
            app.stop()
        cluster.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--rf", type=float, default=0.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
