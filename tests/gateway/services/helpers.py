"""Shared steps for the rule tests: holders, cards and reads of the registry tables.

Every helper goes through the card center's services (or reads the registry); nothing here
writes rows behind a service's back except :func:`post_purchase`, which stands in for a POS sale
(the tap path is not a counter service).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from gateway.services.common import deny_status
from protocol.cards.fees import FeeSchedule
from protocol.cards.identity import make_national_id
from protocol.cards.lifecycle import tap_refusal
from protocol.errors import ErrorCode
from protocol.ledger import purchase
from protocol.types import CardKind, HolderCategory, HolderKind, Permission
from storage.records import Card, Holder, Row
from storage.sql import SqlRegistry
from tests.conftest import T0, Counter, StudentRow, import_students


@dataclass
class QuotaRow:
    """What :meth:`MealService.import_quotas` reads from HR's list (MEAL-1/2)."""

    row_number: int
    staff_number: str | None
    meal_quota: int | None


def actor(name: str, *perms: Permission, channel: str = "counter") -> Actor:
    return Actor(name=name, permissions=frozenset(perms), channel=channel)


def staff_rows(
    n: int, *, start: int = 1, with_number: bool = True, department: str = "数学系"
) -> list[StudentRow]:
    """New-staff list rows (ISS-6): name, department, staff number, national ID, photo."""
    return [
        StudentRow(
            row_number=i + 2,
            name=f"教师{start + i}",
            national_id=make_national_id("510104", date(1985, 3, 1 + (start + i) % 28), start + i),
            student_number=None,
            staff_number=f"T{start + i:05d}" if with_number else None,
            college=None,
            class_name=None,
            department=department,
            photo=f"photo/staff{start + i}.jpg",
            valid_until=None,
        )
        for i in range(n)
    ]


async def import_staff(
    c: Counter, n: int = 1, *, start: int = 1, with_number: bool = True
) -> list[int]:
    rows = staff_rows(n, start=start, with_number=with_number)
    report = await c.center.holders.import_roster(c.admin, HolderKind.STAFF, rows)
    return report.holder_ids


async def holder(c: Counter, holder_id: int) -> Holder:
    async with c.registry.read() as tx:
        return await tx.get_holder(holder_id)


async def card(c: Counter, serial: str) -> Card:
    async with c.registry.read() as tx:
        return await tx.card_by_serial(serial)


async def cards_of(c: Counter, holder_id: int) -> list[Card]:
    async with c.registry.read() as tx:
        return await tx.cards_of_holder(holder_id)


async def balance(c: Counter, account: str) -> int:
    async with c.registry.read() as tx:
        return await tx.balance(account)


async def find(c: Counter, table: str, **eq: Any) -> list[Row]:
    async with c.registry.read() as tx:
        return await tx.find(table, **eq)


async def count(c: Counter, table: str, **eq: Any) -> int:
    async with c.registry.read() as tx:
        return await tx.count(table, **eq)


async def rows(c: Counter, sql: str, **params: Any) -> list[Row]:
    async with c.registry.read() as tx:
        return await tx.rows(sql, params)


async def deny_rows(c: Counter, card_id: int) -> list[Row]:
    return await find(c, "deny_changes", card_id=card_id)


async def events(c: Counter, card_id: int) -> list[Row]:
    return await find(c, "card_events", card_id=card_id)


async def audit(c: Counter, action: str) -> list[Row]:
    return await find(c, "audit_log", action=action)


def loads(text: str | None) -> dict[str, Any]:
    assert text is not None
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


async def listed(c: Counter, serial: str) -> ErrorCode | None:
    """How the deny list must treat this card now (pending cards are not listed)."""
    return deny_status(await card(c, serial), c.clock.now())


async def tap(c: Counter, serial: str, now: datetime | None = None) -> ErrorCode | None:
    """What a terminal must answer for this card now (LOSS-2, TERM-2): None = usable."""
    found = await card(c, serial)
    moment = now or c.clock.now()
    return tap_refusal(found.state, found.valid_until, moment)


