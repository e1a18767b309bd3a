"""app/memo.py: expiry, the size bound (least recently used first), and get_many's one fetch."""

from __future__ import annotations

import time

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
