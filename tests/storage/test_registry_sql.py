"""The registry's database guarantees on a real SQLite file (ARCHITECTURE.md §5).

The ledger and the registers are append-only (triggers refuse UPDATE and DELETE); CHECK
constraints keep purses, holds and deposits non-negative and amounts positive; datetimes go in
aware and come back aware UTC; the SQLite writer runs in WAL mode with ``synchronous=FULL`` and
foreign keys on. The check coroutines here are reused by the PostgreSQL contract test.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, insert, update
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from protocol.errors import Duplicate, NotFound
from protocol.ledger import cash, merchant, purchase, purse, topup
from storage import schema as s
from storage.engine import BUSY_TIMEOUT_MS
from storage.sql import SqlRegistry, SqlTx

T0 = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)
CST = timezone(timedelta(hours=8))


async def seed_append_only(tx: SqlTx, at: datetime = T0) -> dict[str, int]:
    """One row in every append-only table; returns table name -> primary key."""
    holder = await tx.insert(
        "holders",
        {"kind": "student", "category": "student", "name": "测试", "created_at": at},
    )
    card = await tx.insert(
        "cards",
        {
            "serial": f"S{holder:08d}",
            "kind": "smart",
            "holder_id": holder,
            "state": "active",
            "created_at": at,
            "updated_at": at,
        },
    )
    ids: dict[str, int] = {}
    ids["transfers"] = await tx.post(topup(holder, 1_000, cash()), at=at, actor="tester")
    ids["card_events"] = await tx.insert(
        "card_events",
        {
            "card_id": card,
            "event": "report_loss",
            "from_state": "active",
            "to_state": "lost",
            "rule": "LOSS-1",
            "at": at,
            "actor": "tester",
            "channel": "counter",
        },
    )
    ids["audit_log"] = await tx.insert(
        "audit_log",
        {"at": at, "actor": "tester", "action": "seed", "entity": "card", "entity_id": str(card)},
    )
    ids["deny_changes"] = await tx.insert(
        "deny_changes",
        {
            "card_id": card,
            "serial": f"S{holder:08d}",
            "change": "lost",
            "denied": True,
            "at": at,
        },
    )
    ids["holder_archive"] = await tx.insert(
        "holder_archive",
        {"holder_id": holder, "at": at, "actor": "tester", "reason": "seed", "snapshot": "{}"},
    )
    ids["scrap_register"] = await tx.insert(
        "scrap_register",
        {
            "card_id": card,
            "serial": f"S{holder:08d}",
            "card_kind": "smart",
            "reason": "refund",
            "at": at,
            "actor": "tester",
        },
    )
    book = await tx.insert(
        "receipt_books",
        {
            "book_no": f"B{holder:06d}",
            "first_no": holder * 1000,
            "last_no": holder * 1000 + 49,
            "received_at": at,
            "received_by": "tester",
        },
    )
    ids["receipts"] = await tx.insert(
        "receipts",
        {
            "receipt_no": holder * 1000,
            "book_id": book,
            "holder_id": holder,
            "payer": "测试",
            "item": "deposit",
            "amount": 1_000,
            "at": at,
            "cashier": "tester",
            "transfer_id": ids["transfers"],
        },
    )
    ids["hand_overs"] = await tx.insert(
        "hand_overs",
        {
            "card_id": card,
            "rule": "REP-4",
            "at": at,
            "actor": "tester",
            "collector_name": "测试",
            "collector_is_holder": True,
            "signed": True,
        },
    )
    return ids


async def _row(reg: SqlRegistry, table: str, key: int) -> dict[str, object] | None:
    async with reg.read() as tx:
        return await tx.get(table, key)


async def check_append_only(reg: SqlRegistry) -> None:
    """UPDATE and DELETE on every append-only table abort; the row is still there, unchanged."""
    async with reg.transaction() as tx:
        ids = await seed_append_only(tx)
    assert set(ids) == set(s.APPEND_ONLY)
    for name in s.APPEND_ONLY:
        table = s.metadata.tables[name]
        pk = next(iter(table.primary_key.columns))
        before = await _row(reg, name, ids[name])
        assert before is not None
        target_col = "actor" if "actor" in table.c else "serial" if "serial" in table.c else "at"
        new_value: object = T0 + timedelta(days=1) if target_col == "at" else "mallory"
        statements = [
            update(table).where(pk == ids[name]).values({target_col: new_value}),
            delete(table).where(pk == ids[name]),
            delete(table),  # a whole-table wipe, too
        ]
        for statement in statements:
            with pytest.raises(DBAPIError) as info:
                async with reg.transaction() as tx:
                    await tx.conn.execute(statement)
            assert "append-only" in str(info.value.orig), (name, info.value)
        assert await _row(reg, name, ids[name]) == before, name


async def check_constraints(reg: SqlRegistry) -> None:
    """CHECK constraints: protected balances never negative, amounts always positive."""
    async with reg.transaction() as tx:
        await tx.post(topup(7, 500, cash()), at=T0, actor="tester")
        await tx.post(purchase(7, "canteen1", 200), at=T0, actor="tester")
    for account in (purse(7),):
        with pytest.raises(IntegrityError):
            async with reg.transaction() as tx:
                await tx.conn.execute(
                    update(s.accounts).where(s.accounts.c.id == account).values(balance=-1)
                )
    # hold and deposit accounts are protected too
    for account, kind in (("hold:7", "hold"), ("deposit:7", "deposit")):
        with pytest.raises(IntegrityError):
            async with reg.transaction() as tx:
                await tx.conn.execute(insert(s.accounts).values(id=account, kind=kind, balance=-5))
    # a cash drawer may go negative: money outside the system
    async with reg.transaction() as tx:
        assert await tx.balance(cash()) == -500
        assert await tx.balance(merchant("canteen1")) == 200
    for amount in (0, -100):
        with pytest.raises(IntegrityError):
            async with reg.transaction() as tx:
                await tx.conn.execute(
                    insert(s.transfers).values(
                        kind="purchase",
                        source=purse(7),
                        dest=merchant("canteen1"),
                        amount=amount,
                        at=T0,
                        actor="tester",
                    )
                )
    with pytest.raises(IntegrityError):
        async with reg.transaction() as tx:
            await tx.conn.execute(
                insert(s.transfers).values(
                    kind="purchase",
                    source=purse(7),
                    dest=purse(7),
                    amount=1,
                    at=T0,
                    actor="tester",
                )
            )
    async with reg.read() as tx:
        assert await tx.balance(purse(7)) == 300


async def check_utc_round_trip(reg: SqlRegistry) -> None:
    """UtcDateTime: aware in (any offset), aware UTC out, same instant; naive refused."""
    campus = datetime(2026, 11, 23, 10, 5, 7, 123456, tzinfo=CST)
    async with reg.transaction() as tx:
        key = await tx.insert(
            "audit_log",
            {"at": campus, "actor": "t", "action": "a", "entity": "e", "entity_id": "1"},
        )
    async with reg.read() as tx:
        row = await tx.get("audit_log", key)
    assert row is not None
    back = row["at"]
    assert isinstance(back, datetime)
    assert back == campus
    assert back.utcoffset() == timedelta(0)
    assert back.tzinfo is not None
    assert (back.hour, back.minute, back.microsecond) == (2, 5, 123456)
    with pytest.raises(StatementError) as info:
        async with reg.transaction() as tx:
            await tx.conn.execute(
                insert(s.audit_log).values(
                    at=datetime(2026, 11, 23, 10, 5),  # naive: the value under test
                    actor="t",
                    action="a",
                    entity="e",
                    entity_id="2",
                )
            )
    assert isinstance(info.value.orig, ValueError)
    assert "naive" in str(info.value.orig)
    async with reg.read() as tx:
        assert await tx.count("audit_log", entity_id="2") == 0


async def check_generic_rows(reg: SqlRegistry) -> None:
    """Generic rows: server defaults (booleans, counters), update, find/count, receipts, bools."""
    async with reg.transaction() as tx:
        ids = await seed_append_only(tx)
        card = (await tx.find("cards"))[0]
        assert card["card_write_pending"] is False  # Boolean server default
        assert card["type_group"] == 0
        holder = await tx.get_holder(int(card["holder_id"]))
        assert holder.status == "active"
        await tx.update("cards", card["id"], {"state": "lost", "updated_at": T0})
        with pytest.raises(NotFound):
            await tx.update("cards", 987654, {"state": "lost"})
        assert await tx.count("cards", state="lost") == 1
        assert await tx.count("cards", state="active") == 0
        assert len(await tx.find("cards", kind="smart", state="lost")) == 1
        assert await tx.count("cards") == 1  # no filter at all
        unlocked = await tx.insert(
            "deny_changes",
            {
                "card_id": card["id"],
                "serial": card["serial"],
                "change": "unlocked",
                "denied": False,
                "at": T0,
            },
        )
        assert unlocked > ids["deny_changes"]  # versions grow
        rows = await tx.find("deny_changes", order_by="version")
        assert [r["denied"] for r in rows] == [True, False]
        receipt = await tx.issue_receipt(
            holder_id=None,
            payer="测试",
            item="fee",
            amount=500,
            at=T0,
            cashier="tester",
            transfer_id=ids["transfers"],
        )
        assert receipt.receipt_no == int(card["holder_id"]) * 1000 + 1  # next in the open book
    card_count, receipt_count = 1, 2

    async def duplicate_card() -> None:
        async with reg.transaction() as tx:
            await tx.audit(T0, "tester", "attempt", "card", card["id"])
            await tx.insert("cards", {k: v for k, v in card.items() if k != "id"})

    # a Duplicate propagates and the whole transaction rolls back (on PostgreSQL the failed
    # statement has aborted the transaction anyway: nothing may continue in it)
    with pytest.raises(Duplicate):
        await duplicate_card()
    async with reg.read() as tx:
        assert await tx.count("cards") == card_count
        assert await tx.count("receipts") == receipt_count
        assert await tx.count("audit_log") == 1  # only the seeded row
        report = await tx.rows(
            "SELECT COUNT(*) AS n FROM transfers WHERE amount >= :low", {"low": 1}
        )
    assert report == [{"n": 1}]


@pytest.mark.asyncio
async def test_append_only_tables_refuse_update_and_delete(registry: SqlRegistry) -> None:
    await check_append_only(registry)


@pytest.mark.asyncio
async def test_generic_update_on_the_ledger_is_refused(registry: SqlRegistry) -> None:
    """Even the registry's own generic ``update`` cannot rewrite a transfer."""
    async with registry.transaction() as tx:
        ids = await seed_append_only(tx)
    with pytest.raises(DBAPIError):
        async with registry.transaction() as tx:
            await tx.update("transfers", ids["transfers"], {"amount": 1})
    async with registry.read() as tx:
        assert (await tx.get_transfer(ids["transfers"])).amount == 1_000


