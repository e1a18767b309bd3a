"""System benchmark: what /api/system/status costs, and the event-loop lag under ingestion load.

    .venv/bin/python scripts/bench/system.py [--seconds 5] [--connections 16] [--rate 20000]

Starts its own throwaway PostgreSQL+TimescaleDB cluster and Redis (tests.support.services) and the
app as a real `python -m app serve` subprocess (uvicorn, uvloop, httptools; Redis-backed). Then,
with a small keep-alive HTTP/1.1 load generator (raw asyncio, so the client is cheap):

  1. GET /api/system/status as a signed-in user (summary) and as an admin (everything), each under
     `--connections` concurrent keep-alive connections for `--seconds`: requests/s, p50, p99; with
     two baselines under the same load: GET /health/live (the stack without auth) and
     GET /api/user/me (auth + rate limit + one small database read).
  2. The event-loop lag (the app's own probe, read from /metrics: p99 and max over its 10 s window)
     a) idle, b) while the market feed ingests at `--rate` simulated trade events/s (the ingestion
     benchmark's load: MARKET_FEED=simulator, SIMULATOR_RATE=rate) when the market domain provides
     the simulator; otherwise c) under the HTTP load of step 1 instead, and the output says so.

Numbers depend on the machine and on whatever else runs on it (docs/system.md has ours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from _http import load, request, start_server  # noqa: E402  (scripts/bench/_http.py)

SERVE = [sys.executable, "-m", "app", "serve"]

JWT_SECRET = "bench-secret-" + "s" * 40


def metric(port: int, name: str, labels: str = "") -> float | None:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def lag(port: int) -> dict:
    out = {}
    for stat in ("p99", "max", "mean"):
        v = metric(port, "wt_event_loop_lag_window_seconds", f'stat="{stat}"')
        out[f"{stat}_ms"] = None if v is None else round(v * 1000, 2)
    return out


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def register(port: int, database_url: str | None = None) -> dict[str, str]:
    import httpx

    from tests.support.auth import make_admin

    base = f"http://127.0.0.1:{port}"
    email, password = f"bench-{uuid.uuid4().hex[:10]}@example.com", f"pw-{uuid.uuid4().hex}"
    r = httpx.post(f"{base}/api/auth/register", json={"email": email, "password": password}, timeout=30)
    r.raise_for_status()
    token = r.json()["access_token"]
    if database_url:
        asyncio.run(make_admin(database_url, r.json()["user"]["id"]))
        r = httpx.post(f"{base}/api/auth/login", json={"email": email, "password": password}, timeout=30)
        r.raise_for_status()
        token = r.json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def market_status(port: int, admin: dict[str, str]) -> dict | None:
    import httpx

    r = httpx.get(f"http://127.0.0.1:{port}/api/system/status", headers=admin, timeout=5)
    return (r.json().get("detail", {}).get("services") or {}).get("market")


def run(args: argparse.Namespace) -> dict:
    from tests.support.services import RedisServer, free_port, start_cluster

    cluster = start_cluster()
    cluster.create_database("bench")
    redis = RedisServer()
    redis.start()
    logdir = Path(tempfile.mkdtemp(prefix="wt-bench-system-"))
    base_env = {
        "ENV": "test", "DATABASE_URL": cluster.url("bench"), "REDIS_URL": redis.url, "JWT_SECRET": JWT_SECRET,
        "DATA_DIR": str(logdir), "BCRYPT_ROUNDS": "4", "LOG_LEVEL": "WARNING", "RATE_LIMIT_PER_MINUTE": "100000000",
        "MARKET_FEED": "off",
    }
    results: dict = {"machine": {"cpus": os.cpu_count()}, "connections": args.connections, "seconds": args.seconds}
    procs: list[subprocess.Popen] = []
    try:
        # --- 1. the cost of /api/system/status ---------------------------------------------------
        port = free_port()
        proc = start_server(SERVE, base_env, port, logdir / "app.log", ready="/health/ready", wait=90)
        procs.append(proc)
        user = register(port)
        admin = register(port, cluster.url("bench"))
        time.sleep(11)  # let the lag window fill with idle samples
        results["event_loop_lag_idle"] = lag(port)
        for name, path, headers in (("baseline_health_live", "/health/live", {}),
                                    ("baseline_user_me", "/api/user/me", user),
                                    ("status_summary", "/api/system/status", user),
                                    ("status_admin", "/api/system/status", admin)):
            asyncio.run(load(port, request("GET", path, headers), 1.0, args.connections))  # warm-up
            results[name] = asyncio.run(load(port, request("GET", path, headers), args.seconds, args.connections))
        results["event_loop_lag_under_http_load"] = lag(port)
        single = asyncio.run(load(port, request("GET", "/api/system/status", user), args.seconds, 1))
        results["status_summary_one_connection"] = single
        stop_server(proc)

        # --- 2. event-loop lag while the market feed ingests ------------------------------------------
        port = free_port()
        env = {**base_env, "MARKET_FEED": "simulator", "SIMULATOR_RATE": str(args.rate)}
        proc = start_server(SERVE, env, port, logdir / "app-ingest.log", ready="/health/ready", wait=90)
        procs.append(proc)
        admin = register(port, cluster.url("bench"))
        before = None
        deadline = time.monotonic() + 20  # the market service registers itself, then gets sampled
        while time.monotonic() < deadline and not (before and before.get("ingesting")):
            time.sleep(0.5)
            before = market_status(port, admin)
        if not before:
            results["event_loop_lag_under_ingestion"] = (
                "not measured: the market domain's simulator/ingestion is not in this build "
                "(ctx.services['market'] absent); see event_loop_lag_under_http_load instead")
        else:
            time.sleep(args.seconds + 10)  # a full lag window under load
            results["event_loop_lag_under_ingestion"] = {"simulator_rate": args.rate, **lag(port),
                                                         "market": market_status(port, admin)}
        stop_server(proc)
    finally:
        for p in procs:
            stop_server(p)
        redis.destroy()
        cluster.destroy()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=20000.0, help="simulated trade events/s for the lag run")
    args = parser.parse_args()
    results = run(args)
    print(json.dumps(results, indent=2))
    s, b, h = results["status_summary"], results["baseline_user_me"], results["baseline_health_live"]
    print(f"\n/api/system/status (user): p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms at {s['rps']} req/s "
          f"({args.connections} connections); baselines p99: /health/live {h['p99_ms']} ms at {h['rps']} req/s, "
          f"/api/user/me {b['p99_ms']} ms at {b['rps']} req/s")
    one = results["status_summary_one_connection"]
    print(f"/api/system/status one connection: p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms")
    print(f"event-loop lag idle: {results['event_loop_lag_idle']}")
    print(f"event-loop lag under HTTP load: {results['event_loop_lag_under_http_load']}")
    print(f"event-loop lag under ingestion: {results['event_loop_lag_under_ingestion']}")


if __name__ == "__main__":
    main()
