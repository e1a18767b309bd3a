"""Access tokens: every claim verified, algorithm pinned."""

import base64
import json
import time
import uuid

import jwt
import pytest
from litestar.exceptions import NotAuthorizedException

from app.auth import tokens
from app.auth.tokens import SessionState
from app.config import load_settings
import os

SECRET = "unit-secret-" + "k" * 40


@pytest.fixture
def settings():
    return load_settings({"ENV": "test", "JWT_SECRET": SECRET, "ACCESS_TOKEN_TTL": "900"}, dotenv=os.devnull)


def _claims(settings, **over):
    now = int(time.time())
    c = {"sub": str(uuid.uuid4()), "sid": str(uuid.uuid4()), "typ": "access", "iat": now, "exp": now + 600,
         "iss": settings.jwt_issuer, "aud": settings.jwt_audience}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_issued_token_round_trips_with_all_claims(settings):
    uid, sid = uuid.uuid4(), uuid.uuid4()
    raw = tokens.issue_access_token(settings, uid, sid)
    assert jwt.get_unverified_header(raw)["alg"] == "HS256"
    payload = jwt.decode(raw, SECRET, algorithms=["HS256"], audience=settings.jwt_audience)
    assert set(tokens.REQUIRED_CLAIMS) <= set(payload)
    assert payload["exp"] - payload["iat"] == 900
    assert tokens.claims_of(tokens.decode_token(settings, raw)) == (uid, sid)


def test_lifetime_is_at_most_15_minutes():
    with pytest.raises(Exception, match="ACCESS_TOKEN_TTL"):
        load_settings({"ENV": "test", "ACCESS_TOKEN_TTL": "901"}, dotenv=os.devnull)


def test_alg_none_is_rejected(settings):
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(settings))}."
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(settings, forged)


def test_other_algorithms_are_rejected_even_with_the_right_key(settings):
    raw = jwt.encode(_claims(settings), SECRET, algorithm="HS512")
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(settings, raw)


@pytest.mark.parametrize("claim, value", [
    ("aud", "someone-else"), ("aud", ["wealth-terminal-api", "other"]), ("iss", "evil-issuer"),
    ("exp", int(time.time()) - 5), ("iat", int(time.time()) + 3600), ("typ", "refresh"),
    ("sub", "not-a-uuid"), ("sid", "not-a-uuid"),
])
def test_wrong_claims_are_rejected(settings, claim, value):
    raw = jwt.encode(_claims(settings, **{claim: value}), SECRET, algorithm="HS256")
    with pytest.raises(NotAuthorizedException):
        tokens.claims_of(tokens.decode_token(settings, raw))


@pytest.mark.parametrize("missing", tokens.REQUIRED_CLAIMS)
def test_every_claim_is_required(settings, missing):
    claims = _claims(settings)
    del claims[missing]
    raw = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(NotAuthorizedException):
        tokens.claims_of(tokens.decode_token(settings, raw))


def test_tampered_payload_and_wrong_key_are_rejected(settings):
    raw = tokens.issue_access_token(settings, uuid.uuid4(), uuid.uuid4())
    head, payload, sig = raw.split(".")
    other = _b64({**json.loads(base64.urlsafe_b64decode(payload + "==")), "sub": str(uuid.uuid4())})
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(settings, f"{head}.{other}.{sig}")
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(settings, jwt.encode(_claims(settings), "another-secret-" + "z" * 40, algorithm="HS256"))
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(settings, "garbage")


def test_session_state_liveness_and_user_matching():
    uid, sid = uuid.uuid4(), uuid.uuid4()
    live = SessionState(str(uid), "a@b.co", "user", False, False, time.time() + 60)
    assert live.live and not tokens.is_revoked(live)
    assert tokens.user_for(live, uid, sid).session_id == sid
    assert tokens.user_for(live, uuid.uuid4(), sid) is None  # someone else's session id in the token
    assert tokens.user_for(SessionState(str(uid), "a@b.co", "user", True, False, time.time() + 60), uid, sid) is None
    assert tokens.is_revoked(SessionState(str(uid), "a@b.co", "user", False, True, time.time() + 60))
    assert tokens.is_revoked(SessionState(str(uid), "a@b.co", "user", False, False, time.time() - 1))
    assert tokens.user_for(tokens.GONE, uid, sid) is None and tokens.is_revoked(tokens.GONE)


def test_remembered_verification_still_expires(settings):
    """VerifiedToken skips re-verifying an identical token string, but never past its exp."""
    claims = _claims(settings, exp=int(time.time()) + 1)
    raw = jwt.encode(claims, SECRET, algorithm="HS256")
    assert tokens.claims_of(tokens.decode_token(settings, raw))[0] == uuid.UUID(claims["sub"])
    assert tokens.decode_token(settings, raw) is tokens.decode_token(settings, raw)  # remembered
    time.sleep(1.2)
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(settings, raw)


def test_remembered_verification_is_per_key_and_audience(settings):
    raw = tokens.issue_access_token(settings, uuid.uuid4(), uuid.uuid4())
    tokens.decode_token(settings, raw)
    other = load_settings({"ENV": "test", "JWT_SECRET": "z" * 40}, dotenv=os.devnull)
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(other, raw)
    elsewhere = load_settings({"ENV": "test", "JWT_SECRET": SECRET, "JWT_AUDIENCE": "other-api"}, dotenv=os.devnull)
    with pytest.raises(NotAuthorizedException):
        tokens.decode_token(elsewhere, raw)
