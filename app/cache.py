"""One cache + pub/sub interface with two implementations.

`REDIS_URL` set → `RedisCache` (shared by every replica); unset → `MemoryCache` (one process only).
Values are bytes; callers encode with msgspec. Both implementations pass the same tests.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError


class CacheUnavailable(RuntimeError):
    """The shared cache cannot be reached right now."""


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]: ...


class Cache(Protocol):
    kind: str

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...
    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None: ...
    async def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool: ...
    async def delete(self, *keys: str) -> int: ...
    async def incr(self, key: str, ttl: float | None = None) -> int: ...
    async def incr_and_get(self, counter: str, ttl: float, key: str) -> tuple[int, bytes | None]: ...
    async def claim_slot(self, key: str, member: str, limit: int, ttl: float) -> bool: ...
    async def release_slot(self, key: str, member: str) -> None: ...
    async def ttl(self, key: str) -> float | None: ...
    async def keys(self, pattern: str) -> list[str]: ...
    async def publish(self, channel: str, message: bytes) -> None: ...
    def subscribe(self, channels: Iterable[str]) -> AsyncIterator[tuple[str, bytes]]: ...
    async def ping(self) -> float: ...
    async def close(self) -> None: ...


class MemoryCache:
    """In-process dictionary with expiry, and in-process pub/sub over asyncio queues."""

    kind = "memory"

    def __init__(self, subscriber_queue_size: int = 10_000) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._subscribers: dict[str, set[asyncio.Queue[tuple[str, bytes]]]] = defaultdict(set)
        self._queue_size = subscriber_queue_size

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        return None if ttl is None else time.monotonic() + ttl

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self._live(k) for k in keys]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._data[key] = (value, self._expiry(ttl))

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        expires = self._expiry(ttl)
        for k, v in items.items():
            self._data[k] = (v, expires)

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        self._data[key] = (value, self._expiry(ttl))
        return True

    async def delete(self, *keys: str) -> int:
        return sum(1 for k in keys if self._data.pop(k, None) is not None)

    async def incr(self, key: str, ttl: float | None = None) -> int:
        current = self._live(key)
        if current is None:
            self._data[key] = (b"1", self._expiry(ttl))
            return 1
        value = int(current) + 1
        self._data[key] = (str(value).encode(), self._data[key][1])
        return value

    async def incr_and_get(self, counter: str, ttl: float, key: str) -> tuple[int, bytes | None]:
        return await self.incr(counter, ttl), self._live(key)

    async def claim_slot(self, key: str, member: str, limit: int, ttl: float) -> bool:
        now = time.monotonic()
        slots = {m: t for m, t in self._slots.get(key, {}).items() if t > now}
        if member not in slots and len(slots) >= limit:
            self._slots[key] = slots
            return False
        slots[member] = now + ttl
        self._slots[key] = slots
        return True

    async def release_slot(self, key: str, member: str) -> None:
        slots = self._slots.get(key)
        if slots is not None:
            slots.pop(member, None)
            if not slots:
                del self._slots[key]

    async def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        expires = self._data[key][1]
        return None if expires is None else max(0.0, expires - time.monotonic())

    async def keys(self, pattern: str) -> list[str]:
        return [k for k in list(self._data) if fnmatch.fnmatchcase(k, pattern) and self._live(k) is not None]

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in tuple(self._subscribers.get(channel, ())):
            if queue.full():  # a stalled subscriber loses its oldest message, never blocks the publisher
                queue.get_nowait()
            queue.put_nowait((channel, message))

    async def subscribe(self, channels: Iterable[str]) -> AsyncIterator[tuple[str, bytes]]:
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(self._queue_size)
        names = list(channels)
        for name in names:
            self._subscribers[name].add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            for name in names:
                self._subscribers[name].discard(queue)

    async def ping(self) -> float:
        return 0.0

    async def close(self) -> None:
        self._data.clear()


# KEYS[1] counter, KEYS[2] key; ARGV[1] the counter's time to live in ms, set when the counter is new
_INCR_AND_GET = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('GET', KEYS[2])}
"""


