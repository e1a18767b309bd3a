"""What the lifespan builds and handlers use: settings, the database, the cache, domain services."""

from __future__ import annotations

import time
from typing import Any

from app.cache import MemoryCache, RedisCache
from app.config import Settings
from app.db import Database


class AppContext:
    """A plain class on purpose: Litestar passes it through dependency injection untouched."""

    def __init__(self, settings: Settings, db: Database, cache: MemoryCache | RedisCache) -> None:
        self.settings = settings
        self.db = db
        self.cache = cache
        self.started_at = time.time()
        # Domain-owned long-running services (market feed, optimizer pool …) by name, for status pages.
        self.services: dict[str, Any] = {}
