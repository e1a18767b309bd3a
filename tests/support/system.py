"""Helpers for the system domain's subprocess tests (shutdown, faults, scale-out)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import httpx

from tests.support.services import AppProcess


class ServeProcess(AppProcess):
    """`python -m app serve` with extra domain modules appended to DOMAIN_MODULES (test-only routes)."""

    def __init__(self, env: dict[str, str], extra_domains: tuple[str, ...] = (), port: int | None = None) -> None:
        # One optimizer worker (it imports Riskfolio at start): these tests need no more, and the
        # machine is shared with the rest of the suite.
        super().__init__({"OPTIMIZER_WORKERS": "1", **env}, port)
        self.extra_domains = extra_domains

    def command(self) -> list[str]:
        if not self.extra_domains:
            return super().command()
        code = ("import sys, app.asgi as a; a.DOMAIN_MODULES.extend(sys.argv[1:]); "
                "from app.__main__ import main; main(['serve'])")
        return [sys.executable, "-c", code, *self.extra_domains]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2, what: str = "condition") -> float:
    """Poll until predicate() is true; returns the seconds it took, or fails naming what was awaited."""
    started = time.monotonic()
    last_exc: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception as exc:  # e.g. connection refused while something restarts
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def register_sync(base_url: str, *, admin_database_url: str | None = None) -> dict[str, str]:
    """Register a user on a running app (optionally promoted to admin, then logged in again so the
    token's session carries the role); returns its Authorization header."""
    import asyncio
    import uuid

    from tests.support.auth import make_admin

    email = f"sys-{uuid.uuid4().hex[:12]}@example.com"
    password = f"pw-{uuid.uuid4().hex}"
    with httpx.Client(base_url=base_url, timeout=10) as client:
        r = client.post("/api/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        token = r.json()["access_token"]
        if admin_database_url:
            asyncio.run(make_admin(admin_database_url, r.json()["user"]["id"]))
            r = client.post("/api/auth/login", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
    return {"Authorization": f"Bearer {token}"}
