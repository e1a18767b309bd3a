-- name: get_thresholds
SELECT thresholds, updated_at FROM analytics_insight_settings WHERE user_id = $1

-- name: put_thresholds
INSERT INTO analytics_insight_settings (user_id, thresholds, updated_at)
VALUES ($1, $2, now())
ON CONFLICT (user_id) DO UPDATE SET thresholds = EXCLUDED.thresholds, updated_at = now()
RETURNING thresholds, updated_at

-- name: risk_tolerance
SELECT risk_tolerance FROM users WHERE id = $1

-- name: asset_info
SELECT symbol, sector, type FROM assets WHERE symbol = ANY($1::text[])

-- name: fees_12m
-- Fees charged over the last 12 months: the fee on every entry plus stand-alone 'fee' entries.
SELECT COALESCE(sum(fee), 0) + COALESCE(sum(amount) FILTER (WHERE type = 'fee'), 0)
FROM transactions
WHERE portfolio_id = $1 AND executed_at >= now() - interval '365 days'

-- name: daily_closes
-- Daily closes per symbol as arrays: Python date ordinals (date.toordinal(): 0001-01-01 is 1) and
-- float8 prices, ascending. Same rows as app.market.prices.daily_closes reads.
SELECT symbol,
       array_agg(((ts AT TIME ZONE 'UTC')::date - DATE '0001-01-01' + 1) ORDER BY ts) AS ords,
       array_agg(close::float8 ORDER BY ts) AS closes
FROM daily_bars
WHERE symbol = ANY($1::text[])
  AND ($2::timestamptz IS NULL OR ts >= $2)
GROUP BY symbol
