"""`python -m app create-admin EMAIL`: create the first admin (or promote an existing account).

The password comes from the WT_ADMIN_PASSWORD environment variable or, when that is unset, from an
interactive prompt (asked twice, never echoed). It must pass the same policy as registration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("create-admin", help="create an admin account (password: WT_ADMIN_PASSWORD or prompt)")
    p.add_argument("email")
    p.set_defaults(func=cmd_create_admin)


def _read_password() -> str:
    from_env = os.environ.get("WT_ADMIN_PASSWORD")
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise SystemExit("error: set WT_ADMIN_PASSWORD or run in a terminal to be prompted for the password")
    first = getpass.getpass("Password for the new admin: ")
    if getpass.getpass("Repeat it: ") != first:
        raise SystemExit("error: the passwords differ")
    return first


def cmd_create_admin(args: argparse.Namespace) -> None:
    from app.__main__ import fail, settings_or_exit
    from app.auth import passwords, service
    from app.db import DatabaseError, check_timescaledb, create_pool, migrate, sql_file

    settings = settings_or_exit()
    email = service.normalize_email(args.email)
    if not service.valid_email(email):
        fail(f"{args.email!r} is not a valid email address")

    async def run() -> str:
        pool = await create_pool(settings, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                await check_timescaledb(conn)
                if settings.migrate_on_start:
                    await migrate(conn)
                q = sql_file("auth")
                promoted = await conn.fetchval(q["set_role_by_email"], email, "admin")
                if promoted is not None:
                    return f"{email} already had an account; it is now an admin"
                password = _read_password()
                why = passwords.policy_violation(password, email)
                if why:
                    fail(why)
                password_hash = await asyncio.to_thread(passwords.hash_password, password, settings.bcrypt_rounds)
                row = await conn.fetchrow(q["insert_user"], email, password_hash, None, "admin")
                if row is None:  # registered between our two statements
                    await conn.fetchval(q["set_role_by_email"], email, "admin")
                    return f"{email} already had an account; it is now an admin"
                return f"created admin {email} ({row['id']})"
        finally:
            await pool.close()

    try:
        print(asyncio.run(run()))
    except DatabaseError as exc:
        fail(str(exc))
