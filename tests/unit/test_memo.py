"""app/memo.py: expiry, the size bound (least recently used first), get_many's one fetch, single flight."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.memo import TTLMemo


def test_entries_expire_per_memo_or_per_entry() -> None:
    memo: TTLMemo[str, int] = TTLMemo(ttl=0.2)
    memo.put("a", 1)
    memo.put("b", 2, ttl=10)
    assert memo.get("a") == 1 and memo.get("missing") is None
    time.sleep(0.25)
    assert memo.get("a") is None and memo.get("b") == 2 and len(memo) == 1


def test_the_least_recently_used_goes_first() -> None:
    memo: TTLMemo[str, int] = TTLMemo(size=2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # a is now the most recently used
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and memo.get("c") == 3


async def test_get_many_fetches_only_the_missing_once() -> None:
    memo: TTLMemo[str, int] = TTLMemo(ttl=10)
    calls: list[list[str]] = []

    async def fetch(keys: list[str]) -> dict[str, int]:
        calls.append(keys)
        return {k: len(k) for k in keys if k != "unknown"}

    assert await memo.get_many(["a", "bb", "unknown"], fetch, ttl_of=lambda v: 10.0 * v) == {"a": 1, "bb": 2}
    assert await memo.get_many(["bb", "ccc", "unknown"], fetch) == {"bb": 2, "ccc": 3}
    assert calls == [["a", "bb", "unknown"], ["ccc", "unknown"]]  # unknown keys are asked every time


async def test_concurrent_misses_share_one_fetch() -> None:
    memo: TTLMemo[str, int] = TTLMemo(ttl=10)
    calls: list[list[str]] = []
    gate = asyncio.Event()

    async def fetch(keys: list[str]) -> dict[str, int]:
        calls.append(keys)
        await gate.wait()
        return {k: len(k) for k in keys if k != "unknown"}

    first = asyncio.create_task(memo.get_many(["a", "bb", "unknown"], fetch))
    await asyncio.sleep(0)
    others = [asyncio.create_task(memo.get_many(["bb", "a", "ccc", "unknown"], fetch)) for _ in range(31)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == {"a": 1, "bb": 2}
    assert await asyncio.gather(*others) == [{"a": 1, "bb": 2, "ccc": 3}] * 31
    # one fetch for the first caller's keys, one for the key only the others wanted (the first of them)
    assert calls == [["a", "bb", "unknown"], ["ccc"]]


async def test_a_failed_fetch_fails_its_waiters_and_is_not_kept() -> None:
    memo: TTLMemo[str, int] = TTLMemo(ttl=10)
    gate = asyncio.Event()

    async def broken(keys: list[str]) -> dict[str, int]:
        await gate.wait()
        raise ConnectionError("cache down")

    tasks = [asyncio.create_task(memo.get_many(["a"], broken)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    for t in tasks:
        with pytest.raises(ConnectionError):
            await t

    async def fine(keys: list[str]) -> dict[str, int]:
        return {k: 7 for k in keys}

    assert await memo.get_many(["a"], fine) == {"a": 7}  # the next caller fetches again


async def test_a_waiter_fetches_itself_when_the_fetching_caller_is_cancelled() -> None:
    memo: TTLMemo[str, int] = TTLMemo(ttl=10)
    calls: list[list[str]] = []

    async def slow(keys: list[str]) -> dict[str, int]:
        calls.append(keys)
        await asyncio.sleep(0.05 if len(calls) == 1 else 0)
        return {k: 1 for k in keys}

    leader = asyncio.create_task(memo.get_many(["a"], slow))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(memo.get_many(["a"], slow))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await waiter == {"a": 1}
    assert calls == [["a"], ["a"]]


async def test_a_batch_expires_together() -> None:
    """Entries fetched in one call share one expiry: the next miss refetches them in one call too."""
    memo: TTLMemo[str, int] = TTLMemo()
    calls: list[list[str]] = []

    async def fetch(keys: list[str]) -> dict[str, int]:
        calls.append(keys)
        return {k: 1 for k in keys}

    keys = [f"k{i}" for i in range(200)]
    await memo.get_many(keys, fetch, ttl_of=lambda v: 0.05)
    assert len({memo.expires_at([k]) for k in keys}) == 1
    await asyncio.sleep(0.06)
    await memo.get_many(keys, fetch, ttl_of=lambda v: 0.05)
    assert calls == [keys, keys]
