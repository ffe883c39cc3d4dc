"""Counter changes reach every gateway instance at once: LISTEN on the registry's NOTIFY.

Migration 0009's triggers send ``NOTIFY onecard_registry, '<table>'`` in the transaction of every
change to what the gateways cache (cards, holders, terminals); PostgreSQL delivers it at commit.
:class:`PgChangeListener` listens on a connection of its own and calls ``on_change(table)``; the
gateway then reads the deny-list log at once instead of at its next poll. The poll stays as the
fallback: a notification is lost while the connection is down, so after every (re)connect
``on_change("")`` asks for one read to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from storage.pgtap import asyncpg_dsn

log = logging.getLogger("onecard.storage.listen")

#: The channel 0009's trigger function notifies.
CHANNEL = "onecard_registry"


class PgChangeListener:
    def __init__(self, target: str, *, retry_s: float = 1.0, timeout_s: float = 3.0) -> None:
        self.dsn = asyncpg_dsn(target)
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        #: True while LISTEN is in force (the poll is then only the fallback)
        self.listening = False
        self.notifications = 0

    async def run(self, stop: asyncio.Event, on_change: Callable[[str], None]) -> None:
        """Listen until ``stop``; reconnect every ``retry_s`` while the server is away."""
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()

            def notified(_c: object, _pid: int, _channel: str, payload: object) -> None:
                self.notifications += 1
                on_change(str(payload))

            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self.timeout_s,
                    server_settings={"application_name": "onecard-listen"},
                )
                conn.add_termination_listener(lambda _c, ended=lost: ended.set())
                await asyncio.wait_for(conn.add_listener(CHANNEL, notified), self.timeout_s)
                self.listening = True
                on_change("")  # whatever changed while nobody listened
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN %s failed (%r): polling only; retrying", CHANNEL, exc)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    try:
                        await asyncio.wait_for(conn.close(), self.timeout_s)
                    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        conn.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.retry_s)
