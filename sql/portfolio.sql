-- Portfolio & trades (app/portfolio). Blocks start with `-- name: query_name`.

-- name: create_portfolio
INSERT INTO portfolios (user_id, name, base_currency, cost_basis_method)
VALUES ($1, $2, $3, $4)
RETURNING id, user_id, name, base_currency, cost_basis_method, ledger_version, created_at, updated_at;

-- name: lock_user_portfolios
SELECT pg_advisory_xact_lock(hashtextextended('portfolios:' || $1::text, 0));

-- name: count_portfolios
SELECT count(*) FROM portfolios WHERE user_id = $1;

-- name: list_portfolios
SELECT id, user_id, name, base_currency, cost_basis_method, ledger_version, created_at, updated_at
FROM portfolios WHERE user_id = $1 ORDER BY created_at, id;

-- name: get_owned_portfolio
SELECT id, user_id, name, base_currency, cost_basis_method, ledger_version, created_at, updated_at
FROM portfolios WHERE id = $1 AND user_id = $2;

-- name: lock_owned_portfolio
SELECT id, user_id, name, base_currency, cost_basis_method, ledger_version, created_at, updated_at
FROM portfolios WHERE id = $1 AND user_id = $2 FOR UPDATE;

-- name: update_portfolio
UPDATE portfolios SET name = $3, cost_basis_method = $4, updated_at = now()
WHERE id = $1 AND user_id = $2
RETURNING id, user_id, name, base_currency, cost_basis_method, ledger_version, created_at, updated_at;

-- name: delete_portfolio
DELETE FROM portfolios WHERE id = $1 AND user_id = $2;

-- name: ledger_version
SELECT ledger_version FROM portfolios WHERE id = $1;

-- name: owned_version
SELECT ledger_version, cost_basis_method, base_currency FROM portfolios WHERE id = $1 AND user_id = $2;

-- name: bump_version
UPDATE portfolios SET ledger_version = ledger_version + 1, updated_at = now() WHERE id = $1
RETURNING ledger_version;

-- name: get_state
SELECT ledger_version, state::text AS state FROM portfolio_state WHERE portfolio_id = $1;

-- name: upsert_state
INSERT INTO portfolio_state (portfolio_id, ledger_version, state, updated_at)
VALUES ($1, $2, $3::text::jsonb, now())
ON CONFLICT (portfolio_id) DO UPDATE
SET ledger_version = EXCLUDED.ledger_version, state = EXCLUDED.state, updated_at = now();

-- name: bump_and_store_state
-- One round trip: the next ledger version and the portfolio-wide state that goes with it.
WITH v AS (
    UPDATE portfolios SET ledger_version = ledger_version + 1, updated_at = now() WHERE id = $1
    RETURNING ledger_version
)
INSERT INTO portfolio_state (portfolio_id, ledger_version, state, updated_at)
SELECT $1, v.ledger_version, $2::text::jsonb, now() FROM v
ON CONFLICT (portfolio_id) DO UPDATE
SET ledger_version = EXCLUDED.ledger_version, state = EXCLUDED.state, updated_at = now()
RETURNING ledger_version;

-- name: get_positions
SELECT position::text AS position FROM portfolio_positions WHERE portfolio_id = $1;

-- name: upsert_position
INSERT INTO portfolio_positions (portfolio_id, symbol, position) VALUES ($1, $2, $3::text::jsonb)
ON CONFLICT (portfolio_id, symbol) DO UPDATE SET position = EXCLUDED.position;

-- name: delete_positions
DELETE FROM portfolio_positions WHERE portfolio_id = $1;

-- name: insert_transaction
INSERT INTO transactions (portfolio_id, type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
RETURNING id, seq, type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at, created_at;

-- name: insert_transactions_bulk
INSERT INTO transactions (portfolio_id, type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at)
SELECT $1, t.type, t.symbol, t.quantity, t.price, t.amount, t.fee, t.ratio, t.currency, t.note, t.executed_at
FROM unnest($2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::numeric[], $7::numeric[], $8::numeric[],
            $9::text[], $10::text[], $11::timestamptz[])
     WITH ORDINALITY AS t(type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at, n)
ORDER BY t.n;

-- name: ledger
SELECT id, seq, type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at, created_at
FROM transactions WHERE portfolio_id = $1 ORDER BY executed_at, seq;

-- name: ledger_since
SELECT id, seq, type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at, created_at
FROM transactions WHERE portfolio_id = $1 AND executed_at >= $2 ORDER BY executed_at, seq;

-- name: last_entry
SELECT executed_at, seq FROM transactions WHERE portfolio_id = $1 ORDER BY executed_at DESC, seq DESC LIMIT 1;

-- name: list_transactions
-- Newest first; the cursor is the (executed_at, seq) of the last item of the previous page.
SELECT id, seq, type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at, created_at
FROM transactions
WHERE portfolio_id = $1
  AND ($2::text IS NULL OR type = $2)
  AND ($3::text IS NULL OR symbol = $3)
  AND ($4::timestamptz IS NULL OR executed_at >= $4)
  AND ($5::timestamptz IS NULL OR executed_at < $5)
  AND ($6::timestamptz IS NULL OR (executed_at, seq) < ($6, $7::bigint))
ORDER BY executed_at DESC, seq DESC
LIMIT $8;

-- name: get_transaction
SELECT id, seq, type, symbol, quantity, price, amount, fee, ratio, currency, note, executed_at, created_at
FROM transactions WHERE portfolio_id = $1 AND id = $2;

-- name: delete_transaction
DELETE FROM transactions WHERE portfolio_id = $1 AND id = $2 RETURNING id;

-- name: asset_currencies
SELECT symbol, currency FROM assets WHERE symbol = ANY($1::text[]);

-- name: idem_claim
INSERT INTO portfolio_idempotency_keys (user_id, portfolio_id, key, request_hash)
VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id, portfolio_id, key) DO NOTHING
RETURNING key;

-- name: idem_get
SELECT request_hash, status, response_status, response_body, created_at
FROM portfolio_idempotency_keys WHERE user_id = $1 AND portfolio_id = $2 AND key = $3;

-- name: idem_take_over
-- A claim left in flight by a crashed request is taken over after a while.
UPDATE portfolio_idempotency_keys SET created_at = now()
WHERE user_id = $1 AND portfolio_id = $2 AND key = $3 AND status = 'in_flight' AND request_hash = $4
  AND created_at < now() - make_interval(secs => $5)
RETURNING key;

-- name: idem_complete
UPDATE portfolio_idempotency_keys SET status = 'done', response_status = $4, response_body = $5
WHERE user_id = $1 AND portfolio_id = $2 AND key = $3;

-- name: idem_release
DELETE FROM portfolio_idempotency_keys WHERE user_id = $1 AND portfolio_id = $2 AND key = $3 AND status = 'in_flight';

-- name: idem_purge
DELETE FROM portfolio_idempotency_keys WHERE created_at < now() - make_interval(secs => $1);

-- name: demo_user
SELECT id FROM users WHERE lower(email) = lower($1);

-- name: last_close
SELECT max(ts) FROM daily_bars WHERE symbol = ANY($1::text[]);
