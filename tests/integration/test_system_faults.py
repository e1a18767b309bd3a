"""Faults on real processes, each with its own throwaway PostgreSQL cluster or Redis server so the rest
of the suite is undisturbed: PostgreSQL restarted under load, Redis stopped and restarted."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx

from tests.support.services import RedisServer, start_cluster
from tests.support.system import ServeProcess, register_sync, wait_for


class Load:
    """A few threads requesting the given paths in a loop; counts answers and transport errors."""

    def __init__(self, base_url: str, paths: list[str], headers: dict[str, str] | None = None,
                 threads: int = 3) -> None:
        self.base_url = base_url
        self.paths = paths
        self.headers = headers or {}
        self.stop_event = threading.Event()
        self.results: Counter[tuple[str, int | str]] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=5) as client:
            n = i
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                path = self.paths[n % len(self.paths)]
                n += 1
                try:
                    key: tuple[str, int | str] = (path, client.get(path).status_code)
                except httpx.HTTPError as exc:
                    key = (path, type(exc).__name__)
                with self.lock:
                    self.results[key] += 1
                time.sleep(0.01)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(10)

    def count(self, path: str, status: int | str) -> int:
        with self.lock:
            return self.results[(path, status)]


def _only_structured_logs(proc: ServeProcess) -> None:
    """Every line the app printed is a JSON log record: nothing crashed past the logging."""
    for line in proc.logs().splitlines():
        json.loads(line)


def _ready(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/health/ready", timeout=5)


def _status(base_url: str, headers: dict[str, str]) -> dict:
    r = httpx.get(f"{base_url}/api/system/status", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_postgresql_restart_under_load(test_env, tmp_path):
    cluster = start_cluster()
    cluster.create_database("wt_fault")
    env = {**test_env, "DATABASE_URL": cluster.url("wt_fault"), "DATA_DIR": str(tmp_path),
           "SYSTEM_SAMPLE_INTERVAL": "0.5"}
    proc = ServeProcess(env)
    try:
        proc.start()
        base = proc.base_url
        status_headers = register_sync(base)
        assert _ready(base).status_code == 200
        with Load(base, ["/health/live", "/health/ready", "/api/system/status"], status_headers) as load:
            time.sleep(1.0)
            cluster.stop("fast")
            stopped_at = time.monotonic()
            wait_for(lambda: _ready(base).status_code == 503, 10, what="readiness 503 after PostgreSQL stopped")
            body = _ready(base).json()
            assert body["status"] == 503 and "database" in body["detail"]
            assert body["checks"]["database"]["ok"] is False
            wait_for(lambda: _status(base, status_headers)["status"] == "down", 10, what="status down")
            summary = _status(base, status_headers)
            assert summary["database"]["ok"] is False
            assert any("database unreachable" in p for p in summary["problems"])
            assert httpx.get(f"{base}/health/live").status_code == 200
            time.sleep(max(0.0, 2.0 - (time.monotonic() - stopped_at)))  # stay down a while under load

            cluster.start()
            took = wait_for(lambda: _ready(base).status_code == 200, 30, what="readiness back to 200")
            wait_for(lambda: _status(base, status_headers)["status"] == "ok", 10, what="status ok again")
            assert _status(base, status_headers)["database"]["ok"] is True
            time.sleep(0.5)
        assert proc.alive(), proc.logs()[-2000:]
        # Liveness and the status page never failed; readiness said 200, then 503, then 200 again.
        assert load.count("/health/live", 200) > 10
        assert {s for (p, s) in load.results if p == "/health/live"} == {200}, load.results
        assert {s for (p, s) in load.results if p == "/api/system/status"} == {200}, load.results
        assert load.count("/health/ready", 503) > 0 and load.count("/health/ready", 200) > 0
        assert took < 30
        _only_structured_logs(proc)
    finally:
        proc.kill()
        cluster.destroy()


def _market(base_url: str, headers: dict[str, str]) -> dict:
    return _status(base_url, headers)["services"].get("market", {})


async def _trades_between(db_url: str, start: float, end: float) -> int:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM trades WHERE ts > to_timestamp($1) AND ts < to_timestamp($2)",
                                   start, end)
    finally:
        await conn.close()


def _ingest_through_a_restart(test_env, tmp_path, check, outage: float = 3.0) -> None:
    """The simulator ingests; PostgreSQL stops for `outage` s and returns; `check(...)` judges the result."""
    import asyncio

    cluster = start_cluster()
    cluster.create_database("wt_fault_ingest")
    db_url = cluster.url("wt_fault_ingest")
    # its own Redis database too: the simulator's fresh quotes must not reach other tests' prices
    redis_url = test_env["REDIS_URL"].rsplit("/", 1)[0] + "/10"
    proc = ServeProcess({**test_env, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "DATA_DIR": str(tmp_path),
                         "MARKET_FEED": "simulator", "SIMULATOR_RATE": "1000", "SYSTEM_SAMPLE_INTERVAL": "0.5"})
    try:
        proc.start(wait=90)
        base = proc.base_url
        headers = register_sync(base)
        wait_for(lambda: (_market(base, headers).get("events_per_second") or 0) > 0, 30, what="ingesting")
        time.sleep(1.0)
        cluster.stop("fast")
        down_from = time.time()
        # While the database is down the feed goes on for a moment: its events wait in the buffer.
        buffered = 0
        while time.time() - down_from < outage:
            buffered = max(buffered, _market(base, headers).get("queue_depth") or 0)
            time.sleep(0.2)
        down_to = time.time()
        cluster.start()
        wait_for(lambda: _ready(base).status_code == 200, 30, what="readiness back to 200")
        check(base=base, headers=headers, buffered=buffered, down_from=down_from, down_to=down_to,
              count=lambda a, b: asyncio.run(_trades_between(db_url, a, b)))
        assert proc.alive()
        _only_structured_logs(proc)
    finally:
        proc.kill()
        cluster.destroy()


def test_ingestion_resumes_after_a_postgresql_restart(test_env, tmp_path):
    def check(*, base, headers, count, **_):
        resumed_after = time.time()
        wait_for(lambda: count(resumed_after, time.time() + 60) > 100, 30, what="new trades stored after the restart")
        wait_for(lambda: _market(base, headers).get("ingesting") is True, 10, what="market ingesting again")
        wait_for(lambda: _status(base, headers)["status"] == "ok", 10, what="status ok again")

    _ingest_through_a_restart(test_env, tmp_path, check)


def test_ingestion_buffer_of_the_outage_is_flushed_after_a_postgresql_restart(test_env, tmp_path):
    def check(*, buffered, down_from, down_to, count, **_):
        assert buffered >= 100, f"no buffer observed during the outage ({buffered})"
        # A few dozen minute bars of the buffer are not trades: hence the margin.
        wait_for(lambda: count(down_from - 0.2, down_to) >= buffered - 60, 15,
                 what=f"the {buffered} events buffered during the outage to be flushed")

    # Long enough that the leader surely notices its lost connection while the database is down
    # (with a shorter outage the same leader may keep going and drain its buffer itself).
    _ingest_through_a_restart(test_env, tmp_path, check, outage=7.0)


def _metric(base_url: str, name: str) -> float | None:
    """One sample of our /metrics (loopback is a monitoring network by default)."""
    r = httpx.get(f"{base_url}/metrics", timeout=5)
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_redis_stopped_degrades_clearly_and_recovers(test_env, tmp_path):
    redis = RedisServer()
    redis.start()
    env = {**test_env, "REDIS_URL": redis.url, "DATA_DIR": str(tmp_path), "SYSTEM_SAMPLE_INTERVAL": "0.5"}
    proc = ServeProcess(env)
    try:
        proc.start()
        base = proc.base_url
        status_headers = register_sync(base)
        assert _ready(base).status_code == 200
        assert _status(base, status_headers)["redis"]["ok"] is True
        assert _metric(base, "wt_redis_up") == 1.0
        with Load(base, ["/health/live", "/metrics", "/api/system/status"], status_headers, threads=3) as load:
            redis.stop()
            wait_for(lambda: _ready(base).status_code == 503, 10, what="readiness 503 after Redis stopped")
            body = _ready(base).json()
            assert body["detail"] == "not ready: redis" and body["checks"]["database"]["ok"] is True
            # Clearly degraded, measured by the sampler (seen through /metrics, which needs no Redis).
            wait_for(lambda: _metric(base, "wt_redis_up") == 0.0, 10, what="wt_redis_up 0")
            assert _metric(base, 'wt_status{status="degraded"}') == 1.0
            assert _metric(base, "wt_db_up") == 1.0
            # Signed-in users keep being served: sessions fall back to the database and the global
            # rate limit fails open (app/auth); the status page says what is wrong.
            wait_for(lambda: _status(base, status_headers)["status"] == "degraded", 10, what="status degraded")
            summary = _status(base, status_headers)
            assert summary["redis"]["ok"] is False and summary["database"]["ok"] is True
            assert any(p.startswith("redis unreachable") for p in summary["problems"])
            time.sleep(1.0)

            redis.start()  # same port
            wait_for(lambda: _ready(base).status_code == 200, 20, what="readiness back after Redis returned")
            wait_for(lambda: _status(base, status_headers)["status"] == "ok", 10, what="status ok again")
        assert _status(base, status_headers)["redis"]["ok"] is True
        assert proc.alive(), proc.logs()[-2000:]
        assert {s for (p, s) in load.results if p == "/health/live"} == {200}, load.results
        assert {s for (p, s) in load.results if p == "/metrics"} == {200}, load.results
        assert {s for (p, s) in load.results if p == "/api/system/status"} == {200}, load.results
        _only_structured_logs(proc)
    finally:
        proc.kill()
        redis.destroy()
