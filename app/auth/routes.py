"""HTTP routes: /api/auth/* (register, login, refresh, logout, sessions) and /api/user/* (profile, admin)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, delete, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.auth import service
from app.auth.guards import admin_only
from app.auth.models import AuthUser
from app.auth.schemas import (
    AdminUserOut, AdminUserPatch, AuthOut, DeleteAccountIn, LoginIn, PasswordChangeIn, ProfileOut, ProfilePatch,
    RefreshIn, RegisterIn, SessionOut, UserPage,
)
from app.context import AppContext
from app.net import client_ip

AuthRequest = Request[AuthUser, Any, Any]


def _client(request: Request[Any, Any, Any], ctx: AppContext) -> service.Client:
    ua = request.headers.get("user-agent")
    return service.Client(ip=client_ip(request.scope, ctx.settings.trusted_proxies),
                          user_agent=ua[:256] if ua else None)


# --- /api/auth ----------------------------------------------------------------------------------------

@post("/api/auth/register", status_code=HTTP_201_CREATED, tags=["auth"], security=[{}],
      summary="Create an account and log in")
async def register(request: Request[Any, Any, Any], ctx: AppContext, data: RegisterIn) -> AuthOut:
    return await service.register(ctx, data, _client(request, ctx))


@post("/api/auth/login", status_code=HTTP_200_OK, tags=["auth"], security=[{}],
      summary="Log in with email and password (failed attempts are limited per email and per address)")
async def login(request: Request[Any, Any, Any], ctx: AppContext, data: LoginIn) -> AuthOut:
    return await service.login(ctx, data.email, data.password, _client(request, ctx))


@post("/api/auth/refresh", status_code=HTTP_200_OK, tags=["auth"], security=[{}],
      summary="Trade a refresh token for a new pair (rotation; reuse revokes the session)")
async def refresh(request: Request[Any, Any, Any], ctx: AppContext, data: RefreshIn) -> AuthOut:
    return await service.refresh(ctx, data.refresh_token, _client(request, ctx))


@post("/api/auth/logout", status_code=HTTP_204_NO_CONTENT, tags=["auth"],
      summary="End the current session: its access and refresh tokens stop working")
async def logout(request: AuthRequest, ctx: AppContext) -> None:
    await service.logout(ctx, request.user)


@get("/api/auth/sessions", tags=["auth"], summary="The caller's live sessions")
async def sessions(request: AuthRequest, ctx: AppContext) -> list[SessionOut]:
    return await service.list_sessions(ctx, request.user)


@delete("/api/auth/sessions/{session_id:uuid}", status_code=HTTP_204_NO_CONTENT, tags=["auth"],
        summary="End one of the caller's own sessions")
async def end_session(request: AuthRequest, ctx: AppContext, session_id: uuid.UUID) -> None:
    await service.end_session(ctx, request.user, session_id)


# --- /api/user -----------------------------------------------------------------------------------------

@get("/api/user/me", tags=["user"], summary="The caller's profile")
async def me(request: AuthRequest, ctx: AppContext) -> ProfileOut:
    return await service.get_profile(ctx, request.user)


@patch("/api/user/me", tags=["user"], summary="Update display name, base currency, time zone, risk tolerance")
async def update_me(request: AuthRequest, ctx: AppContext, data: ProfilePatch) -> ProfileOut:
    return await service.update_profile(ctx, request.user, data)


@post("/api/user/me/password", status_code=HTTP_204_NO_CONTENT, tags=["user"],
      summary="Change the password; every other session ends")
async def change_password(request: AuthRequest, ctx: AppContext, data: PasswordChangeIn) -> None:
    await service.change_password(ctx, request.user, data.current_password, data.new_password)


@delete("/api/user/me", status_code=HTTP_204_NO_CONTENT, tags=["user"],
        summary="Delete the account and everything it owns (password required)")
async def delete_me(request: AuthRequest, ctx: AppContext, data: DeleteAccountIn) -> None:
    await service.delete_account(ctx, request.user, data.password)


@get("/api/user", guards=[admin_only], tags=["admin"], summary="All users, paginated (admin)")
async def list_users(
    ctx: AppContext,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    offset: Annotated[int, Parameter(ge=0, le=2**31 - 1)] = 0,  # beyond a bigint was a 500
) -> UserPage:
    return await service.list_users(ctx, limit, offset)


@patch("/api/user/{user_id:uuid}", guards=[admin_only], tags=["admin"],
       summary="Change a user's role or disable them (disabling ends all their sessions) (admin)")
async def admin_update_user(request: AuthRequest, ctx: AppContext, user_id: uuid.UUID,
                            data: AdminUserPatch) -> AdminUserOut:
    return await service.admin_update_user(ctx, request.user, user_id, data)


route_handlers = [register, login, refresh, logout, sessions, end_session, me, update_me, change_password,
                  delete_me, list_users, admin_update_user]
