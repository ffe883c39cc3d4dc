"""Which gateway instance runs the once-per-campus duties (issue 12).

With several ``onecard serve`` on one PostgreSQL registry, every instance decides taps, but only
the leader publishes the deny-list snapshot and deltas and runs the scheduler (auto-termination,
expiry). :class:`LeaseLeader` holds a PostgreSQL session advisory lock (:mod:`storage.lease`):
followers ask for it every ``retry_s``; the leader checks its session every ``retry_s`` and
steps down at once when the check fails (so two leaders overlap at most one check interval even
if its connection hangs). On SQLite there is one gateway: :class:`SoleLeader` is always leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger("onecard.gateway.leader")


class Lease(Protocol):
    async def try_acquire(self) -> bool: ...
    async def still_held(self) -> bool: ...
    async def release(self) -> None: ...


class Leadership:
    """``is_leader`` now; ``changed`` is set on every change (the runtime clears it)."""

    def __init__(self) -> None:
        self.is_leader = False
        self.changed = asyncio.Event()

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            self.changed.set()
            log.info(
                "本实例%s主实例 / this instance %s the leader",
                "成为" if leader else "不再是",
                "is now" if leader else "is no longer",
            )

    async def run(self, stop: asyncio.Event) -> None:
        raise NotImplementedError


class SoleLeader(Leadership):
    """One gateway on its own registry: always the leader."""

    def __init__(self) -> None:
        super().__init__()
        self._set(True)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


class LeaseLeader(Leadership):
    def __init__(self, lease: Lease, *, retry_s: float = 1.0) -> None:
        super().__init__()
        self.lease = lease
        self.retry_s = retry_s

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self._round()
                with contextlib.suppress(TimeoutError):  # not wait_for: it can lose a cancel
                    async with asyncio.timeout(self.retry_s):
                        await stop.wait()
        finally:
            self._set(False)
            await self.lease.release()

    async def _round(self) -> None:
        if self.is_leader:
            if not await self.lease.still_held():
                log.warning("lost the leader lock's session: stepping down")
                self._set(False)
                await self.lease.release()
            return
        try:
            got = await self.lease.try_acquire()
        except (OSError, TimeoutError) as exc:
            log.warning("cannot ask for the leader lock (%s); retrying", exc)
            await self.lease.release()
            return
        except Exception as exc:  # noqa: BLE001 - the database's errors: retry, never crash
            log.warning("cannot ask for the leader lock (%r); retrying", exc)
            await self.lease.release()
            return
        self._set(got)
