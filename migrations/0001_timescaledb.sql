-- The foundation: TimescaleDB for the market data hypertables.
CREATE EXTENSION IF NOT EXISTS timescaledb;
