"""Scale-out: two real app processes on different ports, one database, one Redis.

Here: the per-client rate limit, session revocation and the per-user WebSocket limit hold across
both replicas. (Prices streamed
by both and the ingestion takeover are the market domain's scale-out test.)
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.services import RedisServer
from tests.support.system import ServeProcess

LIMIT = 60
WS_LIMIT = 2


@pytest.fixture(scope="module")
def replicas(test_env, tmp_path_factory):
    # A Redis of its own: the rate-limit counters of the rest of the suite (same client address,
    # same minute) must not count here.
    redis = RedisServer()
    redis.start()
    env = {**test_env, "REDIS_URL": redis.url, "RATE_LIMIT_PER_MINUTE": str(LIMIT),
           "WS_MAX_CONNECTIONS_PER_USER": str(WS_LIMIT), "DATA_DIR": str(tmp_path_factory.mktemp("replicas"))}
    a, b = ServeProcess(env), ServeProcess(env)
    try:
        a.start()
        b.start()
        assert a.port != b.port
        yield a, b
    finally:
        a.kill()
        b.kill()
        redis.destroy()


def _register(client: httpx.Client) -> tuple[dict[str, str], dict]:
    email, password = f"rep-{uuid.uuid4().hex[:12]}@example.com", f"pw-{uuid.uuid4().hex}"
    r = client.post("/api/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    body = r.json()
    return {"Authorization": f"Bearer {body['access_token']}"}, {**body, "email": email, "password": password}


def test_logout_on_one_replica_is_honoured_by_the_other_at_once(replicas):
    a, b = replicas
    with httpx.Client(base_url=a.base_url) as on_a, httpx.Client(base_url=b.base_url) as on_b:
        headers, body = _register(on_a)
        # Both replicas have seen (and cached) the session as live.
        assert on_a.get("/api/user/me", headers=headers).status_code == 200
        assert on_b.get("/api/user/me", headers=headers).status_code == 200
        assert on_a.post("/api/auth/logout", headers=headers).status_code == 204
        assert on_b.get("/api/user/me", headers=headers).status_code == 401
        assert on_b.post("/api/auth/refresh", json={"refresh_token": body["refresh_token"]}).status_code == 401


def test_disabling_a_user_on_one_replica_ends_their_sessions_on_the_other(replicas, database_url):
    import asyncio

    from tests.support.auth import make_admin

    a, b = replicas
    with httpx.Client(base_url=a.base_url) as on_a, httpx.Client(base_url=b.base_url) as on_b:
        victim, victim_body = _register(on_a)
        admin, admin_body = _register(on_b)
        asyncio.run(make_admin(database_url, admin_body["user"]["id"]))
        r = on_b.post("/api/auth/login", json={"email": admin_body["email"], "password": admin_body["password"]})
        admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert on_a.get("/api/user/me", headers=victim).status_code == 200  # cached live on A
        r = on_b.patch(f"/api/user/{victim_body['user']['id']}", json={"disabled": True}, headers=admin)
        assert r.status_code == 200, r.text
        assert on_a.get("/api/user/me", headers=victim).status_code == 401


def test_password_change_on_one_replica_ends_other_sessions_on_the_other(replicas):
    a, b = replicas
    with httpx.Client(base_url=a.base_url) as on_a, httpx.Client(base_url=b.base_url) as on_b:
        first, body = _register(on_a)
        r = on_b.post("/api/auth/login", json={"email": body["email"], "password": body["password"]})
        second = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert on_b.get("/api/user/me", headers=first).status_code == 200  # B cached the first session
        new_password = f"pw-{uuid.uuid4().hex}"
        r = on_b.post("/api/user/me/password", headers=second,
                      json={"current_password": body["password"], "new_password": new_password})
        assert r.status_code == 204, r.text
        assert on_a.get("/api/user/me", headers=first).status_code == 401
        assert on_b.get("/api/user/me", headers=first).status_code == 401


def test_rate_limit_is_one_budget_across_both_replicas(replicas):
    """Alternate requests between the replicas: the remaining budget that each reports falls by one
    per request whichever replica answers, and once it is spent both answer 429."""
    a, b = replicas
    with httpx.Client(base_url=a.base_url) as on_a, httpx.Client(base_url=b.base_url) as on_b:
        headers, _ = _register(on_a)
        for attempt in range(2):  # a fixed one-minute window may roll over mid-run: then once more
            remaining: list[int] = []
            statuses: list[int] = []
            rolled = False
            for i in range(LIMIT + 4):
                r = (on_a if i % 2 == 0 else on_b).get("/api/system/status", headers=headers)
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    continue
                left = int(r.headers["RateLimit-Remaining"])
                if remaining and left > remaining[-1]:
                    rolled = True
                    break
                remaining.append(left)
            if rolled:
                continue
            # Strictly one less per request, alternating replicas: one shared counter.
            assert all(x - y == 1 for x, y in zip(remaining, remaining[1:])), remaining
            assert remaining[-1] == 0
            first_429 = statuses.index(429)
            assert statuses[first_429:] == [429] * (len(statuses) - first_429)
            assert {first_429 % 2, (first_429 + 1) % 2} == {0, 1}  # both replicas refused
            assert len(statuses) - first_429 >= 2
            return
        pytest.fail("the rate-limit window rolled over twice")


async def test_the_per_user_websocket_limit_counts_every_replica(replicas):
    import asyncio
    import json

    import websockets

    a, b = replicas
    # from another loopback address: the rate-limit test above used up 127.0.0.1's minute
    with httpx.Client(base_url=a.base_url, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as on_a:
        _, body = _register(on_a)
    token = body["access_token"]

    def url(replica) -> str:
        return f"ws://127.0.0.1:{replica.port}/market-feed?token={token}"

    async def opened(replica):
        ws = await websockets.connect(url(replica))
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first[0]["action"] == "auth", first
        return ws

    ws1, ws2 = await opened(a), await opened(b)  # one on each replica: the limit of 2 is reached
    try:
        for replica in (a, b):
            async with websockets.connect(url(replica)) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 4429 and "at most 2 per user" in closed.value.rcvd.reason
        await ws1.close()  # its slot is released at once, here on A, for B too
        await asyncio.sleep(0.3)
        ws3 = await opened(b)
        await ws3.close()
    finally:
        await ws1.close()
        await ws2.close()
