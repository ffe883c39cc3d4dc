"""Schema migrations: upgrade to head, refuse an empty or a newer schema (ARCHITECTURE.md §5).

The check coroutines take a database target (a SQLite path or a PostgreSQL URL) so the
PostgreSQL contract test runs them too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, text
from sqlalchemy.engine import Connection

from storage import schema as s
from storage.engine import open_engines
from storage.migrate import SchemaMismatch, current_revision, head_revision, upgrade
from storage.sql import SqlRegistry

FUTURE = "9999_future"


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, s.metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def check_upgrade_gives_head(target: str | Path) -> None:
    """An empty database upgrades to head, with exactly the tables and columns of the schema."""
    engines = open_engines(target)
    try:
        assert await current_revision(engines.writer) is None
        assert await upgrade(engines.writer) == head_revision()
        assert await current_revision(engines.writer) == head_revision()
        async with engines.writer.connect() as conn:
            names = await conn.run_sync(_table_names)
            diff = await conn.run_sync(_schema_diff)
        assert set(s.metadata.tables) <= names
        assert "alembic_version" in names
        assert diff == [], diff  # the migration builds exactly storage.schema
    finally:
        await engines.dispose()


async def check_refuses_newer(target: str | Path) -> None:
    """A schema stamped by a newer onecard is refused by open, open+migrate and upgrade."""
    reg = await SqlRegistry.open(target, migrate=True)
    try:
        async with reg.transaction() as tx:
            await tx.conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE}
            )
    finally:
        await reg.close()
    for migrate in (False, True):
        with pytest.raises(SchemaMismatch) as info:
            await SqlRegistry.open(target, migrate=migrate)
        assert "newer" in info.value.message_en
        assert FUTURE in info.value.message_en
        assert info.value.message_zh  # zh-CN first
    engines = open_engines(target)
    try:
        with pytest.raises(SchemaMismatch, match="newer"):
            await upgrade(engines.writer)
        assert await current_revision(engines.writer) == FUTURE  # left untouched
    finally:
        await engines.dispose()


async def check_open_twice(target: str | Path) -> None:
    """Opening (and migrating) again keeps the data and the revision."""
    first = await SqlRegistry.open(target, migrate=True)
    try:
        async with first.transaction() as tx:
            # (SqlTx.insert returns an int key, so a string-keyed table goes in directly)
            await tx.conn.execute(insert(s.merchants).values(id="canteen1", name="一食堂"))
    finally:
        await first.close()
    for migrate in (True, False, True):
        reg = await SqlRegistry.open(target, migrate=migrate)
        try:
            assert await current_revision(reg.engines.writer) == head_revision()
            async with reg.read() as tx:
                assert await tx.count("merchants") == 1
                row = await tx.get("merchants", "canteen1")
            assert row is not None
            assert row["name"] == "一食堂"
            assert row["operator_dept"] == "后勤管理处"  # server default survived
        finally:
            await reg.close()


@pytest.mark.asyncio
async def test_upgrade_on_an_empty_file_gives_head(tmp_path: Path) -> None:
    await check_upgrade_gives_head(tmp_path / "fresh.sqlite3")


@pytest.mark.asyncio
async def test_open_without_migrate_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite3"
    with pytest.raises(SchemaMismatch) as info:
        await SqlRegistry.open(path)
    assert "empty" in info.value.message_en
    assert "onecard db upgrade" in info.value.message_zh


@pytest.mark.asyncio
async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    await check_refuses_newer(tmp_path / "newer.sqlite3")


@pytest.mark.asyncio
async def test_opening_twice_is_idempotent(tmp_path: Path) -> None:
    await check_open_twice(tmp_path / "twice.sqlite3")


def test_memory_database_is_refused() -> None:
    """The registry lives in a file: an in-memory SQLite database would lose the ledger."""
    with pytest.raises(ValueError, match="file"):
        open_engines("sqlite+aiosqlite:///:memory:")
