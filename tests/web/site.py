"""A small campus for the web tests: a real SQLite registry seeded through the services, with
purchases at named merchants so the history has places, and terminals for the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.services.base import Actor, Context, SystemClock
from gateway.services.center import CardCenter
from protocol.cards.identity import default_password
from protocol.ledger import purchase
from protocol.types import CardKind, HolderKind, Permission
from protocol.wire import TerminalKind
from storage.sql import SqlRegistry
from tests.conftest import student_rows

#: terminal id -> (kind, merchant); MQTT password "pw-<id>"
TERMINALS = {"pos-001": (TerminalKind.POS, "canteen1"), "kiosk-001": (TerminalKind.KIOSK, None)}
PURCHASES_PER_STUDENT = 25  # more than one page of history


@dataclass
class Person:
    holder_id: int
    number: str
    national_id: str
    serial: str
    uid: str
    card_id: int

    @property
    def password(self) -> str:
        return default_password(self.national_id)


async def seed(db: Path, *, students: int = 4) -> list[Person]:
    registry = await SqlRegistry.open(db, migrate=True)
    try:
        center = CardCenter.build(Context(registry=registry, clock=SystemClock()))
        admin = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
        await center.stock.purchase(admin, CardKind.TEMP, students + 50, "2026")
        await center.stock.requisition(
            admin, CardKind.TEMP, students + 20, issued_by="科长", usage_note="测试"
        )
        await center.receipts.add_book(admin, "B1", 1, 100)
        await center.merchants.add(admin, "canteen1", "第一食堂")
        await center.merchants.add(admin, "shop1", "教育超市")
        rows = student_rows(students)
        for row in rows:
            row.valid_until = date(2030, 7, 31)
        report = await center.holders.import_roster(admin, HolderKind.STUDENT, rows)
        people: list[Person] = []
        now = datetime.now(UTC)
        for holder_id, row in zip(report.holder_ids, rows, strict=True):
            card = (await center.cards.issue_temp(admin, holder_id)).card
            await center.money.topup(admin, card.serial, 20_000)
            async with registry.transaction() as tx:
                for i in range(PURCHASES_PER_STUDENT):
                    merchant = "canteen1" if i % 2 == 0 else "shop1"
                    await tx.post(
                        purchase(holder_id, merchant, 100 + i),
                        at=now - timedelta(days=i % 10, minutes=i),
                        actor="terminal:pos-seed",
                        card_id=card.id,
                    )
            assert card.uid is not None and row.student_number and row.national_id
            people.append(
                Person(
                    holder_id, row.student_number, row.national_id, card.serial, card.uid, card.id
                )
            )
        for tid, (kind, merchant_id) in TERMINALS.items():
            await center.terminals.add(
                admin,
                tid,
                kind,
                password_hash=mosquitto_password_hash(f"pw-{tid}"),
                merchant_id=merchant_id,
            )
        return people
    finally:
        await registry.close()
