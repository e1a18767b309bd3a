"""Which paths are public: every exclude pattern is anchored and /api/ stays protected."""

import re

import pytest

from app.auth.security import AUTH_EXCLUDE, RATE_LIMIT_EXCLUDE

AUTH = re.compile("|".join(AUTH_EXCLUDE))


def test_every_pattern_is_anchored():
    assert all(p.startswith("^") for p in AUTH_EXCLUDE + RATE_LIMIT_EXCLUDE)


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/schema/openapi.json", "/metrics",
                                  "/market-feed", "/api/auth/register", "/api/auth/login", "/api/auth/refresh"])
def test_public_paths(path):
    assert AUTH.findall(path)


@pytest.mark.parametrize("path", ["/api/user/me", "/api/auth/logout", "/api/auth/sessions", "/api/auth/login/x",
                                  "/api/auth/loginx", "/api/x/api/auth/login", "/api/portfolios",
                                  "/api/user/me/password", "/api/auth/register/../../user"])
def test_protected_paths(path):
    assert not AUTH.findall(path)
