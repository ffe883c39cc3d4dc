"""One posting rule for money (storage/posting.py), four ways to run it: the counter's
transaction on SQLite and on PostgreSQL, the SQLite tap writer and the PostgreSQL tap executor.
The same postings give the same accounts, balances and transfer rows on all four, and the same
refusal leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from protocol import ledger
from protocol.errors import InsufficientFunds
from protocol.ledger import TransferSpec
from storage.pgtap import PgTapExecutor
from storage.posting import (
    CreditGuarded,
    DebitGuarded,
    InsertTransfer,
    InsertTransfers,
    MoveMany,
    MoveUnguarded,
    ReadBalance,
    posting,
    posting_many,
)
from storage.records import Row
from storage.sql import SqlRegistry
from storage.tapwriter import SqliteTapWriter
from tests.storage.test_postgres_contract import pg_server, pg_url  # noqa: F401 - fixtures
from tests.storage.test_tapwriter import NOW, _seed

#: post(spec, holder_id) in a transaction of its own: the source's balance after where the path
#: reports it (the tap path), else None
Post = Callable[[TransferSpec, int | None], Awaitable[int | None]]


def test_the_rule_is_one_plan_of_typed_operations() -> None:
    """A guarded source is debited conditionally, an unguarded one moved; the purse side is
    credited for its holder; the transfer row last. A refused debit reads the balance for the
    message and writes nothing more."""
    plan = posting(ledger.purchase(7, "c1", 300), at=NOW, actor="t", card_id=3)
    assert next(plan) == DebitGuarded("purse:7", 300)
    assert plan.send(700) == MoveUnguarded("merchant:c1", 300)
    op = plan.send(300)
    assert isinstance(op, InsertTransfer)
    assert op.values[:4] == ("purchase", "purse:7", "merchant:c1", 300) and op.values[7] == 3
    with pytest.raises(StopIteration) as done:
        plan.send(41)
    assert done.value.value == (41, 700)

    topup = posting(ledger.topup(7, 50, ledger.cash()), at=NOW, actor="t", holder_id=7)
    assert next(topup) == MoveUnguarded("cash:counter", -50)
    assert topup.send(-50) == CreditGuarded("purse:7", 50, 7)

    refused = posting(ledger.purchase(7, "c1", 300), at=NOW, actor="t")
    assert next(refused) == DebitGuarded("purse:7", 300)
    assert refused.send(None) == ReadBalance("purse:7")
    with pytest.raises(InsufficientFunds, match="have 12 fen"):
        refused.send(12)


def test_the_bulk_form_moves_each_account_once_in_account_order() -> None:
    specs = [ledger.topup(9, 20, ledger.cash()), ledger.topup(7, 30, ledger.cash())]
    plan = posting_many(specs, at=NOW, actor="t", card_ids=[1, 2])
    assert next(plan) == MoveMany(
        (("cash:counter", -50, None), ("purse:7", 30, 7), ("purse:9", 20, 9))
    )
    rows = plan.send(None)
    assert isinstance(rows, InsertTransfers) and [r[7] for r in rows.rows] == [1, 2]
    with pytest.raises(ValueError, match="cannot debit purse:7"):
        next(posting_many([ledger.purchase(7, "c1", 1)], at=NOW, actor="t", card_ids=[None]))


async def _other_holder(registry: SqlRegistry) -> int:
    async with registry.transaction() as tx:
        return await tx.insert(
            "holders",
            {"kind": "staff", "category": "staff", "number": "2", "name": "乙", "created_at": NOW},
        )


@asynccontextmanager
async def _counter(url: str | Path) -> AsyncIterator[tuple[SqlRegistry, Post]]:
    registry = await SqlRegistry.open(url, migrate=True)

    async def post(spec: TransferSpec, holder_id: int | None) -> int | None:
        async with registry.transaction() as tx:
            await tx.post(spec, at=NOW, actor="t", holder_id=holder_id)
        return None

    try:
        yield registry, post
    finally:
        await registry.close()


@asynccontextmanager
async def _sqlite_tap(path: Path) -> AsyncIterator[tuple[SqlRegistry, Post]]:
    registry = await SqlRegistry.open(path, migrate=True)
    writer = SqliteTapWriter(path)
    writer.start()

    async def post(spec: TransferSpec, holder_id: int | None) -> int | None:
        return await writer.run(
            lambda tx: tx.post_returning(spec, at=NOW, actor="t", holder_id=holder_id)[1]
        )

    try:
        yield registry, post
    finally:
        await writer.close()
        await registry.close()


@asynccontextmanager
async def _pg_tap(url: str) -> AsyncIterator[tuple[SqlRegistry, Post]]:
    registry = await SqlRegistry.open(url, migrate=True)
    executor = PgTapExecutor(url)
    await executor.start()

    async def post(spec: TransferSpec, holder_id: int | None) -> int | None:
        return await executor.run(
            lambda tx: tx.post_returning(spec, at=NOW, actor="t", holder_id=holder_id)[1]
        )

    try:
        yield registry, post
    finally:
        await executor.close()
        await registry.close()


Opener = Callable[[Any], AbstractAsyncContextManager[tuple[SqlRegistry, Post]]]


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["counter", "tap"])
async def test_the_same_postings_give_the_same_ledger_on_sqlite(path: str, tmp_path: Path) -> None:
    await _same_ledger(_counter if path == "counter" else _sqlite_tap, tmp_path / "r.sqlite3")


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.parametrize("path", ["counter", "tap"])
async def test_the_same_postings_give_the_same_ledger_on_postgresql(
    path: str,
    pg_url: str,  # noqa: F811
) -> None:
    await _same_ledger(_counter if path == "counter" else _pg_tap, pg_url)


async def _same_ledger(opened: Opener, target: str | Path) -> None:
    tap = opened is not _counter
    async with opened(target) as (registry, post):
        holder = await _seed(registry)  # 1,000 fen in the purse from the counter's cash
        other = await _other_holder(registry)
        assert await post(ledger.purchase(holder, "c1", 300), holder) == (700 if tap else None)
        with pytest.raises(InsufficientFunds, match="have 700 fen"):
            await post(ledger.purchase(holder, "c1", 800), holder)
        await post(ledger.freeze(holder, 200), holder)  # creates the hold for its holder
        await post(ledger.topup(other, 50, ledger.external("wechat")), other)
        with pytest.raises(InsufficientFunds, match="have 50 fen"):
            await post(ledger.purchase(other, "c1", 51), other)
        with pytest.raises(InsufficientFunds, match="have 0 fen"):  # no deposit account yet
            await post(ledger.deposit_out(other, 1), other)

        async with registry.read() as tx:
            accounts = await tx.rows(
                "SELECT id, kind, holder_id, balance FROM accounts ORDER BY id"
            )
            transfers = await tx.rows(
                "SELECT kind, source, dest, amount, actor FROM transfers ORDER BY id"
            )
    expected: list[Row] = [
        {"id": "cash:counter", "kind": "cash", "holder_id": None, "balance": -1000},
        {"id": "external:wechat", "kind": "external", "holder_id": None, "balance": -50},
        {"id": f"hold:{holder}", "kind": "hold", "holder_id": holder, "balance": 200},
        {"id": "merchant:c1", "kind": "merchant", "holder_id": None, "balance": 300},
        {"id": f"purse:{holder}", "kind": "purse", "holder_id": holder, "balance": 500},
        {"id": f"purse:{other}", "kind": "purse", "holder_id": other, "balance": 50},
    ]
    assert accounts == expected
    assert sum(a["balance"] for a in accounts) == 0
    assert [(t["kind"], t["source"], t["dest"], t["amount"]) for t in transfers] == [
        ("topup", "cash:counter", f"purse:{holder}", 1000),
        ("purchase", f"purse:{holder}", "merchant:c1", 300),
        ("freeze", f"purse:{holder}", f"hold:{holder}", 200),
        ("topup", "external:wechat", f"purse:{other}", 50),
    ]


@pytest.mark.asyncio
async def test_bulk_topups_on_sqlite(tmp_path: Path) -> None:
    await _bulk(tmp_path / "r.sqlite3")


@pytest.mark.asyncio
@pytest.mark.postgres
async def test_bulk_topups_on_postgresql(pg_url: str) -> None:  # noqa: F811
    await _bulk(pg_url)


async def _bulk(target: str | Path) -> None:
    """The counter's top-up batch (post_many): every account once, owners set, rows in order."""
    async with _counter(target) as (registry, _):
        holder = await _seed(registry)
        other = await _other_holder(registry)
        specs = [
            ledger.topup(holder, 200, ledger.cash()),
            ledger.topup(other, 30, ledger.cash("p2")),
            ledger.topup(other, 20, ledger.cash()),
        ]
        async with registry.transaction() as tx:
            await tx.post_many(specs, at=NOW, actor="t", card_ids=[None, None, None])
        with pytest.raises(ValueError, match="cannot debit"):
            async with registry.transaction() as tx:
                await tx.post_many(
                    [ledger.purchase(holder, "c1", 1)], at=NOW, actor="t", card_ids=[None]
                )
        async with registry.read() as tx:
            accounts = await tx.rows(
                "SELECT id, kind, holder_id, balance FROM accounts ORDER BY id"
            )
            amounts = [
                r["amount"] for r in await tx.rows("SELECT amount FROM transfers ORDER BY id")
            ]
    assert accounts == [
        {"id": "cash:counter", "kind": "cash", "holder_id": None, "balance": -1220},
        {"id": "cash:p2", "kind": "cash", "holder_id": None, "balance": -30},
        {"id": f"purse:{holder}", "kind": "purse", "holder_id": holder, "balance": 1200},
        {"id": f"purse:{other}", "kind": "purse", "holder_id": other, "balance": 50},
    ]
    assert amounts == [1000, 200, 30, 20]
