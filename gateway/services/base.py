"""What every service shares: the acting person, the clock, the registry port."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from protocol.cards.fees import FeeSchedule
from protocol.errors import AccessDenied, ErrorCode
from protocol.types import Permission
from storage.ports import Registry


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock the caller moves: tests, training sessions and the scripted README session."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment

    def advance(self, **delta: float) -> datetime:
        self._now += timedelta(**delta)
        return self._now


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an operator at the counter, a holder at a kiosk/web, or the system."""

    name: str
    permissions: frozenset[Permission] = frozenset()
    channel: str = "counter"  # counter, kiosk, web, scheduler, terminal
    operator_id: int | None = None
    holder_id: int | None = None
    real_name: str | None = None  # an operator's real name (ACC-2), the receipts' cashier (FEE-2)

    def require(self, permission: Permission) -> None:
        if permission not in self.permissions:
            raise AccessDenied(
                f"账号 {self.name} 没有“{permission}”权限",
                f"account {self.name} lacks the '{permission}' permission",
                code=ErrorCode.PERMISSION_DENIED,
                rule="ACC-2",
            )


SYSTEM = Actor(name="system", permissions=frozenset(Permission), channel="scheduler")


@dataclass
class Context:
    registry: Registry
    clock: Clock
    fees: FeeSchedule = field(default_factory=FeeSchedule)
    holidays: Collection[date] = ()
    #: Real time for sessions and lockouts, even when ``clock`` is moved for training/tests.
    wall_clock: Clock | None = None
    #: Mass-block guard-rail (gateway.services.massblock): more cards than this onto the deny
    #: list in one operation need a second operator's approval.
    mass_block_threshold: int = 50

    def wall_now(self) -> datetime:
        return (self.wall_clock or self.clock).now()
