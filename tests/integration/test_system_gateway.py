"""deploy/nginx.conf for real: nginx (installed by scripts/setup.sh) in front of two app processes.

The file is used as shipped except for what only Docker provides: the listen port, and the upstream
host names app1/app2 (replaced by the two processes' loopback ports). The client connects from
127.0.0.5 so that "the client's address" and "nginx's address" (127.0.0.1) differ.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app.config import PROJECT_ROOT
from tests.support.services import free_port
from tests.support.system import ServeProcess, wait_for

CLIENT_IP = "127.0.0.5"


def _nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert found, "nginx is missing: scripts/setup.sh installs it"
    return found


@pytest.fixture(scope="module")
def gateway(test_env, tmp_path_factory):
    env = {**test_env, "TRUSTED_PROXIES": "127.0.0.1/32", "LOG_LEVEL": "INFO",
           "DATA_DIR": str(tmp_path_factory.mktemp("gw"))}
    apps = [ServeProcess(env), ServeProcess(env)]
    workdir = Path(tempfile.mkdtemp(prefix="wt-nginx-"))
    workdir.chmod(0o755)
    port = free_port()
    conf = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
    conf = conf.replace("server app1:8000", f"server 127.0.0.1:{apps[0].port}")
    conf = conf.replace("server app2:8000", f"server 127.0.0.1:{apps[1].port}")
    assert f"127.0.0.1:{apps[1].port}" in conf and f"listen 127.0.0.1:{port}" in conf
    (workdir / "nginx.conf").write_text(conf)
    log = open(workdir / "nginx.log", "ab")
    nginx = None
    try:
        for app in apps:
            app.start()
        nginx = subprocess.Popen([_nginx_binary(), "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                                  "-e", "stderr", "-g", f"daemon off; pid {workdir}/nginx.pid;"],
                                 stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/nginx-health", timeout=1).status_code == 200, 10, what="nginx")
        yield base, apps, workdir
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for app in apps:
            app.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, transport=httpx.HTTPTransport(local_address=CLIENT_IP), timeout=10)


def _access_lines(app: ServeProcess, request_id: str) -> list[dict]:
    return [rec for rec in (json.loads(line) for line in app.logs().splitlines() if line.startswith("{"))
            if rec.get("msg") == "request" and rec.get("request_id") == request_id]


def test_routes_reach_both_replicas_with_the_request_id(gateway):
    base, apps, _ = gateway
    with _client(base) as client:
        ids = []
        for _ in range(6):
            rid = uuid.uuid4().hex
            r = client.get("/health/ready", headers={"X-Request-ID": rid})
            assert r.status_code == 200 and r.headers["x-request-id"] == rid
            ids.append(rid)
        assert client.get("/schema/openapi.json").status_code == 200
        r = client.get("/not/routed")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert client.get("/metrics").status_code == 404  # never through the gateway
    time.sleep(0.3)
    served = [sum(1 for rid in ids if _access_lines(app, rid)) for app in apps]
    assert sum(served) == 6 and all(n > 0 for n in served), served  # both replicas took requests


def test_the_app_sees_the_real_client_address_and_no_forged_one(gateway):
    base, apps, _ = gateway
    with _client(base) as client:
        rid = uuid.uuid4().hex
        # A client trying to pass itself off as someone else: nginx replaces the header.
        r = client.get("/health/live", headers={"X-Request-ID": rid, "X-Forwarded-For": "10.66.0.1"})
        assert r.status_code == 200
    time.sleep(0.3)
    lines = [rec for app in apps for rec in _access_lines(app, rid)]
    assert len(lines) == 1 and lines[0]["client"] == CLIENT_IP, lines


def test_login_attempts_are_rate_limited_at_the_gateway(gateway):
    base, _, _ = gateway
    by_nginx = by_app = 0
    statuses = []
    with _client(base) as client:
        for _ in range(40):
            r = client.post("/api/auth/login", json={"email": f"{uuid.uuid4().hex[:8]}@example.com",
                                                     "password": "wrong password 1"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                # nginx answers with its own HTML page; the app (which limits failed logins per
                # client address as well) with problem+json.
                if r.headers["content-type"].startswith("text/html"):
                    by_nginx += 1
                else:
                    by_app += 1
    # auth zone: 10/min with a burst of 20 → about 21 reach the apps, then nginx answers 429 itself.
    assert set(statuses) <= {401, 429}, statuses
    assert 15 <= by_nginx <= 19, (by_nginx, statuses)


async def test_market_feed_websocket_upgrades_through_the_gateway(gateway):
    import asyncio

    from websockets.asyncio.client import connect as ws_connect

    from tests.support.system import register_sync

    base, apps, _ = gateway
    headers = register_sync(base)
    token = headers["Authorization"].split()[1]
    url = base.replace("http://", "ws://") + f"/market-feed?token={token}"
    async with ws_connect(url) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        events = frame if isinstance(frame, list) else [frame]
        assert any(e.get("type") == "ack" and e.get("action") == "auth" for e in events), events
        await ws.send(json.dumps({"action": "ping", "id": 1}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        events = frame if isinstance(frame, list) else [frame]
        assert any(e.get("action") == "ping" for e in events), events
