"""A small per-process memo with expiry and a size bound, for the read paths that keep recent results
(prices, asset currencies, daily series, the optimizer's symbol checks). Not shared between replicas:
callers key it by something that changes when the truth does (a ledger version, a newest bar) or
accept its time to live as the staleness bound."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLMemo(Generic[K, V]):
    """Entries expire `ttl` seconds after they were put (per entry if `put` says so); with `size`, at
    most that many are kept, the least recently used dropped first."""

    def __init__(self, ttl: float = float("inf"), size: int | None = None) -> None:
        self.ttl = ttl
        self.size = size
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._items[key]
            return None
        if self.size is not None:
            self._items.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        self._items[key] = (time.monotonic() + (self.ttl if ttl is None else ttl), value)
        self._items.move_to_end(key)
        if self.size is not None:
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    async def get_many(self, keys: Iterable[K], fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]],
                       ttl_of: Callable[[V], float] | None = None) -> dict[K, V]:
        """The memoized values of `keys`; the missing ones come from one `fetch(missing)` call and are
        kept (for `ttl_of(value)` seconds when given). Keys that `fetch` does not return are absent."""
        out: dict[K, V] = {}
        missing: list[K] = []
        for key in keys:
            value = self.get(key)
            if value is None:
                missing.append(key)
            else:
                out[key] = value
        if missing:
            for key, value in (await fetch(missing)).items():
                out[key] = value
                self.put(key, value, None if ttl_of is None else ttl_of(value))
        return out

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
