"""The authenticated caller, as every handler sees it in `request.user`."""

from __future__ import annotations

import uuid

import msgspec

ROLES = ("user", "admin")


class AuthUser(msgspec.Struct, frozen=True):
    """Set by the JWT middleware for every authenticated request (and by `authenticate_token` for the
    WebSocket). `role` is the user's current role, not the one at token issue time."""

    id: uuid.UUID
    email: str
    role: str
    session_id: uuid.UUID

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
