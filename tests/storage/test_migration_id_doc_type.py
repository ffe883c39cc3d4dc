"""Migration 0007: holders gain ``id_doc_type`` (ISS-8/11, issue 10); every holder registered
before it holds a resident ID. Runs on SQLite, and on PostgreSQL with the ``postgres`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from protocol.cards.identity import IdDocType
from storage.engine import open_engines
from storage.migrate import alembic_config, current_revision, head_revision
from storage.sql import SqlRegistry
from tests.storage.test_postgres_contract import pg_server, pg_url  # noqa: F401 - fixtures

NID = "11010519491231002X"


def _to(revision: str, *, down: bool = False) -> object:
    def step(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, revision)

    return step


async def check_id_doc_type_migration(target: str | Path) -> None:
    engines = open_engines(target)
    try:
        async with engines.writer.begin() as conn:
            await conn.run_sync(_to("0006"))  # type: ignore[arg-type]
            await conn.execute(
                text(
                    "INSERT INTO holders (kind, category, number, name, national_id, status,"
                    " failed_logins, created_at) VALUES ('temporary', 'retired_staff', '31002X',"
                    " '张三', :nid, 'active', 0, CURRENT_TIMESTAMP)"
                ),
                {"nid": NID},
            )
        assert await current_revision(engines.writer) == "0006"
    finally:
        await engines.dispose()
    reg = await SqlRegistry.open(target, migrate=True)
    try:
        assert await current_revision(reg.engines.writer) == head_revision()
        async with reg.read() as tx:
            (holder,) = await tx.holders_where(national_id=NID)
        assert holder.id_doc_type is IdDocType.RESIDENT_ID
    finally:
        await reg.close()
    engines = open_engines(target)
    try:  # and back: the column goes, the holder stays
        async with engines.writer.begin() as conn:
            await conn.run_sync(_to("0006", down=True))  # type: ignore[arg-type]
            rows = (await conn.execute(text("SELECT national_id FROM holders"))).all()
        assert [r[0] for r in rows] == [NID]
    finally:
        await engines.dispose()


@pytest.mark.asyncio
async def test_id_doc_type_migration_sqlite(tmp_path: Path) -> None:
    await check_id_doc_type_migration(tmp_path / "registry.sqlite3")


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_id_doc_type_migration_postgres(pg_url: str) -> None:  # noqa: F811 - fixture
    await check_id_doc_type_migration(pg_url)
