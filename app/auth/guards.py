"""Role guards. Authentication itself is global (see app/auth/security.py)."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.auth.models import AuthUser
from app.db import sql_file
from app.errors import Forbidden, Unauthorized


async def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """403 unless the caller is an admin *now*: the role is read from the database (admin routes are
    rare), so a promotion or demotion applies to the very next request, whatever the token says."""
    user = connection.scope.get("user")
    if not isinstance(user, AuthUser):
        raise Unauthorized("authentication required", headers={"WWW-Authenticate": "Bearer"})
    role = await connection.app.state.ctx.db.fetchval(sql_file("auth")["current_role"], user.id)
    if role != "admin":
        raise Forbidden("this action requires the admin role")
