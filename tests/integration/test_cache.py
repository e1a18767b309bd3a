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
