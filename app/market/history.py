"""The bundled real daily history (app/market/data, see SOURCE.md) → `assets` + `daily_bars`.

`ensure_bundled_history(db)` is called by the market lifespan at start-up and may be called by
tests: it loads once (a checksum of the files is recorded in `market_history_loads`), under an
advisory lock so that replicas starting together load it once, with one COPY.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from pathlib import Path

from app.db import Database
from app.market.assets_meta import BUNDLED_ASSETS

log = logging.getLogger("app.market.history")

DATA_DIR = Path(__file__).resolve().parent / "data"
FILES = ("stock_prices.csv", "spy_prices.csv")
LOAD_NAME = "bundled-daily-v1"
HISTORY_LOCK_KEY = 0x4D4B_5448_4953  # "MKTHIS"
_SIX = Decimal("0.000001")


class Bundle:
    def __init__(self, checksum: str, csv_bytes: bytes, rows: int, symbols: tuple[str, ...]) -> None:
        self.checksum = checksum
        self.csv_bytes = csv_bytes
        self.rows = rows
        self.symbols = symbols


def parse_bundled(files: tuple[Path, ...]) -> tuple[list[tuple[str, str, str]], str]:
    """Rows (symbol, 'YYYY-MM-DD', close rounded to 6 places) from wide CSVs, and their checksum."""
    digest = hashlib.sha256()
    rows: list[tuple[str, str, str]] = []
    for path in files:
        raw = path.read_bytes()
        digest.update(raw)
        reader = csv.reader(io.StringIO(raw.decode()))
        header = next(reader)
        symbols = [h.strip().upper() for h in header[1:]]
        for record in reader:
            if not record:
                continue
            day = record[0].strip()
            for symbol, cell in zip(symbols, record[1:]):
                cell = cell.strip()
                if not cell:
                    continue
                value = Decimal(cell)
                if not value.is_finite() or value <= 0:
                    continue
                rows.append((symbol, day, str(value.quantize(_SIX, rounding=ROUND_HALF_EVEN))))
    return rows, digest.hexdigest()


@cache
def bundle() -> Bundle:
    rows, checksum = parse_bundled(tuple(DATA_DIR / f for f in FILES))
    out = io.StringIO()
    writer = csv.writer(out)
    for symbol, day, close in rows:
        writer.writerow((symbol, f"{day} 00:00:00+00", close))
    return Bundle(checksum, out.getvalue().encode(), len(rows), tuple(sorted({r[0] for r in rows})))


async def ensure_bundled_history(db: Database) -> int:
    """Load the bundled assets and daily closes when missing; returns the number of rows written
    (0 when already loaded). Rows of other sources (live feed, Polygon backfill) are never touched."""
    data = bundle()
    if await db.fetchval("SELECT checksum FROM market_history_loads WHERE name = $1", LOAD_NAME) == data.checksum:
        return 0
    started = time.perf_counter()
    async with db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", HISTORY_LOCK_KEY)
        done = await conn.fetchval("SELECT checksum FROM market_history_loads WHERE name = $1", LOAD_NAME)
        if done == data.checksum:
            return 0
        await conn.executemany(
            "INSERT INTO assets (symbol, name, type, exchange, currency, sector, source) "
            "VALUES ($1, $2, $3, $4, 'USD', $5, 'bundled') ON CONFLICT (symbol) DO NOTHING",
            [(a.symbol, a.name, a.type, a.exchange, a.sector) for a in BUNDLED_ASSETS])
        await conn.execute("CREATE TEMP TABLE _bundled_daily (symbol text, ts timestamptz, close numeric) "
                           "ON COMMIT DROP")
        await conn.copy_to_table("_bundled_daily", source=io.BytesIO(data.csv_bytes), format="csv",
                                 columns=["symbol", "ts", "close"])
        status = await conn.execute(
            """INSERT INTO daily_bars (symbol, ts, open, high, low, close, volume, source)
               SELECT symbol, ts, close, close, close, close, 0, 'bundled' FROM _bundled_daily
               ON CONFLICT (symbol, ts) DO UPDATE
                 SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close
                 WHERE daily_bars.source = 'bundled' AND daily_bars.close <> EXCLUDED.close""")
        await conn.execute(
            "INSERT INTO market_history_loads (name, checksum, rows) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, rows = EXCLUDED.rows, loaded_at = now()",
            LOAD_NAME, data.checksum, data.rows)
    written = int(status.split()[-1])
    log.info("bundled history loaded", extra={"rows": written, "ms": round((time.perf_counter() - started) * 1000)})
    return written