# KEYS[1] a sorted set of members scored by their expiry (ms, Redis's clock: replicas' clocks may
# differ); ARGV[1] member, ARGV[2] limit, ARGV[3] time to live in ms. 1 = claimed (or renewed), 0 = full.
_CLAIM_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
"""


OPERATION_TIMEOUT = 2.0  # seconds for one cache operation (connect, send and reply) before CacheUnavailable


class _Guard:
    """`async with`: the operation inside gets OPERATION_TIMEOUT, and Redis's errors (or its silence)
    come out as CacheUnavailable. A class, not @asynccontextmanager: it wraps every request's rate-limit
    command, and the generator-based form cost ~6 µs more per use."""

    __slots__ = ("_timeout",)

    async def __aenter__(self) -> None:
        self._timeout = asyncio.timeout(OPERATION_TIMEOUT)
        await self._timeout.__aenter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)  # type: ignore[arg-type]
        except TimeoutError:
            raise CacheUnavailable(f"redis: no answer within {OPERATION_TIMEOUT} s") from None
        if exc_type is not None and issubclass(exc_type, (RedisError, OSError)):
            raise CacheUnavailable(f"redis: {exc}") from exc
        return False


class RedisCache:
    """Redis: shared by all replicas. Errors surface as CacheUnavailable."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        # socket_timeout=None (redis-py's default is 5 s): with one, redis-py wraps every *send* in
        # asyncio.wait_for, a new task per command. The same bound comes from `_guard`'s asyncio.timeout
        # around each whole operation; redis-py drops a connection cancelled mid-reply.
        self.client = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=OPERATION_TIMEOUT,
                                              health_check_interval=10, retry_on_timeout=False)
        self._incr_and_get = self.client.register_script(_INCR_AND_GET)
        self._batch: list[tuple[str, str, int, asyncio.Future[list[Any]]]] = []
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # incr_and_get pipelines sent, and the calls they carried
        self.batched_calls = 0
        self._claim_slot = self.client.register_script(_CLAIM_SLOT)

    def _guard(self) -> _Guard:
        return _Guard()

    async def get(self, key: str) -> bytes | None:
        async with self._guard():
            return await self.client.get(key)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        async with self._guard():
            return await self.client.mget(keys)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        async with self._guard():
            await self.client.set(key, value, px=None if ttl is None else int(ttl * 1000))

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        if not items:
            return
        async with self._guard():
            if ttl is None:
                await self.client.mset(dict(items))
                return
            async with self.client.pipeline(transaction=False) as pipe:
                for k, v in items.items():
                    pipe.set(k, v, px=int(ttl * 1000))
                await pipe.execute()

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        async with self._guard():
            return bool(await self.client.set(key, value, nx=True, px=None if ttl is None else int(ttl * 1000)))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        async with self._guard():
            return int(await self.client.delete(*keys))

    async def incr(self, key: str, ttl: float | None = None) -> int:
        """Count; with `ttl`, a new counter expires `ttl` s after its first count. That is the rate
        limiter's command for requests without a session: it rides the batched `incr_and_get`."""
        if ttl is not None:
            return (await self.incr_and_get(key, ttl, key))[0]
        async with self._guard():
            return int(await self.client.incr(key))

    async def incr_and_get(self, counter: str, ttl: float, key: str) -> tuple[int, bytes | None]:
        """`incr(counter, ttl)` and `get(key)` in one command (one round trip: the request path's
        rate-limit count and session lookup together).

        Every rate-limited request makes this call, so calls made in the same event-loop turn go to
        Redis together, in one pipeline: one socket write and one read for the batch instead of one
        each (a write costs ~25 µs of system time on our VM; 32 concurrent clients batch several)."""
        async with self._guard():
            flight: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            self._batch.append((counter, key, int(ttl * 1000), flight))
            if len(self._batch) == 1:  # the first of this turn: send after the turn's other callers
                asyncio.get_running_loop().call_soon(self._send_batch)
            count, value = await flight
            return int(count), value

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(self, batch: list[tuple[str, str, int, asyncio.Future[list[Any]]]]) -> None:
        sha = self._incr_and_get.sha
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT):  # the callers give up then too (their guard)
                if len(batch) == 1:
                    counter, key, ttl_ms, _ = batch[0]
                    try:
                        results: list[Any] = [await self.client.evalsha(sha, 2, counter, key, ttl_ms)]
                    except NoScriptError as exc:
                        results = [exc]
                else:
                    pipe = self.client.pipeline(transaction=False)
                    for counter, key, ttl_ms, _ in batch:
                        pipe.evalsha(sha, 2, counter, key, ttl_ms)
                    results = await pipe.execute(raise_on_error=False)
                self.batches += 1
                self.batched_calls += len(batch)
                for i, (counter, key, ttl_ms, _) in enumerate(batch):
                    if isinstance(results[i], NoScriptError):  # a restarted or flushed Redis:
                        results[i] = await self._incr_and_get(keys=[counter, key], args=[ttl_ms])  # loads it
        except BaseException as exc:  # every waiter hears of the failure (each its own exception)
            why = f"no answer within {OPERATION_TIMEOUT} s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            for *_, flight in batch:
                if not flight.done():
                    flight.set_exception(CacheUnavailable(f"redis: {why}"))
            if not isinstance(exc, Exception):  # cancelled (the cache is closing): let it end the task
                raise
            return
        for (*_, flight), result in zip(batch, results, strict=True):
            if flight.done():  # its caller gave up (timeout, disconnect)
                continue
            if isinstance(result, BaseException):
                flight.set_exception(result)
            else:
                flight.set_result(result)

    async def claim_slot(self, key: str, member: str, limit: int, ttl: float) -> bool:
        """Take (or renew) one of `limit` slots under `key` for `member`, for `ttl` seconds — a counter
        shared by every replica whose entries expire by themselves if their holder dies."""
        async with self._guard():
            return bool(await self._claim_slot(keys=[key], args=[member, limit, int(ttl * 1000)]))

    async def release_slot(self, key: str, member: str) -> None:
        async with self._guard():
            await self.client.zrem(key, member)

    async def ttl(self, key: str) -> float | None:
        async with self._guard():
            ms = await self.client.pttl(key)
        return None if ms < 0 else ms / 1000

    async def keys(self, pattern: str) -> list[str]:
        async with self._guard():
            return [k.decode() async for k in self.client.scan_iter(match=pattern, count=500)]

    async def publish(self, channel: str, message: bytes) -> None:
        async with self._guard():
            await self.client.publish(channel, message)

    async def subscribe(self, channels: Iterable[str]) -> AsyncIterator[tuple[str, bytes]]:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        async with self._guard():
            await pubsub.subscribe(*channels)
        try:
            while True:
                async with self._guard():
                    msg = await pubsub.get_message(timeout=1.0)
                if msg is not None and msg["type"] == "message":
                    yield msg["channel"].decode(), msg["data"]
        finally:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass

    async def ping(self) -> float:
        started = time.perf_counter()
        async with self._guard():
            await self.client.ping()
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        await self.client.aclose()


def create_cache(redis_url: str | None) -> MemoryCache | RedisCache:
    return RedisCache(redis_url) if redis_url else MemoryCache()
