"""`python -m app seed-demo`: a demo user with a realistic portfolio on the bundled real prices.

Idempotent: the demo user is created once (its password reset to the documented one), and its demo
portfolio is rebuilt from scratch on every run. Login (docs/portfolio.md): demo@wealth-terminal.dev /
WT_DEMO_PASSWORD, default `demo-wealth-terminal`.
"""

from __future__ import annotations

import argparse
import asyncio
import os

DEMO_EMAIL = "demo@wealth-terminal.dev"
DEMO_PASSWORD = "demo-wealth-terminal"
DEMO_PORTFOLIO = "Demo: growth & income"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("seed-demo", help="create the demo user and a realistic demo portfolio")
    p.add_argument("--email", default=DEMO_EMAIL)
    p.set_defaults(func=cmd_seed_demo)


async def seed(settings: object, email: str = DEMO_EMAIL, password: str | None = None) -> dict:
    from app.auth import passwords
    from app.cache import create_cache
    from app.context import AppContext
    from app.db import Database, check_timescaledb, create_pool, migrate, sql_file
    from app.market.history import ensure_bundled_history
    from app.market.prices import daily_closes
    from app.portfolio import service
    from app.portfolio.demo import DEMO_SYMBOLS, build_demo_ledger, history_start
    from app.portfolio.schemas import PortfolioIn

    password = password or os.environ.get("WT_DEMO_PASSWORD") or DEMO_PASSWORD
    why = passwords.policy_violation(password, email)
    if why:
        raise SystemExit(f"error: demo password refused: {why}")
    pool = await create_pool(settings, min_size=1, max_size=4)  # type: ignore[arg-type]
    cache = create_cache(settings.redis_url)  # type: ignore[attr-defined]
    try:
        async with pool.acquire() as conn:
            await check_timescaledb(conn)
            if settings.migrate_on_start:  # type: ignore[attr-defined]
                await migrate(conn)
        db = Database(pool)
        ctx = AppContext(settings=settings, db=db, cache=cache)  # type: ignore[arg-type]
        await ensure_bundled_history(db)
        pw_hash = await asyncio.to_thread(passwords.hash_password, password, settings.bcrypt_rounds)  # type: ignore[attr-defined]
        q = sql_file("auth")
        row = await db.fetchrow(q["insert_user"], email, pw_hash, "Demo investor", "user")
        if row is not None:
            user_id = row["id"]
        else:
            user_id = await db.fetchval(sql_file("portfolio")["demo_user"], email)
            await db.execute(q["update_password"], user_id, pw_hash)
        for p in await service.list_portfolios(ctx, user_id):
            if p.name == DEMO_PORTFOLIO:
                await service.delete_portfolio(ctx, p.id, user_id)
        portfolio = await service.create_portfolio(ctx, user_id, PortfolioIn(name=DEMO_PORTFOLIO))
        closes = await daily_closes(db, DEMO_SYMBOLS, history_start())
        entries = build_demo_ledger(closes)
        errors, version = await service.import_entries(ctx, portfolio.id, user_id,
                                                       list(enumerate(entries, start=1)), dry_run=False)
        if errors:
            raise SystemExit(f"error: the demo ledger was refused: {errors[:3]}")
        return {"email": email, "password": password, "portfolio_id": str(portfolio.id),
                "transactions": len(entries), "ledger_version": version}
    finally:
        await cache.close()
        await pool.close()


def cmd_seed_demo(args: argparse.Namespace) -> None:
    from app.__main__ import fail, settings_or_exit
    from app.db import DatabaseError

    settings = settings_or_exit()
    try:
        out = asyncio.run(seed(settings, args.email))
    except DatabaseError as exc:
        fail(str(exc))
        return
    print(f"demo user {out['email']} (password: {out['password']}); portfolio {out['portfolio_id']} "
          f"with {out['transactions']} transactions")
