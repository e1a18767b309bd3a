-- Market data queries (app/market). Blocks start with `-- name: query_name`.

-- name: known_symbols
SELECT symbol FROM assets WHERE symbol = ANY($1::text[]);

-- name: daily_closes
SELECT symbol, ts, close FROM daily_bars
WHERE symbol = ANY($1::text[])
  AND ($2::timestamptz IS NULL OR ts >= $2)
  AND ($3::timestamptz IS NULL OR ts < $3)
ORDER BY symbol, ts;

-- name: last_stored_prices
-- The last stored price per symbol: the newer of the last minute bar (as of its end) and the last
-- daily bar, with the close of the previous day as previous close.
SELECT s.symbol,
       CASE WHEN m.ts IS NOT NULL AND m.ts >= d.ts THEN m.close ELSE d.close END AS close,
       CASE WHEN m.ts IS NOT NULL AND m.ts >= d.ts THEN m.ts + interval '1 minute' ELSE d.ts END AS as_of,
       p.close AS prev_close
FROM unnest($1::text[]) AS s(symbol)
CROSS JOIN LATERAL (
    SELECT ts, close FROM daily_bars WHERE daily_bars.symbol = s.symbol ORDER BY ts DESC LIMIT 1
) d
LEFT JOIN LATERAL (
    SELECT ts, close FROM minute_bars WHERE minute_bars.symbol = s.symbol ORDER BY ts DESC LIMIT 1
) m ON true
LEFT JOIN LATERAL (
    SELECT close FROM daily_bars
    WHERE daily_bars.symbol = s.symbol AND daily_bars.ts < date_trunc('day', GREATEST(m.ts, d.ts), 'UTC')
    ORDER BY ts DESC LIMIT 1
) p ON true;

-- name: create_bar_stage
CREATE TEMP TABLE IF NOT EXISTS _stage_bars (
    symbol text, ts timestamptz, open numeric, high numeric, low numeric, close numeric,
    volume bigint, vwap numeric, trades integer, source text
) ON COMMIT DELETE ROWS;

-- name: upsert_minute_bars
-- Polygon re-sends corrected minute bars: the newest version wins; unchanged rows are not rewritten.
INSERT INTO minute_bars AS m (symbol, ts, open, high, low, close, volume, vwap, trades, source)
SELECT DISTINCT ON (symbol, ts) symbol, ts, open, high, low, close, volume, vwap, trades, source
FROM _stage_bars ORDER BY symbol, ts
ON CONFLICT (symbol, ts) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
       volume = EXCLUDED.volume, vwap = EXCLUDED.vwap, trades = EXCLUDED.trades, source = EXCLUDED.source
 WHERE (m.open, m.high, m.low, m.close, m.volume, m.vwap, m.trades)
       IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume,
                         EXCLUDED.vwap, EXCLUDED.trades);

