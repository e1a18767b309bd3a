"""Password hashing (72-byte handling, pre-hash) and the password policy."""

import bcrypt
import pytest

from app.auth import passwords

ROUNDS = 4


def test_hash_and_verify_round_trip():
    h = passwords.hash_password("correct horse battery staple", ROUNDS)
    assert h.startswith("$2b$04$")
    assert passwords.verify_password("correct horse battery staple", h)
    assert not passwords.verify_password("correct horse battery stapl", h)


def test_passwords_longer_than_72_bytes_differ_after_byte_72():
    """Plain bcrypt would ignore everything after byte 72; the pre-hash makes every byte count."""
    base = "x" * 100
    h = passwords.hash_password(base + "A", ROUNDS)
    assert passwords.verify_password(base + "A", h)
    assert not passwords.verify_password(base + "B", h)
    # Multi-byte characters: 30 characters of 4 bytes each are 120 bytes.
    emoji = "\U0001F600" * 30
    h2 = passwords.hash_password(emoji + "1", ROUNDS)
    assert passwords.verify_password(emoji + "1", h2) and not passwords.verify_password(emoji + "2", h2)


def test_prehash_is_short_ascii_without_nul_and_is_what_bcrypt_sees():
    pre = passwords.prehash("p" * 1000)
    assert len(pre) == 44 and b"\x00" not in pre and pre.isascii()
    h = passwords.hash_password("p" * 1000, ROUNDS)
    assert bcrypt.checkpw(pre, h.encode())


def test_unicode_is_normalized_before_hashing():
    composed, decomposed = "caf\u00e9-password", "cafe\u0301-password"
    h = passwords.hash_password(composed, ROUNDS)
    assert passwords.verify_password(decomposed, h)


def test_verify_with_a_garbage_hash_is_false_not_an_error():
    assert passwords.verify_password("whatever", "not-a-bcrypt-hash") is False


def test_needs_rehash_when_cost_is_below_the_setting():
    h = passwords.hash_password("some long password", ROUNDS)
    assert passwords.hash_cost(h) == 4
    assert passwords.needs_rehash(h, 12) and not passwords.needs_rehash(h, 4)


def test_dummy_hash_never_verifies_a_guess():
    dummy = passwords.make_dummy_hash(ROUNDS)
    assert not passwords.verify_password("password123", dummy)


@pytest.mark.parametrize("pw, reason", [
    ("short", "at least 8"),
    ("1234567", "at least 8"),
    ("x" * 257 + "y", "at most 256"),
    ("password", "too common"),
    ("Password1", "too common"),
    ("QWERTYUIOP", "too common"),
    ("iloveyou", "too common"),
    ("aaaaaaaaaaaa", "repeated"),
    ("someone@example.com", "email"),
    ("someone", "at least 8"),
])
def test_policy_refuses(pw, reason):
    why = passwords.policy_violation(pw, "someone@example.com")
    assert why is not None and reason in why


@pytest.mark.parametrize("pw", [
    "tr0ub4dor&3-is-fine",
    "correct horse battery staple",
    "x" * 63 + "y",  # 64 characters
    "\u00fcberlange-pa\u00df-phrase",
])
def test_policy_accepts_reasonable_passwords(pw):
    assert passwords.policy_violation(pw, "someone@example.com") is None


def test_policy_accepts_256_characters_and_no_composition_rules():
    assert passwords.policy_violation("abcdefgh" * 32) is None  # 256 characters
    assert passwords.policy_violation("alllowercaseletters") is None


def test_common_password_list_is_shipped_and_large():
    common = passwords.common_passwords()
    assert len(common) > 5000
    assert "password" in common and "12345678" in common
    assert all(len(p) >= 8 for p in common)
