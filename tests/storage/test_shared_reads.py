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
        hold = await tx.insert(
            "water_holds",
            {
                "terminal_id": "water-1",
                "card_id": card,
                "holder_id": holder,
                "amount": 500,
                "state": "held",
                "created_at": NOW,
            },
        )
        for seq in (3, 1):
            await tx.put(
                "offline_sales",
                {
                    "terminal_id": "pos-1",
                    "seq": seq,
                    "card_uid": UID,
                    "amount": 200,
                    "sold_at": NOW,
                    "uploaded_at": NOW,
                    "result": "accepted",
                },
            )
        await tx.put(
            "holder_sessions",
            {
                "token_hash": "ab" * 32,
                "holder_id": holder,
                "terminal_id": "kiosk-1",
                "created_at": NOW,
                "expires_at": NOW,
            },
        )
    return {"holder": holder, "card": card, "bought": bought, "version": version, "hold": hold}


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


def _registers(tx: TapTx, ids: dict[str, Any]) -> list[Any]:
    """The tap path's own registers, read by typed operations."""
    return [
        tx.water_hold(ids["hold"]),
        tx.water_hold(ids["hold"] + 1) or tx.water_hold(2**40) or tx.water_hold(-1),
        tx.offline_sale_seen("pos-1", 3),
        tx.offline_sale_seen("pos-1", 2),
        tx.offline_sale_seen("pos-2", 1),
        tx.offline_seqs("pos-1"),
        [r["seq"] for r in tx.offline_sales_of_card("pos-1", UID)],
        tx.offline_sales_of_card("pos-1", "04FFFFFFFF"),
        [(r["version"], r["change"], r["at"]) for r in tx.deny_changes_of_card(ids["card"])],
        tx.deny_change(ids["version"] + 1),
        tx.holder_session("ab" * 32),
        tx.holder_session("cd" * 32),
    ]


def _writes(tx: TapTx, ids: dict[str, Any]) -> list[Any]:
    """The tap path's register writes by typed operations, read back."""
    tx.put(
        "terminals",
        {
            "id": "pos-9",
            "kind": "pos",
            "mqtt_password_hash": "x",
            "created_at": NOW,
            "updated_at": NOW,
        },
    )
    tx.terminal_hello("pos-9", firmware="1.2", denylist_version=1, at=NOW)
    tx.terminal_heartbeat("pos-9", denylist_version=2, at=NOW)
    hold = tx.open_water_hold(
        terminal_id="water-1", card_id=ids["card"], holder_id=ids["holder"], amount=300, at=NOW
    )
    tx.close_water_hold(hold, state="settled", used=120, at=NOW)
    tx.record_offline_sale(
        {
            "terminal_id": "pos-9",
            "seq": 7,
            "card_uid": UID,
            "amount": 50,
            "sold_at": NOW,
            "uploaded_at": NOW,
            "result": "accepted",
        }
    )
    tx.add_holder_alert(
        {
            "holder_id": ids["holder"],
            "card_id": ids["card"],
            "kind": "low_balance",
            "at": NOW,
            "terminal_id": "pos-9",
            "balance": 10,
        }
    )
    tx.record_reply("pos-9", "r-1", "purchase", "f", '{"ok":true}', NOW)
    terminal = tx.get("terminals", "pos-9")
    assert terminal is not None
    closed = tx.water_hold(hold)
    assert closed is not None
    return [
        (terminal["firmware"], terminal["denylist_version"], terminal["last_seen_at"]),
        (closed["state"], closed["used"], closed["amount"], closed["closed_at"]),
        tx.offline_seqs("pos-9"),
        [r["balance"] for r in tx.find("holder_alerts", terminal_id="pos-9")],
        {k: v for k, v in (tx.idempotency_record("pos-9", "r-1") or {}).items() if k != "at"},
        tx.idempotency_record("pos-9", "r-2"),
    ]


WRITTEN = [
    ("1.2", 2, NOW),
    ("settled", 120, 300, NOW),
    [7],
    [10],
    {
        "terminal_id": "pos-9",
        "request_id": "r-1",
        "op": "purchase",
        "fingerprint": "f",
        "reply": '{"ok":true}',
    },
    None,
]


async def _check_counter_records(registry: SqlRegistry, registers: list[Any]) -> None:
    """The counter's side of the same records (its async ``Tx``), after the tap's writes."""
    async with registry.read() as tx:
        record = await tx.idempotency_record("pos-9", "r-1")
        assert record is not None
        assert {k: v for k, v in record.items() if k != "at"} == WRITTEN[4]
        assert await tx.idempotency_record("pos-9", "r-2") is None
        assert await tx.holder_session("ab" * 32) == registers[10]
        terminal = await tx.terminal_record("pos-9")
        assert terminal is not None and terminal["denylist_version"] == 2
        assert await tx.terminal_record("pos-10") is None


def _check_registers(reads: list[Any], ids: dict[str, Any]) -> None:
    hold, no_hold, *seen = reads[:5]
    assert hold is not None and hold["state"] == "held" and hold["created_at"] == NOW
    assert no_hold is None
    assert seen == [True, False, False]
    assert reads[5] == [1, 3]
    assert sorted(reads[6]) == [1, 3]
    assert reads[7] == []
    assert reads[8] == [(ids["version"], "lost", NOW)]
    assert reads[9] is None
    assert reads[10]["holder_id"] == ids["holder"] and reads[10]["expires_at"] == NOW
    assert reads[11] is None


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
            registers = _registers(SqliteTapTx(conn), ids)
            written = _writes(SqliteTapTx(conn), ids)
            await _check_counter_records(registry, registers)
            with pytest.raises(NotFound):
                SqliteTapTx(conn).get_holder(ids["holder"] + 1)
        finally:
            conn.close()
    finally:
        await registry.close()
    _check(counter, ids)
    assert tap == counter
    _check_registers(registers, ids)
    assert written == WRITTEN


@pytest.mark.postgres
async def test_three_paths_one_definition_on_postgres(pg_url: str) -> None:  # noqa: F811
    registry = await SqlRegistry.open(pg_url, migrate=True)
    executor = PgTapExecutor(pg_url)
    await executor.start()
    try:
        ids = await seed(registry)
        counter = await _counter_reads(registry, ids)
        tap = await executor.run(lambda tx: _tap_reads(tx, ids))
        registers = await executor.run(lambda tx: _registers(tx, ids))
        written = await executor.run(lambda tx: _writes(tx, ids))
        await _check_counter_records(registry, registers)
        with pytest.raises(NotFound):
            await executor.run(lambda tx: tx.get_transfer(ids["bought"] + 99))
    finally:
        await executor.close()
        await registry.close()
    _check(counter, ids)
    assert tap == counter
    _check_registers(registers, ids)
    assert written == WRITTEN
