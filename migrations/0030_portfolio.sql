-- Portfolio & trades: portfolios, the transaction ledger, the derived ledger state (kept in the same
-- database transaction as every ledger change), and idempotency keys for POST /transactions.
-- Money and quantities are NUMERIC (exact); timestamps are timestamptz (UTC).

CREATE TABLE portfolios (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name               text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    base_currency      text        NOT NULL DEFAULT 'USD' CHECK (base_currency ~ '^[A-Z]{3}$'),
    cost_basis_method  text        NOT NULL DEFAULT 'fifo' CHECK (cost_basis_method IN ('fifo', 'average')),
    -- bumped in the same transaction as every change of the ledger; cache keys include it
    ledger_version     bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portfolios_user_idx ON portfolios (user_id, created_at);

-- The ledger. `seq` is the stable tie-break for entries with the same executed_at (insertion order).
CREATE TABLE transactions (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    portfolio_id  uuid        NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    type          text        NOT NULL CHECK (type IN ('buy', 'sell', 'deposit', 'withdrawal', 'dividend',
                                                       'interest', 'fee', 'split')),
    symbol        text,
    quantity      numeric     CHECK (quantity IS NULL OR quantity > 0),
    price         numeric     CHECK (price IS NULL OR price >= 0),
    amount        numeric     CHECK (amount IS NULL OR amount > 0),
    fee           numeric     NOT NULL DEFAULT 0 CHECK (fee >= 0),
    ratio         numeric     CHECK (ratio IS NULL OR ratio > 0),
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    note          text        CHECK (note IS NULL OR length(note) <= 500),
    executed_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (type NOT IN ('buy', 'sell') OR (symbol IS NOT NULL AND quantity IS NOT NULL AND price IS NOT NULL)),
    CHECK (type NOT IN ('deposit', 'withdrawal', 'dividend', 'interest', 'fee') OR amount IS NOT NULL),
    CHECK (type <> 'split' OR (symbol IS NOT NULL AND ratio IS NOT NULL))
);
CREATE UNIQUE INDEX transactions_ledger_order_idx ON transactions (portfolio_id, executed_at, seq);
CREATE INDEX transactions_symbol_idx ON transactions (portfolio_id, symbol, executed_at);

-- What follows from the ledger as of its last entry (app.portfolio.ledger.LedgerState, msgspec JSON),
-- written in the same transaction as each ledger change: the portfolio-wide figures (cash, realized
-- P&L, contributions …) here, and each symbol's position (its lots) in portfolio_positions, so that
-- a trade rewrites one position, not the whole state.
CREATE TABLE portfolio_state (
    portfolio_id    uuid        PRIMARY KEY REFERENCES portfolios (id) ON DELETE CASCADE,
    ledger_version  bigint      NOT NULL,
    state           jsonb       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE portfolio_positions (
    portfolio_id    uuid        NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    symbol          text        NOT NULL,
    position        jsonb       NOT NULL,
    PRIMARY KEY (portfolio_id, symbol)
);

-- Idempotency-Key of POST /api/portfolio/{id}/transactions, per user and portfolio, kept 24 hours.
CREATE TABLE portfolio_idempotency_keys (
    user_id          uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    portfolio_id     uuid        NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    key              text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash     text        NOT NULL,
    status           text        NOT NULL DEFAULT 'in_flight' CHECK (status IN ('in_flight', 'done')),
    response_status  integer,
    response_body    text,         -- the first response, byte for byte
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, portfolio_id, key)
);
CREATE INDEX portfolio_idempotency_created_idx ON portfolio_idempotency_keys (created_at);
