-- Market data: assets, and hypertables for trades (every tick), one-minute bars and daily bars.
-- Prices are NUMERIC (exact decimals); timestamps are timestamptz (UTC).

CREATE TABLE assets (
    symbol      text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9.:-]{1,24}$'),
    name        text        NOT NULL,
    type        text        NOT NULL DEFAULT 'stock' CHECK (type IN ('stock', 'etf', 'index', 'fund', 'other')),
    exchange    text,
    currency    text        NOT NULL DEFAULT 'USD',
    sector      text,
    active      boolean     NOT NULL DEFAULT true,
    source      text        NOT NULL DEFAULT 'bundled',   -- bundled | polygon
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assets_lower_name_idx ON assets (lower(name) text_pattern_ops);

-- Every trade. Plain COPY from the single ingesting replica; retention drops old chunks.
CREATE TABLE trades (
    ts          timestamptz NOT NULL,
    symbol      text        NOT NULL,
    price       numeric     NOT NULL,
    size        bigint      NOT NULL,
    exchange    smallint,
    trade_id    text,
    tape        smallint,
    seq         bigint
);
SELECT create_hypertable('trades', 'ts', chunk_time_interval => interval '1 day', create_default_indexes => false);
CREATE INDEX trades_symbol_ts_idx ON trades (symbol, ts DESC);
CREATE INDEX trades_ts_idx ON trades (ts DESC);

-- One-minute bars; ts is the window start. Polygon re-sends corrected bars: (symbol, ts) is unique
-- and the writer upserts.
CREATE TABLE minute_bars (
    symbol      text        NOT NULL,
    ts          timestamptz NOT NULL,
    open        numeric     NOT NULL,
    high        numeric     NOT NULL,
    low         numeric     NOT NULL,
    close       numeric     NOT NULL,
    volume      bigint      NOT NULL DEFAULT 0,
    vwap        numeric,
    trades      integer,
    source      text        NOT NULL DEFAULT 'feed'      -- polygon | simulator | backfill
);
SELECT create_hypertable('minute_bars', 'ts', chunk_time_interval => interval '7 days', create_default_indexes => false);
CREATE UNIQUE INDEX minute_bars_symbol_ts_key ON minute_bars (symbol, ts DESC);
CREATE INDEX minute_bars_ts_idx ON minute_bars (ts DESC);

-- Daily bars; ts is UTC midnight of the day. The bundled history (adjusted closes only) has
-- source = 'bundled' and open = high = low = close, volume 0: see app/market/data/SOURCE.md.
CREATE TABLE daily_bars (
    symbol      text        NOT NULL,
    ts          timestamptz NOT NULL,
    open        numeric     NOT NULL,
    high        numeric     NOT NULL,
    low         numeric     NOT NULL,
    close       numeric     NOT NULL,
    volume      bigint      NOT NULL DEFAULT 0,
    vwap        numeric,
    trades      integer,
    source      text        NOT NULL DEFAULT 'feed'      -- bundled | simulated | simulator | polygon
);
SELECT create_hypertable('daily_bars', 'ts', chunk_time_interval => interval '1825 days', create_default_indexes => false);
CREATE UNIQUE INDEX daily_bars_symbol_ts_key ON daily_bars (symbol, ts DESC);
CREATE INDEX daily_bars_ts_idx ON daily_bars (ts DESC);

-- Which bundled data sets are loaded (and from which file contents), so start-up loads once.
CREATE TABLE market_history_loads (
    name        text PRIMARY KEY,
    checksum    text        NOT NULL,
    rows        integer     NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now()
);
