"""The same behaviour from both cache implementations: in-process and real Redis."""

import asyncio

import pytest

from app.cache import MemoryCache, RedisCache


@pytest.fixture(params=["memory", "redis"])
async def cache(request, redis_server):
    c = MemoryCache() if request.param == "memory" else RedisCache(redis_server.url)
    yield c
    await c.close()


async def test_get_set_delete_and_many(cache, unique):
    k = f"t:{unique}"
    assert await cache.get(k) is None
    await cache.set(k, b"v1")
    assert await cache.get(k) == b"v1"
    await cache.set_many({f"{k}:a": b"a", f"{k}:b": b"b"})
    assert await cache.get_many([f"{k}:a", f"{k}:missing", f"{k}:b"]) == [b"a", None, b"b"]
    assert sorted(await cache.keys(f"{k}:*")) == [f"{k}:a", f"{k}:b"]
    assert await cache.delete(k, f"{k}:a") == 2
    assert await cache.get(k) is None


async def test_expiry_and_set_if_absent(cache, unique):
    k = f"t:{unique}"
    assert await cache.set_if_absent(k, b"first", ttl=0.2)
    assert not await cache.set_if_absent(k, b"second", ttl=0.2)
    assert await cache.get(k) == b"first"
    assert 0 < await cache.ttl(k) <= 0.2
    await asyncio.sleep(0.3)
    assert await cache.get(k) is None
    assert await cache.set_if_absent(k, b"third")


async def test_incr_keeps_its_first_window(cache, unique):
    k = f"t:{unique}"
    assert [await cache.incr(k, ttl=0.3) for _ in range(3)] == [1, 2, 3]
    await asyncio.sleep(0.4)
    assert await cache.incr(k, ttl=0.3) == 1


async def test_incr_and_get_counts_and_reads_in_one_call(cache, unique):
    counter, key = f"c:{unique}", f"k:{unique}"
    assert await cache.incr_and_get(counter, 0.3, key) == (1, None)
    await cache.set(key, b"state")
    assert await cache.incr_and_get(counter, 0.3, key) == (2, b"state")
    assert await cache.incr(counter, ttl=0.3) == 3  # the same counter as incr's
    assert 0 < await cache.ttl(counter) <= 0.3  # the window was set when the counter was created
    await asyncio.sleep(0.4)
    assert await cache.incr_and_get(counter, 0.3, key) == (1, b"state")


async def test_incr_and_get_survives_a_flushed_script_cache(redis_server, unique):
    """The request path calls EVALSHA directly: after SCRIPT FLUSH (or a Redis restart) it loads the
    script again instead of failing the request."""
    cache = RedisCache(redis_server.url)
    try:
        counter, key = f"c:{unique}", f"k:{unique}"
        assert await cache.incr_and_get(counter, 5, key) == (1, None)
        await cache.client.script_flush()
        assert await cache.incr_and_get(counter, 5, key) == (2, None)
        assert await cache.incr_and_get(counter, 5, key) == (3, None)
    finally:
        await cache.close()


async def test_concurrent_incr_and_get_calls_share_pipelines_and_count_exactly(redis_server, unique):
    """Calls made in the same event-loop turn go to Redis in one pipeline; every count still comes back
    exactly once, with the right session value, and a NOSCRIPT inside a batch is repaired."""
    cache = RedisCache(redis_server.url)
    try:
        counter, key = f"c:{unique}", f"k:{unique}"
        await cache.set(key, b"state")
        results = await asyncio.gather(*[cache.incr_and_get(counter, 5, key) for _ in range(100)])
        assert sorted(n for n, _ in results) == list(range(1, 101))
        assert {v for _, v in results} == {b"state"}
        assert cache.batched_calls == 100 and cache.batches < 10  # batched, not one round trip each
        await cache.client.script_flush()
        others = await asyncio.gather(*[cache.incr_and_get(f"{counter}:{i % 3}", 5, key) for i in range(30)])
        assert sorted(n for n, _ in others) == sorted([*range(1, 11)] * 3)
    finally:
        await cache.close()


async def test_slots_are_limited_renewable_released_and_expire(cache, unique):
    k = f"slots:{unique}"
    assert [await cache.claim_slot(k, m, 2, 0.4) for m in ("a", "b", "c")] == [True, True, False]
    assert await cache.claim_slot(k, "a", 2, 0.4)  # a holder renews its own slot even when full
    await cache.release_slot(k, "b")
    assert await cache.claim_slot(k, "c", 2, 0.4) and not await cache.claim_slot(k, "d", 2, 0.4)
    await asyncio.sleep(0.2)
    assert await cache.claim_slot(k, "a", 2, 0.4)  # renewed: a now outlives c
    await asyncio.sleep(0.3)  # c (a holder that died without releasing) has expired, a has not
    assert await cache.claim_slot(k, "d", 2, 0.4) and not await cache.claim_slot(k, "e", 2, 0.4)
    await cache.release_slot(k, "missing")  # releasing what is not held is harmless


async def test_publish_reaches_subscribers_of_that_channel_only(cache, unique):
    got: list[tuple[str, bytes]] = []
    ready = asyncio.Event()

    async def listen():
        agen = cache.subscribe([f"a:{unique}"])
        task = asyncio.ensure_future(agen.__anext__())
        await asyncio.sleep(0.2)  # let the subscription register (Redis needs a round trip)
        ready.set()
        got.append(await task)
        got.append(await agen.__anext__())
        await agen.aclose()

    listener = asyncio.create_task(listen())
    await ready.wait()
    await cache.publish(f"b:{unique}", b"other")
    await cache.publish(f"a:{unique}", b"one")
    await cache.publish(f"a:{unique}", b"two")
    await asyncio.wait_for(listener, 5)
    assert got == [(f"a:{unique}", b"one"), (f"a:{unique}", b"two")]


async def test_ping(cache):
    assert await cache.ping() >= 0


async def test_a_redis_that_stops_answering_is_unavailable_within_the_operation_timeout(monkeypatch):
    """Accepts the connection, reads, never replies (a stalled server): every operation, including the
    request path's incr_and_get, gives up after OPERATION_TIMEOUT instead of hanging the request."""
    import time

    import app.cache as cache_module
    from app.cache import CacheUnavailable

    monkeypatch.setattr(cache_module, "OPERATION_TIMEOUT", 0.3)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0")
    try:
        for op in (lambda: cache.get("k"), lambda: cache.incr_and_get("c", 1.0, "k"), lambda: cache.set("k", b"v")):
            started = time.monotonic()
            with pytest.raises(CacheUnavailable, match="no answer"):
                await op()
            assert time.monotonic() - started < 1.5
    finally:
        await cache.close()
        server.close()


def test_redis_commands_are_not_each_wrapped_in_a_task(redis_server):
    """redis-py runs every send through asyncio.wait_for (a new task) when the connection has a socket
    timeout, and its default is 5 s: ours must have none (the bound is `_guard`'s timeout)."""
    cache = RedisCache(redis_server.url)
    assert cache.client.connection_pool.connection_kwargs.get("socket_timeout") is None
