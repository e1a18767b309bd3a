"""REST endpoints under /api/markets."""

from __future__ import annotations

route_handlers: list = []
