"""Seed a synthetic campus through the real services (the demo and the benchmarks use it)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from gateway.demo.synthetic import Campus, Person
from gateway.services.base import Actor
from gateway.services.center import CardCenter
from protocol.cards.identity import default_password
from protocol.types import CardKind, HolderKind
from protocol.wire import TerminalKind

CHUNK = 2000
MERCHANTS = {
    "canteen1": "第一食堂",
    "canteen2": "第二食堂",
    "canteen3": "清真食堂",
    "shop1": "教育超市",
    "water1": "一号开水房",
    "water2": "二号开水房",
}


@dataclass(frozen=True, slots=True)
class Row:
    """A validated roster row, as :mod:`gateway.rosterio` would give it."""

    row_number: int
    name: str | None
    national_id: str | None
    student_number: str | None = None
    staff_number: str | None = None
    college: str | None = None
    class_name: str | None = None
    department: str | None = None
    photo: str | None = None
    valid_until: date | None = None


@dataclass
class Seeded:
    cards: list[dict[str, Any]] = field(default_factory=list)
    terminals: list[dict[str, Any]] = field(default_factory=list)


def fleet_plan(total: int) -> list[tuple[TerminalKind, str | None]]:
    """~60% POS (canteens and the shop), 20% door readers, 15% water, 5% kiosks."""
    plan: list[tuple[TerminalKind, str | None]] = []
    pos_merchants = ["canteen1", "canteen2", "canteen3", "shop1"]
    water = ["water1", "water2"]
    for i in range(total):
        r = i % 20
        if r < 12:
            plan.append((TerminalKind.POS, pos_merchants[i % len(pos_merchants)]))
        elif r < 16:
            plan.append((TerminalKind.DOOR, None))
        elif r < 19:
            plan.append((TerminalKind.WATER, water[i % len(water)]))
        else:
            plan.append((TerminalKind.KIOSK, None))
    return plan


async def seed_campus(
    center: CardCenter,
    actor: Actor,
    *,
    students: int,
    staff: int,
    visitors: int,
    terminals: int,
    seed: int = 2026,
    password_hash: Any = None,
    new_password: Any = None,
) -> Seeded:
    """A whole campus: stock, receipt books, merchants, holders, temp cards with balances,
    terminals. ``password_hash``/``new_password`` come from the broker-file module."""
    rng = random.Random(seed)
    campus = Campus(seed)
    out = Seeded()
    total = students + staff + visitors
    await center.stock.purchase(actor, CardKind.TEMP, total + 100, "2026-2027")
    await center.stock.purchase(actor, CardKind.SMART, 100, "2026-2027")
    await center.stock.requisition(
        actor, CardKind.TEMP, total + 50, issued_by="网管科长", usage_note="演示校园"
    )
    for book in range(max(1, visitors // 50 + 1)):
        await center.receipts.add_book(
            actor, f"DEMO-{book + 1:03d}", 100_001 + book * 50, 100_050 + book * 50
        )
    for mid, name in MERCHANTS.items():
        await center.merchants.add(actor, mid, name)

    people: list[tuple[Person, HolderKind]] = [
        (p, HolderKind.STUDENT) for p in campus.students(students)
    ]
    people += [(p, HolderKind.STAFF) for p in campus.staff(staff)]
    for kind in (HolderKind.STUDENT, HolderKind.STAFF):
        group = [p for p, k in people if k is kind]
        for start in range(0, len(group), CHUNK):
            rows = [
                Row(
                    row_number=start + i + 2,
                    name=p.name,
                    national_id=p.national_id,
                    student_number=p.number if kind is HolderKind.STUDENT else None,
                    staff_number=p.number if kind is HolderKind.STAFF else None,
                    college=p.college,
                    class_name=p.class_name,
                    department=p.department,
                    photo=p.photo,
                    valid_until=date(2030, 7, 31) if kind is HolderKind.STUDENT else None,
                )
                for i, p in enumerate(group[start : start + CHUNK])
            ]
            report = await center.holders.import_roster(actor, kind, rows)
            cards = await center.cards.issue_temp_batch(actor, report.holder_ids)
            topups = [(c.serial, rng.randrange(5_000, 50_000, 100)) for c in cards]
            await center.money.topup_batch(actor, topups)
            for person, card in zip(group[start : start + CHUNK], cards, strict=True):
                out.cards.append(
                    {
                        "uid": card.uid,
                        "serial": card.serial,
                        "number": person.number,
                        "password": default_password(person.national_id),
                        "kind": kind.value,
                    }
                )
    for person in campus.visitors(visitors):
        holder = await center.cards.register_temporary_holder(
            actor,
            name=person.name,
            national_id=person.national_id,
            category=person.category,
            valid_through=date(2027, 6, 30),
            application_ref="DEMO",
        )
        result = await center.cards.issue_temp(actor, holder.id)
        await center.money.topup(actor, result.card.serial, rng.randrange(2_000, 20_000, 100))
        out.cards.append(
            {
                "uid": result.card.uid,
                "serial": result.card.serial,
                "number": holder.number,
                "password": default_password(person.national_id),
                "kind": "temporary",
            }
        )
    counts: dict[str, int] = {}
    for tkind, merchant in fleet_plan(terminals):
        counts[tkind.value] = counts.get(tkind.value, 0) + 1
        tid = f"{tkind.value}-{counts[tkind.value]:03d}"
        password = new_password()
        await center.terminals.add(
            actor, tid, tkind, password_hash=password_hash(password), merchant_id=merchant
        )
        out.terminals.append(
            {"id": tid, "kind": tkind.value, "password": password, "merchant": merchant}
        )
    return out
