"""Engines for the registry: SQLite (aiosqlite, the default) and PostgreSQL (asyncpg).

SQLite is opened in WAL mode with ``synchronous=FULL`` (money moves here), foreign keys on and a
busy timeout; write transactions start with ``BEGIN IMMEDIATE`` so two writers never deadlock on a
lock upgrade (ARCHITECTURE.md §5). Readers use a second engine with plain deferred transactions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
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
#: The registry holds national IDs and names in clear: owner only (SQLite gives its -wal and -shm
#: files the database file's mode).
REGISTRY_FILE_MODE = 0o600

log = logging.getLogger("onecard.storage")


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
            # issue 15: a cleared or re-encrypted ID number or name leaves no bytes in free space
            "PRAGMA secure_delete=ON",
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


def secure_registry_file(path: Path) -> int | None:
    """Create the SQLite registry file with mode 0600 if it does not exist yet (SQLite would
    create it 0644 under the usual umask, national IDs readable by every local user). For an
    existing file, return its mode when group or others may access it or its ``-wal``/``-shm``
    (and log a warning), else ``None``. The mode is not changed behind the operator's back: a
    deployment may share the file with a backup group on purpose."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, REGISTRY_FILE_MODE)
    except FileExistsError:
        pass
    except OSError:
        return None  # no such directory, not writable: SQLite reports it when it opens the file
    else:
        os.close(fd)
        return None
    exposed = None
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            exposed = mode if exposed is None else exposed
            log.warning(
                "注册库文件对其他用户可读 (mode %04o)，含身份证号等个人信息，请执行 chmod 600 /"
                " registry file %s is accessible to other users (mode %04o) and holds personal"
                " data: chmod 600 it and its -wal/-shm files",
                mode,
                candidate,
                mode,
            )
    return exposed


def open_engines(target: str | Path) -> Engines:
    url = database_url(target)
    if url.startswith("sqlite"):
        if ":memory:" in url or url.endswith(":///"):
            msg = "onecard keeps its registry in a file: give a path, not :memory:"
            raise ValueError(msg)
        if url.startswith("sqlite+aiosqlite:///") and "?" not in url:
            secure_registry_file(Path(url.removeprefix("sqlite+aiosqlite:///")))
        return Engines(
            writer=_sqlite_engine(url, "BEGIN IMMEDIATE"), reader=_sqlite_engine(url, "BEGIN")
        )
    engine = create_async_engine(url, pool_size=10)
    return Engines(writer=engine, reader=engine)
