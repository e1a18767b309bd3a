"""The app SIGKILLed while trades are being posted: every trade that got a 201 is there after a
restart, and retrying the unanswered ones with their Idempotency-Key records each exactly once."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import asyncpg
import httpx

from tests.support.system import ServeProcess, register_sync

WRITERS = 4


def test_sigkill_while_posting_trades_loses_no_acknowledged_trade(test_env, pg_cluster, tmp_path):
    pg_cluster.create_database("wt_sys_crash")
    db_url = pg_cluster.url("wt_sys_crash")
    env = {**test_env, "DATABASE_URL": db_url, "DATA_DIR": str(tmp_path)}
    proc = ServeProcess(env)
    proc.start(wait=90)
    restarted: ServeProcess | None = None
    try:
        headers = register_sync(proc.base_url)
        with httpx.Client(base_url=proc.base_url, headers=headers, timeout=10) as client:
            r = client.post("/api/portfolio", json={"name": "crash test"})
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
            r = client.post(f"/api/portfolio/{pid}/transactions", json={"type": "deposit", "amount": "1000000"})
            assert r.status_code == 201, r.text

        acknowledged: dict[str, str] = {}  # idempotency key → transaction id (got a 201)
        unanswered: list[str] = []  # keys whose request got no answer (in flight at the kill)
        lock = threading.Lock()
        stop = threading.Event()

        def writer() -> None:
            deadline = time.monotonic() + 30
            with httpx.Client(base_url=proc.base_url, headers=headers, timeout=10) as c:
                while not stop.is_set() and time.monotonic() < deadline:
                    key = uuid.uuid4().hex
                    try:
                        r = c.post(f"/api/portfolio/{pid}/transactions", headers={"Idempotency-Key": key},
                                   json={"type": "buy", "symbol": "AAPL", "quantity": "1", "price": "10.5"})
                    except httpx.HTTPError:
                        with lock:
                            unanswered.append(key)
                        return  # the server is gone
                    assert r.status_code == 201, r.text
                    with lock:
                        acknowledged[key] = r.json()["id"]

        threads = [threading.Thread(target=writer, daemon=True) for _ in range(WRITERS)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        proc.kill()  # SIGKILL, mid-stream
        stop.set()
        for t in threads:
            t.join(15)
        assert len(acknowledged) > 20, "too few trades before the kill to mean anything"
        assert unanswered, "no request was in flight at the kill"

        restarted = ServeProcess(env)
        restarted.start(wait=90)

        async def stored(ids: list[str]) -> set[str]:
            c = await asyncpg.connect(db_url)
            try:
                rows = await c.fetch("SELECT id::text FROM transactions WHERE id = ANY($1::uuid[])", ids)
                return {r["id"] for r in rows}
            finally:
                await c.close()

        found = asyncio.run(stored(list(acknowledged.values())))
        missing = set(acknowledged.values()) - found
        assert not missing, f"{len(missing)} acknowledged trades lost after SIGKILL"

        # The unanswered ones: a claim the killed process left "in flight" is taken over after
        # IDEMPOTENCY_TAKEOVER (60 s) by design; age those claims instead of waiting a minute.
        async def age_claims() -> int:
            c = await asyncpg.connect(db_url)
            try:
                return int((await c.execute(
                    "UPDATE portfolio_idempotency_keys SET created_at = created_at - interval '61 seconds' "
                    "WHERE status = 'in_flight'")).split()[-1])
            finally:
                await c.close()

        asyncio.run(age_claims())
        # Then a retry with the same key records each exactly once (or replays what was committed).
        with httpx.Client(base_url=restarted.base_url, headers=headers, timeout=10) as client:
            for key in unanswered:
                for _ in range(2):
                    r = client.post(f"/api/portfolio/{pid}/transactions", headers={"Idempotency-Key": key},
                                    json={"type": "buy", "symbol": "AAPL", "quantity": "1", "price": "10.5"})
                    assert r.status_code == 201, r.text
            # And the acknowledged ones replay their original answer.
            some_key, some_id = next(iter(acknowledged.items()))
            r = client.post(f"/api/portfolio/{pid}/transactions", headers={"Idempotency-Key": some_key},
                            json={"type": "buy", "symbol": "AAPL", "quantity": "1", "price": "10.5"})
            assert r.status_code == 201 and r.json()["id"] == some_id
            assert r.headers.get("Idempotent-Replayed") == "true"

        async def buys() -> int:
            c = await asyncpg.connect(db_url)
            try:
                return await c.fetchval("SELECT count(*) FROM transactions WHERE portfolio_id = $1 AND type = 'buy'",
                                        uuid.UUID(pid))
            finally:
                await c.close()

        # Exactly one row per key ever sent: no duplicates from the retries, nothing lost.
        assert asyncio.run(buys()) == len(acknowledged) + len(unanswered)
        with httpx.Client(base_url=restarted.base_url, headers=headers, timeout=10) as client:
            holdings = client.get(f"/api/portfolio/{pid}/holdings").json()
        aapl = next(h for h in holdings["holdings"] if h["symbol"] == "AAPL")
        assert float(aapl["quantity"]) == len(acknowledged) + len(unanswered)
    finally:
        proc.kill()
        if restarted is not None:
            restarted.kill()
