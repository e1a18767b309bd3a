"""When each session was last used: remembered in memory on every authenticated request and written to
`sessions.last_used_at` in one statement every SESSION_ACTIVITY_FLUSH seconds (and at shutdown), so the
sessions list is accurate to that interval without a database write per request."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

from app.db import Database, sql_file

log = logging.getLogger("app.auth")


class SessionActivity:
    """`touch(session_id)` on each request (a dict store); `flush(db)` writes what was seen."""

    def __init__(self) -> None:
        self._seen: dict[uuid.UUID, float] = {}
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None

    def touch(self, session_id: uuid.UUID) -> None:
        self._seen[session_id] = time.time()

    def pending(self) -> int:
        return len(self._seen)

    def status(self) -> dict[str, object]:
        """For the system status page (ctx.services). "retrying" after a failed write is shown but not
        raised as a problem: the database check already reports the outage behind it."""
        return {"state": "retrying" if self.last_error else "ok", "pending": self.pending(),
                "written": self.written, "failures": self.failures, "last_error": self.last_error}

    async def flush(self, db: Database) -> int:
        if not self._seen:
            return 0
        seen, self._seen = self._seen, {}
        ids = sorted(seen)  # rows locked in one order: two replicas' flushes cannot deadlock
        try:
            # GREATEST: a refresh on another replica, or an older flush arriving late, never moves it back
            await db.execute(sql_file("auth")["record_session_activity"], ids,
                             [datetime.fromtimestamp(seen[i], UTC) for i in ids])
        except Exception as exc:
            for sid, at in seen.items():  # keep them for the next flush (newest time wins)
                self._seen[sid] = max(at, self._seen.get(sid, 0.0))
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        self.written += len(ids)
        self.last_error = None
        return len(ids)

    async def run(self, db: Database, interval: float) -> None:
        """Flush every `interval` seconds until cancelled; a failed flush is retried next time."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(db)
            except Exception:  # noqa: BLE001 - the database may be away for a while; try again later
                log.warning("recording session activity failed; retrying", exc_info=True,
                            extra={"sessions": self.pending()})
