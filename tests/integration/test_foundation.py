"""The app shell: problem details, request ids, structured logs, health, OpenAPI, start-up checks."""

import asyncio
import json
import logging
import subprocess
import sys

from litestar import post
from litestar.testing import AsyncTestClient
import msgspec
import pytest

from app import asgi
from app.config import PROJECT_ROOT
from app.embedded_pg import Cluster
from tests.conftest import make_settings
from tests.support.services import free_port
import tempfile
from pathlib import Path


def _tmp(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


async def test_live_and_ready(client):
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    r = await client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": {"ok": True}, "migrations": {"ok": True}, "redis": {"ok": True}}


async def test_unknown_route_is_a_problem_details_404_with_a_request_id(client):
    r = await client.get("/no/such/route")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 404 and body["title"] == "Not Found" and body["instance"] == "/no/such/route"
    assert body["request_id"] == r.headers["x-request-id"]


async def test_incoming_request_id_is_echoed_and_bad_ones_replaced(client):
    r = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/health/live", headers={"X-Request-ID": "bad id\x7f" * 20})
    assert r.headers["x-request-id"] != "bad id" and len(r.headers["x-request-id"]) == 32


async def test_openapi_schema_and_ui(client):
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200 and r.json()["info"]["title"] == "Wealth Terminal API"
    assert (await client.get("/schema/swagger")).status_code == 200


class Payload(msgspec.Struct, forbid_unknown_fields=True):
    amount: int
    name: str


@post("/_test/echo", sync_to_thread=False)
def echo(data: Payload) -> dict:
    return {"amount": data.amount}


@post("/_test/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("secret internals token=abc")


@pytest.fixture
async def shell_client(settings, monkeypatch):
    """The app with two extra routes, to exercise validation and unhandled errors."""
    import types

    mod = types.SimpleNamespace(route_handlers=[echo, boom])
    monkeypatch.setattr(asgi, "_load_domains", lambda: [*[__import__(m, fromlist=["x"]) for m in asgi.DOMAIN_MODULES], mod])
    async with AsyncTestClient(app=asgi.create_app(settings)) as c:
        yield c


async def test_validation_errors_name_the_field(shell_client):
    r = await shell_client.post("/_test/echo", json={"amount": "many", "name": "x"})
    assert r.status_code == 400
    body = r.json()
    assert body["errors"][0]["field"] == "amount" and "amount" in body["detail"]
    r = await shell_client.post("/_test/echo", json={"amount": 1, "name": "x", "role": "admin"})
    assert r.status_code == 400 and "role" in r.json()["detail"]
    r = await shell_client.post("/_test/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")


async def test_unhandled_error_is_a_500_without_internals(shell_client):
    r = await shell_client.post("/_test/boom")
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_access_log_is_one_json_line_without_query_or_secrets(caplog):
    from app.logs import JsonFormatter

    rec = logging.LogRecord("app.access", logging.INFO, "", 0, "request", (), None)
    rec.path, rec.status, rec.authorization, rec.password = "/x", 200, "Bearer abc", "hunter2"
    line = JsonFormatter().format(rec)
    data = json.loads(line)
    assert data["path"] == "/x" and data["status"] == 200
    assert data["authorization"] == "[redacted]" and data["password"] == "[redacted]"
    assert "hunter2" not in line and "abc" not in line


def test_serve_without_timescaledb_exits_with_one_clear_line(unique):
    """A DATABASE_URL whose server lacks TimescaleDB: exit non-zero, one line naming the fix."""
    cluster = Cluster(_tmp("wt-nots-") / "pg", free_port())
    cluster.init()
    conf = cluster.datadir / "postgresql.auto.conf"
    conf.write_text(conf.read_text().replace("shared_preload_libraries = 'timescaledb'", ""))
    cluster.start()
    try:
        env = {"DATABASE_URL": cluster.url(), "PATH": "/usr/bin:/bin", "ENV": "test", "PORT": str(free_port())}
        out = subprocess.run([sys.executable, "-m", "app", "serve"], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        lines = [l for l in out.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and "TimescaleDB" in lines[0] and "shared_preload_libraries" in lines[0]
    finally:
        cluster.destroy()


def test_invalid_setting_stops_start_up_naming_it():
    env = {"PATH": "/usr/bin:/bin", "PORT": "not-a-port"}
    out = subprocess.run([sys.executable, "-m", "app", "serve"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "PORT" in out.stderr


async def test_ready_turns_503_when_postgres_stops_and_recovers_without_restart(test_env):
    """Own cluster, so that stopping it does not disturb the rest of the suite."""
    cluster = Cluster(_tmp("wt-ready-") / "pg", free_port())
    cluster.start()
    cluster.create_database("app")
    try:
        settings = make_settings(test_env, database_url=cluster.url("app"))
        async with AsyncTestClient(app=asgi.create_app(settings)) as c:
            assert (await c.get("/health/ready")).status_code == 200
            await asyncio.to_thread(cluster.stop)
            r = await c.get("/health/ready")
            assert r.status_code == 503 and "database" in r.json()["detail"]
            assert (await c.get("/health/live")).status_code == 200
            await asyncio.to_thread(cluster.start)
            for _ in range(50):
                if (await c.get("/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await c.get("/health/ready")).status_code == 200
    finally:
        cluster.destroy()


async def test_ready_names_redis_when_it_is_down(test_env):
    from tests.support.services import RedisServer

    server = RedisServer()
    server.start()
    try:
        settings = make_settings(test_env, redis_url=server.url)
        async with AsyncTestClient(app=asgi.create_app(settings)) as c:
            assert (await c.get("/health/ready")).status_code == 200
            server.stop()
            r = await c.get("/health/ready")
            assert r.status_code == 503 and "redis" in r.json()["detail"]
            server.start()
            ok = False
            for _ in range(50):
                if (await c.get("/health/ready")).status_code == 200:
                    ok = True
                    break
                await asyncio.sleep(0.1)
            assert ok
    finally:
        server.destroy()


def test_memory_cache_when_redis_url_is_unset(test_env):
    settings = make_settings({**test_env, "REDIS_URL": ""})
    assert settings.redis_url is None
