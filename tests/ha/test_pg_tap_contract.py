"""The PostgreSQL tap executor keeps the batching writer's contract (tests/storage/
test_tapwriter.py): group commit, a failing job rolls back alone, caches follow the counter's
commits, a held lock is a fast ``unavailable``; plus what only several writers need: the
deferred credits of hot accounts, and the re-run of a job that lost a unique-key race."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from protocol import ledger
from protocol.errors import ErrorCode, InsufficientFunds, OnecardError
from storage.pgtap import PgTapExecutor, PgTapTx, asyncpg_dsn
from storage.sql import SqlRegistry
from tests.storage.test_postgres_contract import pg_server, pg_url  # noqa: F401 - fixtures
from tests.storage.test_tapwriter import NOW, _seed

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio]


def _buy(holder: int, amount: int) -> Callable[[PgTapTx], int]:
    def job(tx: PgTapTx) -> int:
        return tx.post_returning(ledger.purchase(holder, "c1", amount), at=NOW, actor="t")[1]

    return job


async def test_group_commit_and_a_failing_job_rolls_back_alone(pg_url: str) -> None:  # noqa: F811
    registry = await SqlRegistry.open(pg_url, migrate=True)
    holder = await _seed(registry)
    executor = PgTapExecutor(pg_url)
    await executor.start()
    try:

        def broken(tx: PgTapTx) -> int:
            tx.post(ledger.purchase(holder, "c1", 1), at=NOW, actor="t")
            raise RuntimeError("bug after a write")

        results: list[object] = list(
            await executor.run_many(
                [_buy(holder, 100), broken, _buy(holder, 200), _buy(holder, 5_000)]
            )
        )
        assert results[0] == 900
        assert isinstance(results[1], RuntimeError)
        assert results[2] == 700
        assert isinstance(results[3], InsufficientFunds)
        assert executor.batches == 1
        async with registry.read() as tx:
            assert await tx.balance(ledger.purse(holder)) == 700
            assert await tx.balance(ledger.merchant("c1")) == 300  # deferred, then applied
            assert len(await tx.find("transfers", kind="purchase")) == 2
    finally:
        await executor.close()
        await registry.close()


async def test_cached_rows_follow_the_counters_commits(pg_url: str) -> None:  # noqa: F811
    registry = await SqlRegistry.open(pg_url, migrate=True)
    await _seed(registry)
    executor = PgTapExecutor(pg_url)
    await executor.start()
    try:
        assert await executor.run(lambda tx: tx.terminal("pos-1")) == ("pos", None, True)
        async with registry.transaction() as tx:  # the counter disables the terminal
            await tx.update("terminals", "pos-1", {"enabled": False})
        assert await executor.run(lambda tx: tx.terminal("pos-1")) == ("pos", None, False)
        # a heartbeat's write (last_seen_at) does not empty the caches
        async with registry.transaction() as tx:
            await tx.update("terminals", "pos-1", {"last_seen_at": NOW})
        conn = await asyncpg.connect(asyncpg_dsn(pg_url))
        try:
            epoch = await conn.fetchval("SELECT n FROM registry_epoch")
            async with registry.transaction() as tx:
                await tx.update("terminals", "pos-1", {"denylist_version": 3})
            assert await conn.fetchval("SELECT n FROM registry_epoch") == epoch
        finally:
            await conn.close()
    finally:
        await executor.close()
        await registry.close()


async def test_two_executors_race_on_one_key_and_one_wins(pg_url: str) -> None:  # noqa: F811
    """Two gateways' executors insert the same idempotency key with a debit: the loser's job
    runs again, sees the winner's row and debits nothing."""
    registry = await SqlRegistry.open(pg_url, migrate=True)
    holder = await _seed(registry)
    first, second = PgTapExecutor(pg_url), PgTapExecutor(pg_url)
    await first.start()
    await second.start()
    try:

        def decide(tx: PgTapTx) -> str:
            stored = tx.idempotent("pos-1", "r-1")
            if stored is not None:
                return "replayed:" + stored[1]
            tx.post(ledger.purchase(holder, "c1", 100), at=NOW, actor="t")
            tx.execute("SELECT pg_sleep(0.2)")  # both inside the decision at once
            tx.record_reply("pos-1", "r-1", "purchase", "f", "approved", NOW)
            return "decided"

        outcomes = await asyncio.gather(first.run(decide), second.run(decide))
        assert sorted(outcomes) == ["decided", "replayed:approved"]
        assert first.fallbacks + second.fallbacks == 1  # the loser ran again
        async with registry.read() as tx:
            assert await tx.balance(ledger.purse(holder)) == 900
            assert await tx.balance(ledger.merchant("c1")) == 100
    finally:
        await first.close()
        await second.close()
        await registry.close()


async def test_a_row_lock_held_too_long_is_a_fast_unavailable(pg_url: str) -> None:  # noqa: F811
    registry = await SqlRegistry.open(pg_url, migrate=True)
    holder = await _seed(registry)
    executor = PgTapExecutor(pg_url, lock_wait_s=0.2)
    await executor.start()
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("SELECT * FROM accounts WHERE id = $1 FOR UPDATE", ledger.purse(holder))
        with pytest.raises(OnecardError) as refused:
            await executor.run(_buy(holder, 100))
        assert refused.value.code is ErrorCode.UNAVAILABLE
        assert executor.failing_since is not None
        await lock.rollback()
        assert await executor.run(_buy(holder, 100)) == 900  # and it serves again
        assert executor.failing_since is None
    finally:
        await conn.close()
        await executor.close()
        await registry.close()


