"""Micro-benchmark of the tap path's readers (issue 12): ``card_by_uid`` + ``balance`` N times on
each backend — the SQLite batching writer's transaction (stdlib sqlite3), the PostgreSQL tap
transaction (asyncpg) and the counter's SQLAlchemy transaction on both — CPU µs per pair in this
process (the database server's own CPU is not counted).

    .venv/bin/python -m bench.readers [N]      # default 20000; PostgreSQL on 127.0.0.1:5432
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from protocol import ledger
from storage.pgtap import PgTapExecutor, PgTapTx
from storage.sql import SqlRegistry
from storage.tapwriter import SqliteTapTx
from tests.storage.test_shared_reads import UID, seed


async def _seed(registry: SqlRegistry) -> str:
    """A holder with a card (:data:`UID`) and 1,000 fen in the purse; the purse's account."""
    ids = await seed(registry)
    async with registry.transaction() as tx:  # the seed's purchase was reversed: 1,000 fen
        assert await tx.balance(ledger.purse(ids["holder"])) == 1_000
    return ledger.purse(ids["holder"])


def _pairs(tx: SqliteTapTx | PgTapTx, account: str, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        assert tx.card_by_uid(UID) is not None
        assert tx.balance(account) == 1_000
    return time.process_time() - start


def _hot(tx: SqliteTapTx | PgTapTx, n: int) -> float:
    """The per-decision reads without a cache: idempotency miss, card + holder, deny version."""
    start = time.process_time()
    for i in range(n):
        assert tx.idempotent("pos-1", f"r{i}") is None
        tx._cards.clear()
        assert tx.tap_card(UID) is not None
        tx.deny_version()
    return time.process_time() - start


async def _counter(registry: SqlRegistry, account: str, n: int) -> float:
    async with registry.read() as tx:
        start = time.process_time()
        for _ in range(n):
            assert await tx.card_by_uid(UID) is not None
            assert await tx.balance(account) == 1_000
        return time.process_time() - start


PAIR = "card_by_uid+balance"
HOT = "idempotent+tap_card+deny_version"


def _line(name: str, seconds: float, n: int, what: str = PAIR) -> None:
    print(f"{name:<30} {seconds * 1e6 / n:8.1f} µs CPU per {what} ({n} times)")  # noqa: T201


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.sqlite3"
        registry = await SqlRegistry.open(path, migrate=True)
        account = await _seed(registry)
        conn = sqlite3.connect(path, isolation_level=None)
        _line("sqlite tap (sqlite3)", _pairs(SqliteTapTx(conn), account, n), n)
        _line("sqlite tap hot reads", _hot(SqliteTapTx(conn), n), n, HOT)
        conn.close()
        _line("sqlite counter (SQLAlchemy)", await _counter(registry, account, n), n)
        await registry.close()

    from tests.storage.test_postgres_contract import PgServer

    server = PgServer()
    name = server.next_name()
    await server.create(name)
    try:
        url = server.url(name)
        registry = await SqlRegistry.open(url, migrate=True)
        account = await _seed(registry)
        executor = PgTapExecutor(url)
        await executor.start()
        try:
            seconds = await executor.run(lambda tx: _pairs(tx, account, n))
        finally:
            await executor.close()
        _line("postgres tap (asyncpg)", seconds, n)
        executor = PgTapExecutor(url)
        await executor.start()
        try:
            seconds = await executor.run(lambda tx: _hot(tx, n))
        finally:
            await executor.close()
        _line("postgres tap hot reads", seconds, n, HOT)
        _line("postgres counter (SQLAlchemy)", await _counter(registry, account, n), n)
        await registry.close()
    finally:
        await server.drop(name)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
