"""Engines for the registry: SQLite (aiosqlite, the default) and PostgreSQL (asyncpg).

SQLite is opened in WAL mode with ``synchronous=FULL`` (money moves here), foreign keys on and a
busy timeout; write transactions start with ``BEGIN IMMEDIATE`` so two writers never deadlock on a
lock upgrade (ARCHITECTURE.md §5). Readers use a second engine with plain deferred transactions.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util.concurrency import await_

BUSY_TIMEOUT_MS = 10_000
BUSY_RETRY_S = 0.0005


@dataclass(frozen=True, slots=True)
class Engines:
    writer: AsyncEngine
    reader: AsyncEngine

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def database_url(target: str | Path) -> str:
    """A path becomes a SQLite URL; ``postgresql://...`` becomes an asyncpg URL."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + text.split("://", 1)[1]
    if "://" in text:
        return text
    return f"sqlite+aiosqlite:///{Path(text).expanduser()}"


def _sqlite_engine(url: str, begin: str) -> AsyncEngine:
    engine = create_async_engine(url)
    immediate = begin == "BEGIN IMMEDIATE"

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # hand transaction control to us: pysqlite/aiosqlite would otherwise BEGIN lazily
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            # writers wait in _begin_immediate (short steps); SQLite's own busy handler backs
            # off up to 100 ms a try and would lose every race against the busy tap writer
            f"PRAGMA busy_timeout={0 if immediate else BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if immediate:
            _begin_immediate(conn)
        else:
            conn.exec_driver_sql(begin)

    return engine


def _begin_immediate(conn: Connection) -> None:
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except OperationalError as exc:
            text = str(exc.orig)
            if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                raise
            # we run in SQLAlchemy's greenlet on the event loop: sleep asynchronously, so the
            # lock holder (maybe another task of this loop) can finish
            await_(asyncio.sleep(BUSY_RETRY_S))
        else:
            return


def open_engines(target: str | Path) -> Engines:
    url = database_url(target)
    if url.startswith("sqlite"):
        if ":memory:" in url or url.endswith(":///"):
            msg = "onecard keeps its registry in a file: give a path, not :memory:"
            raise ValueError(msg)
        return Engines(
            writer=_sqlite_engine(url, "BEGIN IMMEDIATE"), reader=_sqlite_engine(url, "BEGIN")
        )
    engine = create_async_engine(url, pool_size=10)
    return Engines(writer=engine, reader=engine)
