"""The per-symbol quote-cache entry (pure: types, keys, derived fields; no I/O).

The ingesting replica keeps one `Snapshot` per symbol in the cache under `snapshot_key(symbol)`
(msgspec JSON), updated as events arrive; every replica reads it. Quote reads never touch the
hypertables.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import msgspec

SNAPSHOT_PREFIX = "market:snap:"


def snapshot_key(symbol: str) -> str:
    return SNAPSHOT_PREFIX + symbol


class Snapshot(msgspec.Struct, kw_only=True, omit_defaults=True):
    symbol: str
    price: Decimal | None = None  # last trade
    size: int | None = None
    trade_ts: int | None = None  # ms since the epoch
    bid: Decimal | None = None
    ask: Decimal | None = None
    bid_size: int | None = None
    ask_size: int | None = None
    quote_ts: int | None = None
    day: str | None = None  # 'YYYY-MM-DD' (UTC) the day statistics belong to
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    volume: int = 0
    prev_close: Decimal | None = None
    updated: int = 0  # ms since the epoch of the last change

    @property
    def change(self) -> Decimal | None:
        if self.price is None or self.prev_close is None:
            return None
        return self.price - self.prev_close

    @property
    def change_pct(self) -> Decimal | None:
        if self.price is None or not self.prev_close:
            return None
        return ((self.price - self.prev_close) / self.prev_close * 100).quantize(Decimal("0.0001"))

    @property
    def as_of(self) -> datetime:
        ms = self.trade_ts or self.quote_ts or self.updated
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


snapshot_encoder = msgspec.json.Encoder()
snapshot_decoder = msgspec.json.Decoder(Snapshot)


def decode_snapshot(raw: bytes | None) -> Snapshot | None:
    if raw is None:
        return None
    try:
        return snapshot_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
