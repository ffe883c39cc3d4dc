"""Leadership among several gateways on one PostgreSQL registry: a session advisory lock.

Exactly one ``onecard serve`` publishes the deny list and runs the scheduler (issue 12). The
leader holds ``pg_try_advisory_lock`` on its own connection; the lock lives exactly as long as
that session, so when the leader dies (even ``kill -9``: the kernel closes its socket and the
server ends the session) the lock is free and the next follower that asks gets it. The lock is
scoped to the registry's database, so two campuses on one server do not share a leader.
"""

from __future__ import annotations

import asyncio

import asyncpg

from storage.pgtap import asyncpg_dsn

#: The advisory lock's key ("onecard leader"); any constant works, one per duty set.
LEADER_KEY = 0x6F6E_6563_6172_6401


class PgLease:
    """One connection that tries to hold the leader lock."""

    def __init__(self, target: str, *, key: int = LEADER_KEY, timeout_s: float = 3.0) -> None:
        self.dsn = asyncpg_dsn(target)
        self.key = key
        self.timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None

    async def try_acquire(self) -> bool:
        """True if this session holds the lock now (it may have held it already)."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.dsn,
                timeout=self.timeout_s,
                server_settings={"application_name": "onecard-leader"},
            )
        got = await asyncio.wait_for(
            self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key), self.timeout_s
        )
        return bool(got)

    async def still_held(self) -> bool:
        """The session is alive (then the lock is still ours); False on any doubt."""
        if self._conn is None or self._conn.is_closed():
            return False
        try:
            held = await asyncio.wait_for(
                self._conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid() AND granted"
                ),
                self.timeout_s,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        return bool(held)

    async def release(self) -> None:
        """Give the lock up by ending the session (a follower takes over at once)."""
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), self.timeout_s)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            conn.terminate()
