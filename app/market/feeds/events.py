"""Typed market events (Polygon's wire format) and the frame decoder (pure, no I/O).

Polygon frames are JSON arrays of events tagged by `ev`. `FrameDecoder.decode(frame)` returns the
valid events and counts the rejected ones: malformed JSON, unknown `ev`, missing fields, NaN or
non-positive prices, absurd sizes or timestamps (crossed quotes and inconsistent bars are rejected
by the pipeline, which looks at each event's type anyway). The fast path decodes a whole frame with one
typed msgspec call; only a frame with a bad event falls back to event-by-event decoding.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec
from msgspec import Meta

# Bounds that no real US equity event exceeds; anything outside is rejected as malformed.
Price = Annotated[float, Meta(gt=0, lt=10_000_000)]
Size = Annotated[int, Meta(ge=0, le=1_000_000_000)]
Volume = Annotated[float, Meta(ge=0, lt=1e13)]
# ms since the epoch, between 2000-01-01 and 2100-01-01
Millis = Annotated[int, Meta(ge=946_684_800_000, lt=4_102_444_800_000)]
Symbol = Annotated[str, Meta(min_length=1, max_length=24)]


class Trade(msgspec.Struct, tag_field="ev", tag="T", array_like=False, gc=False):
    sym: Symbol
    p: Price
    s: Size
    t: Millis
    x: int | None = None
    i: str | None = None
    z: int | None = None
    q: int | None = None
    # `c` (condition codes) and `trfi`/`trft` are not stored: skipped by the decoder without allocating.


class Quote(msgspec.Struct, tag_field="ev", tag="Q", gc=False):
    sym: Symbol
    bp: Annotated[float, Meta(ge=0, lt=10_000_000)]
    ap: Annotated[float, Meta(ge=0, lt=10_000_000)]
    t: Millis
    bs: Size = 0
    as_: Size = msgspec.field(default=0, name="as")
    bx: int | None = None
    ax: int | None = None
    c: int | None = None
    q: int | None = None
    z: int | None = None


class MinuteAgg(msgspec.Struct, tag_field="ev", tag="AM", gc=False):
    sym: Symbol
    o: Price
    h: Price
    l: Price  # noqa: E741 - Polygon's name
    c: Price
    v: Volume
    s: Millis
    e: Millis | None = None
    vw: float | None = None
    av: Volume | None = None
    op: float | None = None
    a: float | None = None
    z: float | None = None
    n: int | None = None


class SecondAgg(MinuteAgg, tag="A"):
    """Per-second aggregates: accepted (a valid Polygon event) but not stored."""


class Status(msgspec.Struct, tag_field="ev", tag="status", gc=False):
    status: str
    message: str = ""


Event = Union[Trade, Quote, MinuteAgg, SecondAgg, Status]

_frame_decoder = msgspec.json.Decoder(list[Event])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_event_decoder = msgspec.json.Decoder(Event)


class FrameDecoder:
    """Decode frames; counts `rejected` events and keeps the last rejection reason."""

    def __init__(self) -> None:
        self.rejected = 0
        self.last_error: str | None = None

    def decode(self, frame: bytes | str) -> list[Event]:
        try:
            events = _frame_decoder.decode(frame)
        except msgspec.ValidationError:
            return self._slow(frame)
        except msgspec.DecodeError as exc:  # not JSON at all: the whole frame is one rejection
            self.rejected += 1
            self.last_error = f"malformed frame: {exc}"
            return []
        return events

    def _slow(self, frame: bytes | str) -> list[Event]:
        try:
            raws = _raw_list_decoder.decode(frame)
        except msgspec.DecodeError as exc:  # valid JSON but not an array
            self.rejected += 1
            self.last_error = f"frame is not an array of events: {exc}"
            return []
        out: list[Event] = []
        for raw in raws:
            try:
                out.append(_event_decoder.decode(raw))
            except msgspec.DecodeError as exc:
                self.rejected += 1
                self.last_error = f"bad event: {exc}"
        return out
