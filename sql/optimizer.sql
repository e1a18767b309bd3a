-- Queries of the optimizer domain (app/optimizer/service.py). Reads the market domain's daily_bars.

-- name: universe_bounds
-- Which of the symbols are known assets, and the newest daily bar among them (the lookback window
-- ends there; the bundled history ends in 2024, a live feed keeps it current): one round trip.
SELECT ARRAY(SELECT symbol FROM assets WHERE symbol = ANY($1::text[])) AS known,
       (SELECT max(ts) FROM daily_bars WHERE symbol = ANY($1::text[])) AS latest;

-- name: daily_closes
-- Daily closes as float8 for the return matrix (the market domain's `daily_closes` gives Decimals for
-- money; the optimizer needs floats, and converting 10⁵ Decimals costs more than the solve).
SELECT symbol, (ts AT TIME ZONE 'UTC')::date AS day, close::float8 AS close
FROM daily_bars
WHERE symbol = ANY($1::text[]) AND ts >= $2 AND ts < $3
ORDER BY symbol, ts;
