"""LISTEN on the registry's NOTIFY (storage/listen.py): a counter's commit to a watched table is
heard at once, and a listener whose session the server ends comes back by itself (a catch-up
call first, since notifications sent while nobody listened are lost)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from storage.listen import PgChangeListener
from storage.pgtap import asyncpg_dsn
from storage.sql import SqlRegistry
from tests.storage.test_postgres_contract import pg_server, pg_url  # noqa: F401 - fixtures
from tests.storage.test_tapwriter import NOW, _seed

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio]


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_commit_is_heard_and_a_killed_session_comes_back(pg_url: str) -> None:  # noqa: F811
    registry = await SqlRegistry.open(pg_url, migrate=True)
    await _seed(registry)
    heard: list[str] = []
    listener = PgChangeListener(pg_url, retry_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop, heard.append))
    admin = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        await _until(lambda: listener.listening and heard == [""])  # the catch-up call
        async with registry.transaction() as tx:  # the counter disables a terminal
            await tx.update("terminals", "pos-1", {"enabled": False})
        await _until(lambda: "terminals" in heard)
        async with registry.transaction() as tx:  # a heartbeat is not watched: nothing
            await tx.update("terminals", "pos-1", {"last_seen_at": NOW})
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'onecard-listen' AND datname = current_database()"
        )
        assert killed == 1
        await _until(lambda: heard.count("") == 2 and listener.listening)  # back, caught up
        async with registry.transaction() as tx:
            await tx.update("terminals", "pos-1", {"enabled": True})
        await _until(lambda: heard.count("terminals") == 2)
        assert heard == ["", "terminals", "", "terminals"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await admin.close()
        await registry.close()
    assert not listener.listening
