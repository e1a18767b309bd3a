"""Typed settings, read once from the environment (and an optional `.env` file).

Every setting is documented in README.md and `.env.example`. An invalid value stops start-up with a
message that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any, Literal

import msgspec

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    # --- process -------------------------------------------------------------------------------
    env: Literal["development", "production", "test"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: str = str(PROJECT_ROOT / ".data")
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    shutdown_timeout: float = 10.0
    web_workers: int = 1  # server processes sharing the port (replicas on one machine; >1 needs Redis)

    # --- database ------------------------------------------------------------------------------
    database_url: str | None = None  # unset → the embedded cluster under data_dir
    embedded_pg_port: int = 54329
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_command_timeout: float = 30.0
    migrate_on_start: bool = True

    # --- cache / pub-sub -----------------------------------------------------------------------
    redis_url: str | None = None  # unset → in-process cache and pub/sub (one process only)

    # --- auth ----------------------------------------------------------------------------------
    jwt_secret: str | None = None  # required in production; generated under data_dir otherwise
    jwt_issuer: str = "wealth-terminal"
    jwt_audience: str = "wealth-terminal-api"
    access_token_ttl: int = 900  # seconds; at most 15 minutes
    refresh_token_ttl: int = 30 * 24 * 3600
    bcrypt_rounds: int = 12
    rate_limit_per_minute: int = 600  # global per-client API limit
    login_attempts_per_minute: int = 10  # failed logins per email and per client address
    session_activity_flush: float = 30.0  # seconds between writes of sessions' last_used_at

    # --- market data ---------------------------------------------------------------------------
    market_feed: Literal["simulator", "polygon", "off"] = "simulator"
    polygon_api_key: str | None = None
    polygon_ws_url: str = "wss://socket.polygon.io/stocks"
    polygon_rest_url: str = "https://api.polygon.io"
    polygon_channels: str = "T,Q,AM"
    polygon_symbols: str = "*"
    simulator_rate: float = 50.0  # trade events per second, whole market
    trade_retention_days: int = 30
    ingest_queue_size: int = 200_000
    ingest_batch_size: int = 5_000
    ingest_flush_interval: float = 0.05
    feed_flush_interval: float = 0.025  # WebSocket fan-out batching (one frame per client per interval)
    ws_max_symbols: int = 200
    ws_max_connections_per_user: int = 10
    ws_slow_client_timeout: float = 5.0  # a client that cannot take a frame for this long is disconnected
    trade_retention_interval: float = 3600.0  # seconds between drop_chunks runs on `trades`
    quote_stale_after: float = 120.0  # a cached quote older than this is reported `stale`
    polygon_backfill_days: int = 5  # how far back minute bars are filled on start / after a reconnect

    # --- portfolio -----------------------------------------------------------------------------
    portfolio_import_max_bytes: int = 5_000_000  # CSV/JSON import upload limit (413 above it)
    portfolio_import_max_rows: int = 50_000
    portfolio_live_interval: float = 0.25  # seconds between live summaries on /market-feed (at most)

    # --- analytics / optimizer -----------------------------------------------------------------
    optimizer_workers: int = 2
    optimizer_timeout: float = 30.0
    optimizer_nice: int = 10  # niceness added to optimizer worker processes (0 = same priority as the API)
    optimizer_prestart: bool = True  # start the workers with the app (false: on the first optimization)
    ai_api_url: str | None = None
    ai_api_key: str | None = None
    ai_model: str | None = None
    ai_timeout: float = 5.0

    # --- monitoring ----------------------------------------------------------------------------
    metrics_allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    system_sample_interval: float = 2.0  # seconds between host/process/DB/Redis samples
    system_push_interval: float = 5.0  # seconds between `system` pushes on /market-feed

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"invalid setting {name.upper()}: {why}")

        if not 1 <= self.port <= 65535:
            raise bad("port", f"{self.port} is not a TCP port")
        if not 1 <= self.db_pool_min <= self.db_pool_max:
            raise bad("db_pool_max", "must be >= DB_POOL_MIN >= 1")
        if not 60 <= self.access_token_ttl <= 900:
            raise bad("access_token_ttl", "must be between 60 and 900 seconds")
        if self.bcrypt_rounds < 4 or (self.env != "test" and self.bcrypt_rounds < 12):
            raise bad("bcrypt_rounds", "must be at least 12")
        if self.rate_limit_per_minute < 1 or self.login_attempts_per_minute < 1:
            raise bad("rate_limit_per_minute", "limits must be positive")
        if not 0 < self.session_activity_flush <= 3600:
            raise bad("session_activity_flush", "must be between 0 and 3600 seconds")
        if self.simulator_rate <= 0:
            raise bad("simulator_rate", "must be positive")
        if not 0.2 <= self.system_sample_interval <= 60:
            raise bad("system_sample_interval", "must be between 0.2 and 60 seconds")
        if not 1 <= self.system_push_interval <= 300:
            raise bad("system_push_interval", "must be between 1 and 300 seconds")
        if self.shutdown_timeout <= 0:
            raise bad("shutdown_timeout", "must be positive")
        if not 0.001 <= self.feed_flush_interval <= 5:
            raise bad("feed_flush_interval", "must be between 0.001 and 5 seconds")
        if not 0.001 <= self.ingest_flush_interval <= 5:
            raise bad("ingest_flush_interval", "must be between 0.001 and 5 seconds")
        if self.ingest_batch_size < 1 or self.ingest_queue_size < self.ingest_batch_size:
            raise bad("ingest_queue_size", "must be at least INGEST_BATCH_SIZE >= 1")
        if self.trade_retention_days < 1 or self.trade_retention_interval < 1:
            raise bad("trade_retention_days", "retention days and interval must be positive")
        if self.ws_max_symbols < 1 or self.ws_max_connections_per_user < 1 or self.ws_slow_client_timeout <= 0:
            raise bad("ws_max_symbols", "WebSocket limits must be positive")
        if not 0 <= self.polygon_backfill_days <= 365:
            raise bad("polygon_backfill_days", "must be between 0 and 365")
        if not 1_000 <= self.portfolio_import_max_bytes <= 100_000_000:
            raise bad("portfolio_import_max_bytes", "must be between 1000 and 100000000")
        if not 1 <= self.portfolio_import_max_rows <= 1_000_000:
            raise bad("portfolio_import_max_rows", "must be between 1 and 1000000")
        if not 0.05 <= self.portfolio_live_interval <= 60:
            raise bad("portfolio_live_interval", "must be between 0.05 and 60 seconds")
        if not 1 <= self.web_workers <= 64:
            raise bad("web_workers", "must be between 1 and 64")
        if self.web_workers > 1 and not self.redis_url:
            raise bad("web_workers", "above 1 needs REDIS_URL: rate limits, sessions and the price fan-out "
                                     "must be shared between the processes")
        if self.optimizer_workers < 1:
            raise bad("optimizer_workers", "must be at least 1")
        if not 0 < self.optimizer_timeout <= 3600:
            raise bad("optimizer_timeout", "must be between 0 and 3600 seconds")
        if not 0 <= self.optimizer_nice <= 19:
            raise bad("optimizer_nice", "must be between 0 and 19")
        for name in ("trusted_proxies", "metrics_allowed_networks"):
            for net in getattr(self, name):
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise bad(name, f"{net!r} is not an IP network") from None
        if self.env == "production" and not self.jwt_secret:
            raise bad("jwt_secret", "must be set in production (e.g. `openssl rand -hex 32`)")
        if self.jwt_secret is not None and len(self.jwt_secret) < 32:
            raise bad("jwt_secret", "must be at least 32 characters")
        if self.market_feed == "polygon" and not self.polygon_api_key:
            raise bad("polygon_api_key", "is required when MARKET_FEED=polygon")

    # --- derived -------------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"postgresql://postgres@127.0.0.1:{self.embedded_pg_port}/wealth_terminal"

    @property
    def effective_market_feed(self) -> str:
        return self.market_feed

    def signing_key(self) -> str:
        """The JWT signing key: configured, or generated once and kept under data_dir."""
        if self.jwt_secret:
            return self.jwt_secret
        path = Path(self.data_dir) / "jwt_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip()


_TUPLE_FIELDS = {"trusted_proxies", "metrics_allowed_networks"}


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(environ: dict[str, str] | None = None, dotenv: str | Path | None = None) -> Settings:
    """Build Settings from (dotenv < environment). Raises ConfigError naming a bad variable."""
    raw: dict[str, str] = {}
    raw.update(_read_dotenv(Path(dotenv) if dotenv is not None else PROJECT_ROOT / ".env"))
    raw.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        key = field.name.upper()
        if key not in raw:
            continue
        value = raw[key].strip()
        if field.name in _TUPLE_FIELDS:
            values[field.name] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif value == "" and field.default is None:
            values[field.name] = None
        else:
            values[field.name] = value
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `int`, got `str` - at `$.port`"; name the variable instead.
        msg = str(exc)
        where = msg.rsplit("$.", 1)[-1].strip("`") if "$." in msg else ""
        what = msg.split(" - at ")[0]
        raise ConfigError(f"invalid setting {where.upper() or '?'}: {what}") from None
