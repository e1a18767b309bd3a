"""Request and response bodies of the auth & user service. Request bodies refuse unknown fields, so
`role`, `id` or anything else not listed is a 400 (no mass assignment)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

Email = Annotated[str, Meta(min_length=3, max_length=254)]
# Generous schema bound: the policy (8..256 characters) is checked with a clear message.
Password = Annotated[str, Meta(min_length=1, max_length=1024)]
DisplayName = Annotated[str, Meta(max_length=100)]
RiskTolerance = Literal["conservative", "moderate", "aggressive"]
Role = Literal["user", "admin"]


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    display_name: DisplayName | None = None


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class RefreshIn(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=512)]


class PasswordChangeIn(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password


class DeleteAccountIn(msgspec.Struct, forbid_unknown_fields=True):
    password: Password


class ProfilePatch(msgspec.Struct, forbid_unknown_fields=True):
    display_name: DisplayName | None | UnsetType = UNSET
    base_currency: Annotated[str, Meta(pattern=r"^[A-Za-z]{3}$")] | UnsetType = UNSET
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] | UnsetType = UNSET
    risk_tolerance: RiskTolerance | UnsetType = UNSET


class AdminUserPatch(msgspec.Struct, forbid_unknown_fields=True):
    role: Role | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET


class UserOut(msgspec.Struct):
    id: uuid.UUID
    email: str
    display_name: str | None
    role: str
    created_at: datetime


class AuthOut(msgspec.Struct):
    user: UserOut
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class SessionOut(msgspec.Struct):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool


class ProfileOut(msgspec.Struct):
    id: uuid.UUID
    email: str
    display_name: str | None
    role: str
    base_currency: str
    timezone: str
    risk_tolerance: str
    created_at: datetime


class AdminUserOut(msgspec.Struct):
    id: uuid.UUID
    email: str
    display_name: str | None
    role: str
    disabled: bool
    created_at: datetime


class UserPage(msgspec.Struct):
    items: list[AdminUserOut]
    total: int
    limit: int
    offset: int
