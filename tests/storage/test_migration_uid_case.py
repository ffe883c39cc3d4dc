"""Migration 0005: card UIDs typed before validation become canonical, unless that collides
(issue 8, item 10). Runs on SQLite, and on PostgreSQL with the ``postgres`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from protocol.types import CardKind, HolderKind, Permission
from storage.migrate import alembic_config
from storage.sql import SqlRegistry
from tests.conftest import T0, student_rows
from tests.storage.test_postgres_contract import pg_server, pg_url  # noqa: F401 - fixtures

ADMIN = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
TYPED = {  # card -> UID as a clerk typed it before validation
    "a": "04a1b2c3",  # lower case: fixed
    "b": "04:b1:b2:c3",  # separators: fixed
    "c": "04c1c2c3",  # lower case of card d's UID: a collision, left alone
    "d": "04C1C2C3",
    "e": "zz",  # cannot be a UID: left for a clerk
}


async def _execute(reg: SqlRegistry, sql: str, **params: object) -> None:
    async with reg.transaction() as tx:
        await tx.conn.execute(text(sql), params)


async def _seed(target: str | Path) -> dict[str, tuple[int, str]]:
    """Cards a..e with the typed UIDs, a and c reported lost (their deny rows carry the typed
    UID, as the old code wrote them); the schema is then stamped back to 0004."""
    reg = await SqlRegistry.open(target, migrate=True)
    try:
        center = CardCenter.build(Context(registry=reg, clock=FixedClock(T0)))
        await center.stock.purchase(ADMIN, CardKind.TEMP, 10, "2026")
        await center.stock.requisition(ADMIN, CardKind.TEMP, 10, issued_by="科长", usage_note="t")
        rows = student_rows(len(TYPED))
        report = await center.holders.import_roster(ADMIN, HolderKind.STUDENT, rows)
        cards: dict[str, tuple[int, str]] = {}
        for (name, typed), holder_id, row in zip(
            TYPED.items(), report.holder_ids, rows, strict=True
        ):
            card = (await center.cards.issue_temp(ADMIN, holder_id)).card
            await _execute(reg, "UPDATE cards SET uid = :uid WHERE id = :id", uid=typed, id=card.id)
            assert row.student_number is not None
            cards[name] = (card.id, row.student_number)
        for name in ("a", "c"):
            card_id, number = cards[name]
            async with reg.read() as tx:
                serial = (await tx.get_card(card_id)).serial
            await center.cards.report_loss(ADMIN, serial, presented_id=number)
        async with reg.transaction() as tx:  # later migrations undone, then 0005 forgotten
            await tx.conn.run_sync(_downgrade_to_0005)
        await _execute(reg, "UPDATE alembic_version SET version_num = '0004'")
    finally:
        await reg.close()
    return cards


def _downgrade_to_0005(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "0005")


async def check_uid_case_migration(target: str | Path) -> None:
    cards = await _seed(target)
    reg = await SqlRegistry.open(target, migrate=True)
    try:
        async with reg.read() as tx:
            uids = {name: (await tx.get_card(cid)).uid for name, (cid, _) in cards.items()}
            deny = {
                int(r["card_id"]): r["uid"] for r in await tx.rows("SELECT * FROM deny_changes")
            }
        assert uids == {
            "a": "04A1B2C3",
            "b": "04B1B2C3",
            "c": "04c1c2c3",
            "d": "04C1C2C3",
            "e": "zz",
        }
        assert deny == {cards["a"][0]: "04A1B2C3", cards["c"][0]: "04c1c2c3"}
        # the deny-list log is append-only again
        with pytest.raises(DBAPIError) as info:
            await _execute(reg, "UPDATE deny_changes SET uid = 'X'")
        assert "append-only" in str(info.value.orig)
    finally:
        await reg.close()


@pytest.mark.asyncio
async def test_uid_case_migration_sqlite(tmp_path: Path) -> None:
    await check_uid_case_migration(tmp_path / "registry.sqlite3")


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_uid_case_migration_postgres(pg_url: str) -> None:  # noqa: F811 - fixture
    await check_uid_case_migration(pg_url)
