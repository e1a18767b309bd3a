"""The market service: owns the feed, the ingest pipeline and the fan-out (grows with the issue)."""

from __future__ import annotations

import time
from typing import Any

from app.context import AppContext


class MarketService:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.started = time.time()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"feed": self.settings.market_feed, "state": "off" if self.settings.market_feed == "off" else "starting",
                "ingesting": False, "events_per_second": 0.0, "lag_ms": None, "queue_depth": 0,
                "dropped": 0, "rejected": 0, "ws_clients": 0}
