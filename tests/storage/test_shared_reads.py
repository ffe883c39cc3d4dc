"""The seven shared reads (storage/queries.py) give the same records on all three paths: the
counter's SQLAlchemy transaction, the SQLite tap writer (sqlite3) and the PostgreSQL tap executor
(asyncpg), each from one definition compiled for its driver (issue 12)."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from protocol import ledger
from protocol.errors import NotFound
from storage.pgtap import PgTapExecutor
from storage.ports import TapTx
from storage.sql import SqlRegistry, SqlTx
from storage.tapwriter import SqliteTapTx
from tests.storage.test_postgres_contract import pg_server, pg_url  # noqa: F401 - fixtures
from tests.storage.test_tapwriter import NOW

pytestmark = pytest.mark.asyncio
UID = "04A1B2C3D4"


async def seed(registry: SqlRegistry) -> dict[str, Any]:
    async with registry.transaction() as tx:
        holder = await tx.insert(
            "holders",
            {
                "kind": "student",
                "category": "student",
                "number": "2026001",
                "name": "甲",
                "national_id": "110101200001011234",
                "created_at": NOW,
            },
        )
        card = await tx.insert(
            "cards",
            {
                "holder_id": holder,
                "serial": "00000001",
                "uid": UID,
                "kind": "smart",
                "state": "active",
                "ready_on": date(2026, 12, 1),
                "valid_until": NOW,
                "created_at": NOW,
                "updated_at": NOW,
            },
        )
        await tx.post(ledger.topup(holder, 1_000, ledger.cash()), at=NOW, actor="t")
        spec = ledger.purchase(holder, "c1", 300)
        bought = await tx.post(spec, at=NOW, actor="t", card_id=card)
        await tx.post(ledger.reversal(spec, bought), at=NOW, actor="t")
        version = await tx.add_deny_change(await tx.get_card(card), "lost", True, NOW)
    return {"holder": holder, "card": card, "bought": bought, "version": version}


async def _counter_reads(registry: SqlRegistry, ids: dict[str, Any]) -> list[Any]:
    async with registry.read() as tx:
        return await _async_reads(tx, ids)


async def _async_reads(tx: SqlTx, ids: dict[str, Any]) -> list[Any]:
    purse = ledger.purse(ids["holder"])
    return [
        await tx.get_holder(ids["holder"]),
        await tx.get_transfer(ids["bought"]),
        await tx.transfers_of(purse),
        await tx.transfers_of(purse, 1),
        await tx.referencing_total(ids["bought"]),
        await tx.deny_changes_after(0),
        await tx.deny_changes_after(0, -1),
        await tx.deny_changes_after(ids["version"]),
        await tx.card_by_uid(UID),
        await tx.card_by_uid("04FFFFFFFF"),
        await tx.balance(purse),
        await tx.balance("purse:999999"),
    ]


def _tap_reads(tx: TapTx, ids: dict[str, Any]) -> list[Any]:
    purse = ledger.purse(ids["holder"])
    return [
        tx.get_holder(ids["holder"]),
        tx.get_transfer(ids["bought"]),
        tx.transfers_of(purse),
        tx.transfers_of(purse, 1),
        tx.referencing_total(ids["bought"]),
        tx.deny_changes_after(0),
        tx.deny_changes_after(0, -1),
        tx.deny_changes_after(ids["version"]),
        tx.card_by_uid(UID),
        tx.card_by_uid("04FFFFFFFF"),
        tx.balance(purse),
        tx.balance("purse:999999"),
    ]


def _check(reads: list[Any], ids: dict[str, Any]) -> None:
    holder, transfer, history, newest, total, changes, every, none, card, no_card = reads[:10]
    assert holder.national_id == "110101200001011234"  # opened, not the sealed token
    assert transfer.amount == 300 and transfer.card_id == ids["card"]
    assert [t.kind for t in history] == ["reversal", "purchase", "topup"]
    assert newest == history[:1]
    assert total == 300
    assert (
        changes
        == every
        == [
            {
                "version": ids["version"],
                "card_id": ids["card"],
                "uid": UID,
                "change": "lost",
                "denied": True,
            }
        ]
    )
    assert changes[0]["denied"] is True
    assert none == []
    assert card.ready_on == date(2026, 12, 1) and card.valid_until == NOW
    assert no_card is None
    assert reads[10:] == [1_000, 0]


async def test_three_paths_one_definition_on_sqlite(tmp_path: Path) -> None:
    registry = await SqlRegistry.open(tmp_path / "r.sqlite3", migrate=True)
    try:
        ids = await seed(registry)
        counter = await _counter_reads(registry, ids)
        conn = sqlite3.connect(tmp_path / "r.sqlite3", isolation_level=None)
        try:
            tap = _tap_reads(SqliteTapTx(conn), ids)
            with pytest.raises(NotFound):
                SqliteTapTx(conn).get_holder(ids["holder"] + 1)
        finally:
            conn.close()
    finally:
        await registry.close()
    _check(counter, ids)
    assert tap == counter


@pytest.mark.postgres
async def test_three_paths_one_definition_on_postgres(pg_url: str) -> None:  # noqa: F811
    registry = await SqlRegistry.open(pg_url, migrate=True)
    executor = PgTapExecutor(pg_url)
    await executor.start()
    try:
        ids = await seed(registry)
        counter = await _counter_reads(registry, ids)
        tap = await executor.run(lambda tx: _tap_reads(tx, ids))
        with pytest.raises(NotFound):
            await executor.run(lambda tx: tx.get_transfer(ids["bought"] + 99))
    finally:
        await executor.close()
        await registry.close()
    _check(counter, ids)
    assert tap == counter
