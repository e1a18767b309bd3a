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
