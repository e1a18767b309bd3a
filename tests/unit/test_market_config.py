"""Market settings are validated at start-up with a message naming the variable."""

import os

import pytest

from app.config import ConfigError, load_settings


def load(**env: str):
    return load_settings({"ENV": "test", **env}, dotenv=os.devnull)


def test_defaults():
    s = load()
    assert s.market_feed == "simulator" and s.feed_flush_interval == 0.025 and s.quote_stale_after == 120
    assert s.trade_retention_days == 30 and s.ws_slow_client_timeout == 5


@pytest.mark.parametrize("name,value", [
    ("FEED_FLUSH_INTERVAL", "0"), ("INGEST_FLUSH_INTERVAL", "10"), ("INGEST_QUEUE_SIZE", "10"),
    ("TRADE_RETENTION_DAYS", "0"), ("WS_MAX_SYMBOLS", "0"), ("POLYGON_BACKFILL_DAYS", "1000"),
    ("SIMULATOR_RATE", "-1"), ("MARKET_FEED", "yahoo"), ("WS_SLOW_CLIENT_TIMEOUT", "x"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as err:
        load(**{name: value})
    assert name.split("_")[0] in str(err.value)


def test_polygon_needs_a_key():
    with pytest.raises(ConfigError, match="POLYGON_API_KEY"):
        load(MARKET_FEED="polygon")
