"""The migration runner: ordered, transactional, checksummed, safe for two replicas at once."""

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from app.config import PROJECT_ROOT
from app.db import MigrationError, discover_migrations, migrate, pending_migrations


@pytest.fixture
async def fresh_db(pg_cluster, unique):
    name = f"mig_{unique}"
    pg_cluster.create_database(name)
    url = pg_cluster.url(name)
    yield url


def write(dir_, name, sql):
    (dir_ / name).write_text(sql)


async def test_applies_in_order_records_checksums_and_is_idempotent(fresh_db, tmp_path):
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int PRIMARY KEY);")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int REFERENCES a(id) DEFERRABLE);")
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await pending_migrations(conn, tmp_path) == ["0001_a.sql", "0002_b.sql"]
        assert await migrate(conn, tmp_path) == ["0001_a.sql", "0002_b.sql"]
        assert await migrate(conn, tmp_path) == []
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [1, 2]
        assert all(len(r["checksum"]) == 64 for r in rows)
    finally:
        await conn.close()


async def test_an_edited_applied_migration_is_refused(fresh_db, tmp_path):
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    conn = await asyncpg.connect(fresh_db)
    try:
        await migrate(conn, tmp_path)
        write(tmp_path, "0001_a.sql", "CREATE TABLE a (id bigint);")
        with pytest.raises(MigrationError, match="0001_a.sql was edited"):
            await migrate(conn, tmp_path)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(fresh_db, tmp_path):
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    write(tmp_path, "0002_bad.sql", "CREATE TABLE half (id int); SELECT no_such_function();")
    conn = await asyncpg.connect(fresh_db)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
    finally:
        await conn.close()


async def test_two_replicas_migrating_at_once_apply_each_migration_once(fresh_db, tmp_path):
    # The sleep widens the window in which, without the advisory lock, both would apply 0001.
    write(tmp_path, "0001_slow.sql", "SELECT pg_sleep(0.5); CREATE TABLE once (id int);")
    c1, c2 = await asyncpg.connect(fresh_db), await asyncpg.connect(fresh_db)
    try:
        r1, r2 = await asyncio.gather(migrate(c1, tmp_path), migrate(c2, tmp_path))
        assert sorted([r1, r2]) == [[], ["0001_slow.sql"]]
    finally:
        await c1.close()
        await c2.close()


def test_bad_file_names_are_refused(tmp_path):
    write(tmp_path, "1_a.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="0001_description.sql"):
        discover_migrations(tmp_path)


def test_project_migrations_are_numbered_and_first_enables_timescaledb():
    migs = discover_migrations()
    assert migs[0].version == 1 and "timescaledb" in migs[0].sql
    assert [m.version for m in migs] == sorted(m.version for m in migs)


def test_cli_migrate_applies_project_migrations(pg_cluster, unique):
    name = f"cli_{unique}"
    pg_cluster.create_database(name)
    env = {"DATABASE_URL": pg_cluster.url(name), "PATH": "/usr/bin:/bin", "ENV": "test"}
    out = subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "0001_timescaledb.sql" in out.stdout
    again = subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert "applied 0 migration(s)" in again.stdout
