-- Queries of the optimizer domain (app/optimizer/service.py). Reads the market domain's daily_bars.

-- name: latest_daily_bar
-- The newest daily bar among the symbols: the lookback window ends there (the bundled history ends
-- in 2024; a live feed keeps it current).
SELECT max(ts) FROM daily_bars WHERE symbol = ANY($1::text[]);
