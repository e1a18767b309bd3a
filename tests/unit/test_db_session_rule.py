"""The rule behind the pool's cheap reset (app/db.py `_keep_session`): no code leaves session-level
state on a pooled connection. Pool connections are not reset with a query any more, so a session
`SET`, a `LISTEN` or a session advisory lock taken on one would leak to the next borrower. The places
that need such state are listed here, each with the reason it is safe."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (file, pattern) → why it is allowed
ALLOWED = {
    ("app/db.py", "pg_advisory_lock"): "migrate() unlocks in `finally`; a broken connection drops the lock",
    ("app/market/service.py", "pg_try_advisory_lock"): "the leader lock lives on a dedicated, unpooled connection",
}
SESSION_STATE = [
    ("pg_advisory_lock", re.compile(r"pg_advisory_lock\s*\(")),
    ("pg_try_advisory_lock", re.compile(r"pg_try_advisory_lock\s*\(")),
    ("LISTEN", re.compile(r"""["'\s]LISTEN\s""")),
    ("add_listener", re.compile(r"\.add_listener\s*\(")),
    ("set_config", re.compile(r"set_config\s*\([^)]*,\s*false", re.IGNORECASE)),
]
# SQL keywords are upper case in this code base; an `UPDATE … SET` is not a session SET
_SET = re.compile(r"\bSET\s+(?!LOCAL\b)(?:SESSION\s+)?[A-Za-z_.]+\s*(?:=|TO\b)")


def _session_sets(text: str) -> bool:
    for m in _SET.finditer(text):
        before = re.split(r"[;\"']", text[:m.start()])[-1]
        if "UPDATE" not in before:
            return True
    return False


def _kinds(text: str) -> set[str]:
    """Which kinds of session-level state `text` takes."""
    kinds = {name for name, pattern in SESSION_STATE if pattern.search(text)}
    if _session_sets(text):
        kinds.add("SET")
    return kinds


def _sources() -> list[Path]:
    files = [p for p in (ROOT / "app").rglob("*.py")]
    files += list((ROOT / "sql").glob("*.sql"))
    return files


def test_no_session_state_on_pool_connections() -> None:
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        found += [f"{rel}: {kind}" for kind in sorted(_kinds(text)) if (rel, kind) not in ALLOWED]
    assert not found, ("session-level state on a pooled connection would leak (pool reset is cheap, see "
                       f"app/db.py _keep_session): {found}")


def test_the_checker_sees_what_it_must() -> None:
    samples = ['await conn.execute("SET search_path = x")', "SET statement_timeout TO 5;",
               'conn.execute("LISTEN ticks")', "SELECT pg_advisory_lock(1)", "select set_config('a', 'b', false)"]
    for text in samples:
        assert _kinds(text), text
    harmless = ["UPDATE users SET role = $2 WHERE id = $1", "SET LOCAL statement_timeout = 5",
                "ON CONFLICT (id) DO UPDATE\nSET x = EXCLUDED.x", "set DATA_DIR to a directory", "SELECT pg_advisory_xact_lock(1)"]
    for text in harmless:
        assert not _kinds(text), text
