"""Auth benchmark: what authentication costs per request, and how logins load the server.

    .venv/bin/python scripts/bench/auth.py [--seconds 5] [--connections 32] [--rounds 2]

Starts its own throwaway PostgreSQL+TimescaleDB cluster and Redis (tests.support.services) and two
servers (`python -m app serve`, uvicorn + uvloop + httptools, one process each), both Redis-backed:
  A. the real app: JWT auth on every /api/ request (signature + claims + session state in Redis);
  B. the same app with the JWT middleware replaced by one that sets a fixed `request.user`.
Then, with a small keep-alive HTTP/1.1 load generator (raw asyncio, so the client is cheap):
  1. authenticated GET /api/user/me on A vs the same endpoint on B: requests/s, p50, p99, ratio;
  2. POST /api/auth/login at BCRYPT_ROUNDS=12 (the production cost) on A, while a probe measures
     /health/live latency: logins/s and whether the event loop stays responsive.
Numbers depend on the machine (and on whatever else runs on it); see docs/auth.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from _http import load, one, request, start_server, summarize  # noqa: E402  (scripts/bench/_http.py)

JWT_SECRET = "bench-secret-" + "b" * 40
PASSWORD = "benchmark passphrase 1"


# --- server B: the app with authentication switched off -------------------------------------------

def serve_noauth(port: int) -> None:
    import uvicorn

    import app.auth as auth_domain
    from app.asgi import create_app
    from app.auth.models import AuthUser
    from app.auth.security import AuthPlugin
    from app.config import load_settings

    settings = load_settings()
    user = AuthUser(id=uuid.UUID(os.environ["BENCH_USER_ID"]), email=os.environ["BENCH_USER_EMAIL"], role="user",
                    session_id=uuid.UUID(os.environ["BENCH_SESSION_ID"]))

    class FixedUser:
        def __init__(self, app):  # type: ignore[no-untyped-def]
            self.app = app

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            scope["user"] = user
            await self.app(scope, receive, send)

    auth_domain.plugins = lambda s: [AuthPlugin(s, authenticate=False)]  # rate limit stays, JWT goes
    auth_domain.middleware = lambda s: [FixedUser]
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                lifespan="on", log_config=None, access_log=False, server_header=False)


# --- load generator -------------------------------------------------------------------------------

async def probe(port: int, stop: asyncio.Event, interval: float = 0.02) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = request("GET", "/health/live", {})
    out: list[float] = []
    try:
        while not stop.is_set():
            started = time.perf_counter()
            assert await one(reader, writer, req) == 200
            out.append(time.perf_counter() - started)
            await asyncio.sleep(interval)
    finally:
        writer.close()
    return out


# --- orchestration --------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> dict:
    import httpx
    import jwt

    from tests.support.services import RedisServer, free_port, start_cluster

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cluster = start_cluster()
    redis = RedisServer()
    redis.start()
    procs: list[subprocess.Popen] = []
    logdir = Path(tempfile.mkdtemp(prefix="wt-bench-auth-"))
    try:
        cluster.create_database("bench")
        env = {"ENV": "development", "DATABASE_URL": cluster.url("bench"), "REDIS_URL": redis.url,
               "JWT_SECRET": JWT_SECRET, "DATA_DIR": str(logdir), "MARKET_FEED": "off", "LOG_LEVEL": "WARNING",
               "BCRYPT_ROUNDS": "12", "RATE_LIMIT_PER_MINUTE": "100000000", "LOGIN_ATTEMPTS_PER_MINUTE": "1000000",
               "HOST": "127.0.0.1"}
        port_a, port_b = free_port(), free_port()
        procs.append(start_server([sys.executable, "-m", "app", "serve"], env, port_a, logdir / "a.log", wait=60))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}", timeout=30) as http:
            r = await http.post("/api/auth/register", json={"email": "bench@example.com", "password": PASSWORD})
            r.raise_for_status()
            body = r.json()
        token = body["access_token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        env_b = {**env, "BENCH_USER_ID": claims["sub"], "BENCH_SESSION_ID": claims["sid"],
                 "BENCH_USER_EMAIL": "bench@example.com"}
        procs.append(start_server([sys.executable, str(Path(__file__).resolve()), "serve-noauth", str(port_b)],
                                  env_b, port_b, logdir / "b.log"))

        me_auth = request("GET", "/api/user/me", {"Authorization": f"Bearer {token}"})
        me_none = request("GET", "/api/user/me", {})
        await load(port_a, me_auth, 1.0, args.connections)  # warm-up both
        await load(port_b, me_none, 1.0, args.connections)
        on, off = [], []
        for _ in range(args.rounds):  # interleaved, so background noise hits both alike
            off.append(await load(port_b, me_none, args.seconds, args.connections))
            on.append(await load(port_a, me_auth, args.seconds, args.connections))

        def avg(rows: list[dict]) -> dict:
            return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}

        result: dict = {"me_auth": avg(on), "me_noauth": avg(off)}
        result["rps_ratio_auth_over_noauth"] = result["me_auth"]["rps"] / result["me_noauth"]["rps"]
        result["p99_ratio_auth_over_noauth"] = result["me_auth"]["p99_ms"] / result["me_noauth"]["p99_ms"]

        # Logins at production cost, with the health probe running alongside.
        stop = asyncio.Event()
        idle_probe = asyncio.create_task(probe(port_a, stop))
        await asyncio.sleep(1.0)
        stop.set()
        idle = summarize(await idle_probe, 1.0)
        stop = asyncio.Event()
        probe_task = asyncio.create_task(probe(port_a, stop))
        login_body = json.dumps({"email": "bench@example.com", "password": PASSWORD}).encode()
        login_req = request("POST", "/api/auth/login", {"Content-Type": "application/json"}, login_body)
        logins = await load(port_a, login_req, args.seconds * 2, args.login_connections)
        stop.set()
        busy = summarize(await probe_task, args.seconds * 2)
        result["logins"] = logins
        result["health_idle"] = {k: idle[k] for k in ("p50_ms", "p99_ms", "max_ms")}
        result["health_during_logins"] = {k: busy[k] for k in ("requests", "p50_ms", "p99_ms", "max_ms")}
        return result
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.destroy()
        cluster.destroy()


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "serve-noauth":
        serve_noauth(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--login-connections", type=int, default=8)
    args = parser.parse_args()
    r = asyncio.run(run(args))
    a, b, lg = r["me_auth"], r["me_noauth"], r["logins"]
    print(f"cpu cores: {os.cpu_count()}; {args.connections} connections, {args.rounds} x {args.seconds:.0f}s per side")
    print(f"GET /api/user/me  auth on : {a['rps']:8.0f} req/s   p50 {a['p50_ms']:6.2f} ms   p99 {a['p99_ms']:6.2f} ms"
          f"   errors {a['errors']:.0f}")
    print(f"GET /api/user/me  auth off: {b['rps']:8.0f} req/s   p50 {b['p50_ms']:6.2f} ms   p99 {b['p99_ms']:6.2f} ms"
          f"   errors {b['errors']:.0f}")
    print(f"ratio auth/no-auth: throughput {r['rps_ratio_auth_over_noauth']:.2f}x, p99 {r['p99_ratio_auth_over_noauth']:.2f}x")
    print(f"POST /api/auth/login (bcrypt cost 12, {args.login_connections} concurrent): {lg['rps']:.1f} logins/s"
          f"   p50 {lg['p50_ms']:.0f} ms   p99 {lg['p99_ms']:.0f} ms   errors {lg['errors']}")
    hi, hb = r["health_idle"], r["health_during_logins"]
    print(f"GET /health/live idle        : p50 {hi['p50_ms']:.2f} ms  p99 {hi['p99_ms']:.2f} ms  max {hi['max_ms']:.2f} ms")
    print(f"GET /health/live during login: p50 {hb['p50_ms']:.2f} ms  p99 {hb['p99_ms']:.2f} ms  max {hb['max_ms']:.2f} ms"
          f"  ({hb['requests']} probes)")
    print(json.dumps(r, default=float))


if __name__ == "__main__":
    main()
