"""A small per-process memo with expiry and a size bound, for the read paths that keep recent results
(prices, asset currencies, daily series, the optimizer's symbol checks). Not shared between replicas:
callers key it by something that changes when the truth does (a ledger version, a newest bar) or
accept its time to live as the staleness bound."""

from __future__ import annotations

import asyncio
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
        self._inflight: dict[K, asyncio.Future[Mapping[K, V]]] = {}

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

    def expires_at(self, keys: Iterable[K]) -> float:
        """The earliest `time.monotonic()` at which one of `keys` expires (-inf if one is absent)."""
        earliest = float("inf")
        for key in keys:
            item = self._items.get(key)
            if item is None:
                return float("-inf")
            earliest = min(earliest, item[0])
        return earliest

    def put(self, key: K, value: V, ttl: float | None = None, *, now: float | None = None) -> None:
        """Keep `value` for `ttl` seconds (the memo's by default) from `now` (time.monotonic())."""
        self._items[key] = ((time.monotonic() if now is None else now) + (self.ttl if ttl is None else ttl), value)
        self._items.move_to_end(key)
        if self.size is not None:
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    async def get_many(self, keys: Iterable[K], fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]],
                       ttl_of: Callable[[V], float] | None = None) -> dict[K, V]:
        """The memoized values of `keys`; the missing ones come from one `fetch(missing)` call and are
        kept (for `ttl_of(value)` seconds when given). Keys that `fetch` does not return are absent.

        Single flight: a key already being fetched by another caller is awaited, not fetched again —
        when an entry expires under load, every concurrent request used to miss at once and send its
        own fetch (32 identical price queries every 5 s: a 150 ms stall in the portfolio benchmark)."""
        out: dict[K, V] = {}
        missing: list[K] = []
        waits: dict[asyncio.Future[Mapping[K, V]], list[K]] = {}
        for key in keys:
            value = self.get(key)
            if value is not None:
                out[key] = value
            elif (flight := self._inflight.get(key)) is not None:
                waits.setdefault(flight, []).append(key)
            else:
                missing.append(key)
        if missing:
            out.update(await self._fetch(missing, fetch, ttl_of))
        for flight, wanted in waits.items():
            await asyncio.wait([flight])  # never raises for the flight's own outcome
            if flight.cancelled():  # its caller went away mid-fetch: fetch what we still need ourselves
                out.update(await self._fetch([k for k in wanted if k not in out], fetch, ttl_of))
                continue
            got = flight.result()  # re-raises the fetch's error, as our own fetch would have
            out.update((k, got[k]) for k in wanted if k in got)
        return out

    async def _fetch(self, keys: list[K], fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]],
                     ttl_of: Callable[[V], float] | None) -> Mapping[K, V]:
        flight: asyncio.Future[Mapping[K, V]] = asyncio.get_running_loop().create_future()
        flight.add_done_callback(_consume)
        for key in keys:
            self._inflight[key] = flight
        try:
            got = await fetch(keys)
            # One clock reading for the whole batch: entries fetched together expire together. With a
            # reading per entry they expired microseconds apart, the next callers refetched them in ever
            # smaller pieces, and a group of 20 live prices ended up refetched ~20 times as often.
            now = time.monotonic()
            for key, value in got.items():
                self.put(key, value, None if ttl_of is None else ttl_of(value), now=now)
            flight.set_result(got)
            return got
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            for key in keys:
                if self._inflight.get(key) is flight:
                    del self._inflight[key]

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _consume(flight: asyncio.Future) -> None:
    """Mark a failed flight's error as seen: the fetching caller raises it already."""
    if not flight.cancelled():
        flight.exception()