async def test_jobs_run_in_key_order_so_two_executors_cannot_deadlock(
    pg_url: str,  # noqa: F811
) -> None:
    """Two gateways' batches touch the same two purses in opposite arrival order. Sorted by
    their order keys (a tap's card UID) they lock in one order: both commit, no deadlock."""
    registry = await SqlRegistry.open(pg_url, migrate=True)
    first_holder = await _seed(registry)
    async with registry.transaction() as tx:
        second_holder = await tx.insert(
            "holders",
            {
                "kind": "student",
                "category": "student",
                "number": "2",
                "name": "乙",
                "created_at": NOW,
            },
        )
        await tx.post(
            ledger.topup(second_holder, 1_000, ledger.cash()),
            at=NOW,
            actor="t",
            holder_id=second_holder,
        )
    one, two = PgTapExecutor(pg_url), PgTapExecutor(pg_url)
    await one.start()
    await two.start()

    def slow_buy(holder: int) -> Callable[[PgTapTx], int]:
        def job(tx: PgTapTx) -> int:
            after = tx.post_returning(ledger.purchase(holder, "c1", 10), at=NOW, actor="t")[1]
            tx.execute("SELECT pg_sleep(0.15)")  # hold the purse while the other batch runs
            return after

        return job

    try:
        a, b = first_holder, second_holder
        results = await asyncio.gather(
            one.run_many([slow_buy(a), slow_buy(b)], order=["card-a", "card-b"]),
            two.run_many([slow_buy(b), slow_buy(a)], order=["card-b", "card-a"]),
        )
        assert sorted(v for r in results for v in r if isinstance(v, int)) == [980, 980, 990, 990]
        assert one.retried_batches + two.retried_batches == 0  # no deadlock was detected
        async with registry.read() as tx:
            assert await tx.balance(ledger.merchant("c1")) == 40
    finally:
        await one.close()
        await two.close()
        await registry.close()


async def test_a_lost_connection_answers_unavailable_then_reconnects(pg_url: str) -> None:  # noqa: F811
    """The server ends the executor's session (a restart, a failover): the batch then running is
    answered ``unavailable`` (not a decision), the next batch reconnects and commits."""
    registry = await SqlRegistry.open(pg_url, migrate=True)
    holder = await _seed(registry)
    executor = PgTapExecutor(pg_url)
    await executor.start()
    try:

        def killed(tx: PgTapTx) -> int:
            tx.post(ledger.purchase(holder, "c1", 100), at=NOW, actor="t")
            tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            return 0

        with pytest.raises(OnecardError) as refused:
            await executor.run(killed)
        assert refused.value.code is ErrorCode.UNAVAILABLE
        assert executor.alive
        assert await executor.run(_buy(holder, 100)) == 900  # nothing of the first committed
        assert executor.failing_since is None
    finally:
        await executor.close()
        await registry.close()


async def test_a_job_whose_caller_gave_up_mid_batch_never_commits(pg_url: str) -> None:  # noqa: F811
    """The router answered ``unavailable`` (it stopped waiting) while the batch still ran: that
    job must not commit (contract §6.1: unavailable is not a decision); the others still do."""
    registry = await SqlRegistry.open(pg_url, migrate=True)
    holder = await _seed(registry)
    executor = PgTapExecutor(pg_url)
    await executor.start()
    try:

        def slow(tx: PgTapTx) -> int:
            tx.post(ledger.purchase(holder, "c1", 100), at=NOW, actor="t")
            tx.execute("SELECT pg_sleep(0.3)")
            return 0

        abandoned = asyncio.ensure_future(asyncio.wait_for(executor.run(slow), timeout=0.1))
        kept = asyncio.ensure_future(executor.run(_buy(holder, 200)))  # the same batch
        with pytest.raises(TimeoutError):
            await abandoned
        assert await kept == 800
        async with registry.read() as tx:
            assert await tx.balance(ledger.purse(holder)) == 800  # only the kept job's debit
            assert len(await tx.find("transfers", kind="purchase")) == 1
    finally:
        await executor.close()
        await registry.close()


async def test_meal_allowance_is_read_and_counted_on_postgresql(pg_url: str) -> None:  # noqa: F811
    """MEAL-1's typed operations on the PostgreSQL tap path (SQLite's: test_meal_taps.py)."""
    registry = await SqlRegistry.open(pg_url, migrate=True)
    holder = await _seed(registry)
    executor = PgTapExecutor(pg_url)
    await executor.start()
    try:
        assert await executor.run(lambda tx: tx.meal_allowance(holder, "2026-11")) is None
        async with registry.transaction() as tx:
            await tx.put(
                "meal_quotas",
                {"holder_id": holder, "meals_per_month": 2, "source": "HR", "updated_at": NOW},
            )

        def swipe(tx: PgTapTx) -> int:
            tx.count_meal(holder, "2026-11")
            allowance = tx.meal_allowance(holder, "2026-11")
            assert allowance is not None
            return allowance.left

        assert [await executor.run(swipe) for _ in range(3)] == [1, 0, 0]
        async with registry.read() as tx:
            allowance = await tx.meal_allowance(holder, "2026-11")
            assert allowance is not None and (allowance.used, allowance.left) == (3, 0)
            assert await tx.meal_allowance(holder, "2026-12") == (2, 0)
    finally:
        await executor.close()
        await registry.close()
