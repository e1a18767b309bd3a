"""Session fixtures: a throwaway PostgreSQL+TimescaleDB cluster and a Redis server of the suite's own
(never the developer's `.data/`), settings pointing at them, and the app under a test client."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.config import Settings, load_settings
from app.embedded_pg import Cluster
from tests.support.services import RedisServer, start_cluster

TEST_JWT_SECRET = "test-secret-" + "x" * 40


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def database_url(pg_cluster: Cluster) -> str:
    pg_cluster.create_database("wt_test")
    return pg_cluster.url("wt_test")


@pytest.fixture(scope="session")
def test_env(database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the app under test; also handed to app subprocesses."""
    return {
        "ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "BCRYPT_ROUNDS": "4",
        "MARKET_FEED": "off",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_PER_MINUTE": "100000",
        # Optimizer workers start on first use: most of the suite's many app instances never optimize,
        # and each worker costs ~2.5 s of CPU to import Riskfolio.
        "OPTIMIZER_PRESTART": "false",
    }


def make_settings(env: dict[str, str], **overrides: str) -> Settings:
    merged = {**env, **{k.upper(): v for k, v in overrides.items()}}
    # Only our variables: the developer's shell or .env must not leak into the tests.
    return load_settings(merged, dotenv=os.devnull)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> Settings:
    return make_settings(test_env)


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    """The whole app (Redis-backed) under Litestar's test client, shared by the session."""
    app = create_app(settings)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]