-- name: rollup_daily_from_stage
-- Rebuild the daily bar of every (symbol, day) touched by the staged minute bars. A daily bar from an
-- authoritative source (Polygon's daily aggregates, the bundled history) is never overwritten.
INSERT INTO daily_bars AS d (symbol, ts, open, high, low, close, volume, vwap, trades, source)
SELECT m.symbol, k.day, first(m.open, m.ts), max(m.high), min(m.low), last(m.close, m.ts), sum(m.volume),
       NULL, sum(m.trades), 'rollup'
FROM (SELECT DISTINCT symbol, time_bucket('1 day', ts) AS day FROM _stage_bars) k
JOIN minute_bars m ON m.symbol = k.symbol AND m.ts >= k.day AND m.ts < k.day + interval '1 day'
GROUP BY m.symbol, k.day
ON CONFLICT (symbol, ts) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
       volume = EXCLUDED.volume, trades = EXCLUDED.trades
 WHERE d.source = 'rollup';

-- name: upsert_daily_bars
INSERT INTO daily_bars AS d (symbol, ts, open, high, low, close, volume, vwap, trades, source)
SELECT DISTINCT ON (symbol, ts) symbol, ts, open, high, low, close, volume, vwap, trades, source
FROM _stage_bars ORDER BY symbol, ts
ON CONFLICT (symbol, ts) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
       volume = EXCLUDED.volume, vwap = EXCLUDED.vwap, trades = EXCLUDED.trades, source = EXCLUDED.source
 WHERE d.source <> 'bundled' OR EXCLUDED.source = 'polygon';

-- name: last_minute_bar
SELECT max(ts) FROM minute_bars WHERE symbol = $1;

-- name: last_minute_bars
SELECT s.symbol, (SELECT max(ts) FROM minute_bars m WHERE m.symbol = s.symbol) AS ts
FROM unnest($1::text[]) AS s(symbol);

-- name: last_daily_bar_any
SELECT max(ts) FROM daily_bars WHERE symbol = ANY($1::text[]);

-- name: seed_quote_book
-- Per symbol: the last daily bar (maybe today's) and the close of the day before it.
SELECT a.symbol, d.ts, d.open, d.high, d.low, d.close, d.volume, p.close AS prev_close
FROM assets a
CROSS JOIN LATERAL (SELECT ts, open, high, low, close, volume FROM daily_bars
                    WHERE daily_bars.symbol = a.symbol ORDER BY ts DESC LIMIT 1) d
LEFT JOIN LATERAL (SELECT close FROM daily_bars WHERE daily_bars.symbol = a.symbol AND daily_bars.ts < d.ts
                   ORDER BY ts DESC LIMIT 1) p ON true
WHERE a.active;

-- name: recent_daily_closes
SELECT symbol, ts, close FROM daily_bars
WHERE symbol = ANY($1::text[]) AND ts >= $2
ORDER BY ts, symbol;

-- name: drop_old_trades
SELECT count(*) FROM drop_chunks('trades', older_than => $1::interval);

-- name: list_assets
SELECT symbol, name, type, exchange, currency, sector, active FROM assets
WHERE ($1::text IS NULL OR symbol ILIKE $1 || '%' OR lower(name) LIKE '%' || lower($1) || '%')
  AND ($2::text IS NULL OR type = $2)
  AND ($3::text IS NULL OR symbol > $3)
ORDER BY symbol
LIMIT $4;

-- name: get_asset
SELECT a.symbol, a.name, a.type, a.exchange, a.currency, a.sector, a.active,
       (SELECT min(ts) FROM daily_bars d WHERE d.symbol = a.symbol) AS history_start,
       (SELECT max(ts) FROM daily_bars d WHERE d.symbol = a.symbol) AS history_end
FROM assets a WHERE a.symbol = $1;

-- name: active_symbols
SELECT symbol FROM assets WHERE active ORDER BY symbol;

-- name: history_minute
SELECT ts, open, high, low, close, volume FROM minute_bars
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts DESC LIMIT $4;

-- name: history_minute_bucketed
SELECT time_bucket($5::interval, ts) AS ts, first(open, ts) AS open, max(high) AS high, min(low) AS low,
       last(close, ts) AS close, sum(volume)::bigint AS volume
FROM minute_bars
WHERE symbol = $1 AND ts >= $2 AND ts < $3
GROUP BY 1 ORDER BY 1 DESC LIMIT $4;

-- name: history_daily
SELECT ts, open, high, low, close, volume FROM daily_bars
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts DESC LIMIT $4;

-- name: history_daily_bucketed
SELECT time_bucket($5::interval, ts) AS ts, first(open, ts) AS open, max(high) AS high, min(low) AS low,
       last(close, ts) AS close, sum(volume)::bigint AS volume
FROM daily_bars
WHERE symbol = $1 AND ts >= $2 AND ts < $3
GROUP BY 1 ORDER BY 1 DESC LIMIT $4;

-- name: breadth
-- Per day over the window: advancers, decliners, unchanged, new 52-week (252-session) highs and lows,
-- and how many closes are above their 50- and 200-session moving averages (only symbols with a full
-- window count). $1 = start of the reported window; 400 more days are read for the averages.
WITH d AS (
    SELECT b.symbol, b.ts, b.close,
           lag(b.close) OVER w AS prev,
           avg(b.close) OVER (w ROWS BETWEEN 49 PRECEDING AND CURRENT ROW) AS ma50,
           count(*) OVER (w ROWS BETWEEN 49 PRECEDING AND CURRENT ROW) AS n50,
           avg(b.close) OVER (w ROWS BETWEEN 199 PRECEDING AND CURRENT ROW) AS ma200,
           count(*) OVER (w ROWS BETWEEN 199 PRECEDING AND CURRENT ROW) AS n200,
           max(b.close) OVER (w ROWS BETWEEN 252 PRECEDING AND 1 PRECEDING) AS hi52,
           min(b.close) OVER (w ROWS BETWEEN 252 PRECEDING AND 1 PRECEDING) AS lo52,
           count(*) OVER (w ROWS BETWEEN 252 PRECEDING AND 1 PRECEDING) AS n52
    FROM daily_bars b JOIN assets a ON a.symbol = b.symbol AND a.active
    WHERE b.ts >= $1::timestamptz - interval '400 days'
    WINDOW w AS (PARTITION BY b.symbol ORDER BY b.ts)
)
SELECT ts,
       count(*) FILTER (WHERE prev IS NOT NULL AND close > prev) AS advancers,
       count(*) FILTER (WHERE prev IS NOT NULL AND close < prev) AS decliners,
       count(*) FILTER (WHERE prev IS NOT NULL AND close = prev) AS unchanged,
       count(*) FILTER (WHERE n52 >= 252 AND close > hi52) AS new_highs,
       count(*) FILTER (WHERE n52 >= 252 AND close < lo52) AS new_lows,
       count(*) FILTER (WHERE n50 = 50) AS with_ma50,
       count(*) FILTER (WHERE n50 = 50 AND close > ma50) AS above_ma50,
       count(*) FILTER (WHERE n200 = 200) AS with_ma200,
       count(*) FILTER (WHERE n200 = 200 AND close > ma200) AS above_ma200
FROM d WHERE ts >= $1
GROUP BY ts ORDER BY ts;