async def student_with_temp(c: Counter, *, start: int = 1) -> tuple[Holder, Card]:
    """One imported student (ISS-1) holding the temp CPU card issued at admission."""
    (hid,) = await import_students(c, 1, start=start)
    result = await c.center.cards.issue_temp(c.op, hid)
    return await holder(c, hid), result.card


async def staff_with_smart(c: Counter, *, start: int = 1) -> tuple[Holder, Card]:
    """One imported staff member holding a smart card (ISS-6 order, ISS-3 check, ISS-7)."""
    (hid,) = await import_staff(c, 1, start=start)
    staff = await holder(c, hid)
    assert staff.number is not None
    ordered = await c.center.cards.order_smart(c.op, staff.number)
    await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)
    handed = await c.center.cards.hand_over(
        c.op, ordered.card.serial, presented_id=staff.national_id
    )
    return staff, handed.card


async def visitor_with_temp(
    c: Counter,
    *,
    seq: int = 1,
    valid_through: date = date(2027, 6, 30),
    category: HolderCategory = HolderCategory.VISITING_PROFESSOR,
) -> tuple[Holder, Card]:
    """A temporary holder (ISS-8..12) with a temp card and the 30 yuan deposit paid."""
    nid = make_national_id("110105", date(1970, 5, 1 + seq % 28), 100 + seq)
    registered = await c.center.cards.register_temporary_holder(
        c.op,
        name=f"访客{seq}",
        national_id=nid,
        category=category,
        valid_through=valid_through,
        application_ref=f"临时卡申请表-2026-{seq:03d}",
    )
    issued = await c.center.cards.issue_temp(c.op, registered.id)
    return await holder(c, registered.id), issued.card


async def deposit_receipt_no(c: Counter, holder_id: int) -> int:
    """The number of the deposit receipt the holder was given (ISS-10), shown again at the
    refund (REF-3)."""
    (receipt,) = [
        r for r in await find(c, "receipts", holder_id=holder_id) if r["item"].endswith("deposit")
    ]
    return int(receipt["receipt_no"])


async def fee_receipt_no(c: Counter, holder_id: int, item: str) -> int:
    """The number of the holder's latest receipt for ``item`` (a FeeItem value)."""
    receipts = [
        r for r in await find(c, "receipts", holder_id=holder_id) if r["item"].endswith(item)
    ]
    return int(receipts[-1]["receipt_no"])


async def lose(c: Counter, who: Holder, serial: str, *, hours: float = 48) -> None:
    """Report the card lost at the counter and let ``hours`` pass."""
    await c.center.cards.report_loss(c.op, serial, presented_id=who.national_id)
    c.clock.advance(hours=hours)


async def post_purchase(c: Counter, holder_id: int, merchant_id: str, amount: int) -> int:
    """A POS sale (the tap path): one purchase transfer from the holder's purse."""
    async with c.registry.transaction() as tx:
        return await tx.post(
            purchase(holder_id, merchant_id, amount, memo="lunch"),
            at=c.clock.now(),
            actor="pos-canteen-1",
            terminal_id="pos-canteen-1",
            request_id=f"req-{holder_id}-{amount}",
            holder_id=holder_id,
        )


async def make_counter(
    registry: SqlRegistry,
    tmp: Path,
    *,
    books: list[tuple[str, int, int]],
    blank_temp: int = 500,
    fees: FeeSchedule | None = None,
) -> Counter:
    """A card center like the ``counter`` fixture, with chosen receipt books, temp-card stock
    and fee schedule (FEE-1: fees are data)."""
    clock = FixedClock(T0)
    ctx = Context(registry=registry, clock=clock, fees=fees or FeeSchedule())
    center = CardCenter.build(ctx)
    admin = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
    await center.stock.purchase(admin, CardKind.SMART, 100, "2026")
    await center.stock.purchase(admin, CardKind.TEMP, blank_temp, "2026")
    await center.stock.requisition(admin, CardKind.SMART, 100, issued_by="王科长", usage_note="x")
    await center.stock.requisition(
        admin, CardKind.TEMP, blank_temp, issued_by="王科长", usage_note="新生入学"
    )
    for book_no, first, last in books:
        await center.receipts.add_book(admin, book_no, first, last)
    return Counter(center, clock, registry, admin, tmp / "registry.sqlite3")