@pytest.mark.asyncio
async def test_generic_rows(registry: SqlRegistry) -> None:
    await check_generic_rows(registry)


@pytest.mark.asyncio
async def test_check_constraints(registry: SqlRegistry) -> None:
    await check_constraints(registry)


@pytest.mark.asyncio
async def test_utc_datetime_round_trip(registry: SqlRegistry) -> None:
    await check_utc_round_trip(registry)


@pytest.mark.asyncio
async def test_sqlite_pragmas_on_the_writer(registry: SqlRegistry) -> None:
    """WAL, synchronous=FULL (2), foreign keys; readers wait with SQLite's busy timeout, writers
    with their own short-step BEGIN IMMEDIATE retry (busy_timeout 0; tested below)."""
    for engine, expected_busy in (
        (registry.engines.writer, 0),
        (registry.engines.reader, BUSY_TIMEOUT_MS),
    ):
        async with engine.connect() as conn:
            journal = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one()
            foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
            busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
        assert str(journal).lower() == "wal"
        assert int(synchronous) == 2  # FULL
        assert int(foreign_keys) == 1
        assert int(busy) == expected_busy


@pytest.mark.asyncio
async def test_foreign_keys_are_enforced(registry: SqlRegistry) -> None:
    with pytest.raises(IntegrityError):
        async with registry.transaction() as tx:
            await tx.conn.execute(
                insert(s.cards).values(
                    serial="S1",
                    kind="smart",
                    holder_id=424242,
                    state="active",
                    created_at=T0,
                    updated_at=T0,
                )
            )


@pytest.mark.asyncio
async def test_writer_begins_immediate(registry: SqlRegistry) -> None:
    """A write transaction takes the write lock at BEGIN (no deadlocking lock upgrade later)."""
    database = registry.engines.writer.url.database
    assert database is not None
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        async with registry.transaction():
            # nothing executed yet, but BEGIN IMMEDIATE already holds the RESERVED lock
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            # a deferred reader is not blocked (WAL)
            async with registry.read() as reader:
                assert await reader.count("accounts") == 0
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()
