"""Password hashing and the password policy. Pure apart from reading the shipped common-password list.

bcrypt only reads the first 72 bytes of its input (and bcrypt >= 5 refuses longer input), and a
password of multi-byte characters reaches 72 bytes well before 72 characters. So every password is
first normalised (Unicode NFKC, so that the same characters typed on different keyboards match), then
pre-hashed: `base64(HMAC-SHA256(key=PREHASH_KEY, msg=utf8(password)))` — 44 ASCII bytes, no NUL
byte — and that is what bcrypt hashes. Every byte of a long password therefore counts. The HMAC key is
a fixed domain-separation constant, not a secret: rotating JWT_SECRET must not lock users out, and
the HMAC (unlike a bare SHA-256) keeps these bcrypt inputs from matching bcrypt hashes of plain
SHA-256 digests leaked elsewhere ("hash shucking").

The functions here are CPU-bound (bcrypt at cost 12 takes ~0.25 s): call them through
`asyncio.to_thread`, never on the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata
from functools import lru_cache
from pathlib import Path

import bcrypt

PREHASH_KEY = b"wealth-terminal/bcrypt-prehash/v1"
MIN_LENGTH = 8
MAX_LENGTH = 256  # characters; well above the 64 the policy promises, low enough to bound the work
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")


def normalize(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def prehash(password: str) -> bytes:
    digest = hmac.new(PREHASH_KEY, normalize(password).encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.b64encode(digest)


def hash_password(password: str, rounds: int) -> str:
    return bcrypt.hashpw(prehash(password), bcrypt.gensalt(rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(prehash(password), password_hash.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return False


def hash_cost(password_hash: str) -> int | None:
    """The bcrypt cost of a stored hash (`$2b$12$…` → 12)."""
    parts = password_hash.split("$")
    try:
        return int(parts[2])
    except (IndexError, ValueError):
        return None


def needs_rehash(password_hash: str, rounds: int) -> bool:
    cost = hash_cost(password_hash)
    return cost is None or cost < rounds


def make_dummy_hash(rounds: int) -> str:
    """A hash of a random password, to verify against when the email is unknown (equal timing)."""
    return hash_password(secrets.token_urlsafe(24), rounds)


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


def policy_violation(password: str, email: str | None = None) -> str | None:
    """Why this password is refused, or None. Length in characters; no composition rules (NIST 800-63B)."""
    pw = normalize(password)
    if len(pw) < MIN_LENGTH:
        return f"password must be at least {MIN_LENGTH} characters"
    if len(pw) > MAX_LENGTH:
        return f"password must be at most {MAX_LENGTH} characters"
    lowered = pw.lower()
    if lowered in common_passwords():
        return "password is too common; choose a less guessable one"
    if len(set(pw)) == 1:
        return "password must not be one repeated character"
    if email:
        local = email.lower().split("@", 1)[0]
        if lowered in (email.lower(), local):
            return "password must not be your email address"
    return None
