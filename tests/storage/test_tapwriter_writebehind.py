"""The tap writer's write-behind (issue 14): a batch's ledger writes are decided on cached
balances and written by a few ``executemany`` statements before the COMMIT. Each test would
fail on a write-behind that let a read miss what the batch did, trusted a balance another
connection changed, or let one bad job take the batch down."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from protocol import ledger
from protocol.errors import InsufficientFunds
from storage.sql import SqlRegistry
from storage.tapwriter import SqliteTapTx, SqliteTapWriter
from tests.storage.test_tapwriter import _seed

pytestmark = pytest.mark.asyncio
NOW = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
Job = Callable[[SqliteTapTx], Any]


async def _open(tmp_path: Path) -> tuple[SqlRegistry, int, SqliteTapWriter]:
    registry = await SqlRegistry.open(tmp_path / "r.sqlite3", migrate=True)
    holder = await _seed(registry)  # purse 1,000 fen, terminal pos-1
    writer = SqliteTapWriter(tmp_path / "r.sqlite3")
    writer.start()
    return registry, holder, writer


def _buy(holder: int, amount: int, **kw: Any) -> Job:
    def job(tx: SqliteTapTx) -> tuple[int, int]:
        return tx.post_returning(ledger.purchase(holder, "c1", amount), at=NOW, actor="t", **kw)

    return job


async def test_a_batch_reads_what_it_deferred(tmp_path: Path) -> None:
    registry, holder, writer = await _open(tmp_path)
    purse = ledger.purse(holder)
    try:
        seen: dict[str, Any] = {}

        def first(tx: SqliteTapTx) -> tuple[int, int]:
            tid, after = _buy(holder, 100)(tx)
            tx.record_reply("pos-1", "r-1", "purchase", "f1", '{"ok":true}', NOW)
            seen["tid"] = tid
            return tid, after

        def reader(tx: SqliteTapTx) -> None:
            seen["balance"] = tx.balance(purse)
            seen["idempotent"] = tx.idempotent("pos-1", "r-1")
            seen["record"] = tx.idempotency_record("pos-1", "r-1")  # a generic read: flushes
            seen["transfer"] = tx.get_transfer(seen["tid"])
            seen["history"] = [t.id for t in tx.transfers_of(purse)]

        results = await writer.run_many([first, reader, _buy(holder, 200)])
        assert writer.batches == 1
        tid = seen["tid"]
        assert results[0] == (tid, 900)
        assert results[2] == (tid + 1, 700)
        assert seen["balance"] == 900
        assert seen["idempotent"] == ("f1", '{"ok":true}')
        assert seen["record"] is not None and seen["record"]["op"] == "purchase"
        assert seen["transfer"].amount == 100
        assert tid in seen["history"]
        async with registry.read() as tx:
            assert await tx.balance(purse) == 700
            assert await tx.balance(ledger.merchant("c1")) == 300
            ids = sorted(r["id"] for r in await tx.find("transfers", kind="purchase"))
            assert ids == [tid, tid + 1]
            assert await tx.idempotency_record("pos-1", "r-1") is not None
    finally:
        await writer.close()
        await registry.close()


async def test_an_overdraft_is_refused_on_the_cached_balance(tmp_path: Path) -> None:
    registry, holder, writer = await _open(tmp_path)
    try:
        results = await writer.run_many([_buy(holder, 600), _buy(holder, 600), _buy(holder, 400)])
        assert results[0] == (results[0][0], 400)  # type: ignore[index]
        refused = results[1]
        assert isinstance(refused, InsufficientFunds)
        assert "have 400 fen" in refused.message_en
        assert results[2][1] == 0  # type: ignore[index]
        async with registry.read() as tx:
            assert await tx.balance(ledger.purse(holder)) == 0
            assert len(await tx.find("transfers", kind="purchase")) == 2
    finally:
        await writer.close()
        await registry.close()


async def test_balances_and_ids_follow_the_counter_between_batches(tmp_path: Path) -> None:
    registry, holder, writer = await _open(tmp_path)
    purse = ledger.purse(holder)
    try:
        tid1, after1 = await writer.run(_buy(holder, 100))
        assert after1 == 900
        async with registry.transaction() as tx:  # the counter, on another connection
            counter_tid = await tx.post(
                ledger.topup(holder, 500, ledger.cash()), at=NOW, actor="clerk", holder_id=holder
            )
        assert counter_tid == tid1 + 1
        tid2, after2 = await writer.run(_buy(holder, 100))
        assert after2 == 1_300  # not 800: the cached 900 was dropped
        assert tid2 == counter_tid + 1
        async with registry.read() as tx:
            assert await tx.balance(purse) == 1_300
    finally:
        await writer.close()
        await registry.close()


async def test_a_constraint_only_the_flush_meets_fails_its_job_alone(tmp_path: Path) -> None:
    """A transfer naming a card that does not exist passes every check of the decision and
    breaks only the foreign key when the batch is written: the batch runs again write-through,
    and only that job fails."""
    registry, holder, writer = await _open(tmp_path)
    try:
        results = await writer.run_many(
            [_buy(holder, 100), _buy(holder, 100, card_id=987_654), _buy(holder, 50)]
        )
        assert results[0][1] == 900  # type: ignore[index]
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert results[2][1] == 850  # type: ignore[index]
        async with registry.read() as tx:
            assert await tx.balance(ledger.purse(holder)) == 850
            assert len(await tx.find("transfers", kind="purchase")) == 2
    finally:
        await writer.close()
        await registry.close()


async def test_one_request_id_recorded_twice_in_a_batch_fails_the_second(tmp_path: Path) -> None:
    registry, holder, writer = await _open(tmp_path)
    try:

        def record(reply: str) -> Job:
            def job(tx: SqliteTapTx) -> str:
                tx.record_reply("pos-1", "same", "purchase", "f", reply, NOW)
                return reply

            return job

        results = await writer.run_many([record("a"), record("b"), _buy(holder, 10)])
        assert results[0] == "a"
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert results[2][1] == 990  # type: ignore[index]
        async with registry.read() as tx:
            row = await tx.idempotency_record("pos-1", "same")
            assert row is not None and row["reply"] == "a"
    finally:
        await writer.close()
        await registry.close()


async def test_a_batch_reads_its_idempotency_records_in_one_statement(tmp_path: Path) -> None:
    registry, _holder, writer = await _open(tmp_path)
    try:

        def record(rid: str, reply: str) -> Job:
            def job(tx: SqliteTapTx) -> None:
                tx.record_reply("pos-1", rid, "purchase", "f", reply, NOW)

            return job

        await writer.run(record("r1", "first"))
        statements: list[str] = []

        def trace(tx: SqliteTapTx) -> None:
            tx.conn.set_trace_callback(statements.append)

        def check(rid: str) -> Job:
            def job(tx: SqliteTapTx) -> tuple[str, str] | None:
                return tx.idempotent("pos-1", rid)

            return job

        keys = [("pos-1", r) for r in ("r1", "r2", "r2", "r3")]
        results = await writer.run_many(
            [trace, check("r1"), record("r2", "second"), check("r2"), check("r3")], replies=keys
        )
        assert results[1] == ("f", "first")  # stored before this batch
        assert results[3] == ("f", "second")  # recorded earlier in this batch
        assert results[4] is None
        lookups = [s for s in statements if "FROM idempotency" in s]
        assert lookups == [], lookups  # all answered by the batch's one read

        # the safe retry (a job failed) writes through: a record made in it is still seen
        def broken(tx: SqliteTapTx) -> None:
            raise RuntimeError("bug")

        results = await writer.run_many(
            [record("r4", "fourth"), check("r4"), broken], replies=[("pos-1", "r4")] * 3
        )
        assert results[1] == ("f", "fourth")
        assert isinstance(results[2], RuntimeError)
    finally:
        await writer.close()
        await registry.close()


async def test_a_read_job_takes_no_write_lock(tmp_path: Path) -> None:
    """The gateway's deny-list poll reads on the writer's connection; with the tap engine in
    another process, a poll holding the write lock made the engine's batches wait."""
    registry, holder, writer = await _open(tmp_path)
    other = sqlite3.connect(tmp_path / "r.sqlite3", isolation_level=None, timeout=0)
    try:
        started = asyncio.Event()
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow_read(tx: SqliteTapTx) -> int:
            loop.call_soon_threadsafe(started.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
            return tx.balance(ledger.purse(holder))

        reading = asyncio.ensure_future(writer.read(slow_read))
        await asyncio.wait_for(started.wait(), 10)
        other.execute("BEGIN IMMEDIATE")  # would raise "database is locked" under a write lock
        other.execute("ROLLBACK")
        release.set()
        assert await reading == 1_000
    finally:
        other.close()
        await writer.close()
        await registry.close()
