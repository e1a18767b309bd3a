"""Helpers for tests of every domain: a registered user with tokens, and promotion to admin."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg


@dataclass
class TestUser:
    __test__ = False  # not a pytest test class

    id: uuid.UUID
    email: str
    password: str
    access_token: str
    refresh_token: str
    headers: dict[str, str] = field(default_factory=dict)


async def register_user(client: Any, *, email: str | None = None, password: str | None = None) -> TestUser:
    """Register a fresh user through the API (201 asserted) and return its credentials and tokens."""
    email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
    password = password or f"pw-{uuid.uuid4().hex}"
    r = await client.post("/api/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    body = r.json()
    token = body["access_token"]
    return TestUser(id=uuid.UUID(body["user"]["id"]), email=body["user"]["email"], password=password,
                    access_token=token, refresh_token=body["refresh_token"],
                    headers={"Authorization": f"Bearer {token}"})


async def make_admin(database_url: str, user_id: uuid.UUID | str) -> None:
    """Give a user the admin role directly in the database. Takes effect on the next request: the
    `admin_only` guard reads the role from the database."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE users SET role = 'admin' WHERE id = $1", uuid.UUID(str(user_id)))
    finally:
        await conn.close()
