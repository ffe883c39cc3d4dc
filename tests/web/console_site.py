"""A card center for the console tests: students with money (tests/web/site.py), operators with
different rights, a staff member whose meal-subsidy card type waits to be written (MEAL-3), and
a graduating class with settled balances (the mass-block guard-rail)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from gateway.services.base import Actor, Context, SystemClock
from gateway.services.center import CardCenter
from protocol.cards.identity import make_national_id
from protocol.types import HolderKind, Permission
from storage.sql import SqlRegistry
from tests.conftest import StudentRow
from tests.gateway.services.helpers import QuotaRow, staff_rows
from tests.web.site import Person, seed

INITIAL = "Init-Pass-2026!"
CHIEF = "chief"
CHIEF_PASSWORD = "Head-Desk-2026!"
#: The second operator (approves the mass block).
SECOND = "lihua"
#: A clerk with card handling but no top-up rights (ACC-1).
NOPAY = "wangfang"
LOCKED = "zhaolei"
CLASS = ("外国语学院", "英语2022-1班")
GRADUATES = 3
THRESHOLD = 2


@dataclass
class Desk:
    people: list[Person]
    staff_name: str
    staff_serial: str
    staff_uid: str
    staff_number: str
    class_serials: list[str]


async def seed_console(db: Path) -> Desk:
    people = await seed(db, students=2)
    registry = await SqlRegistry.open(db)
    try:
        center = CardCenter.build(Context(registry=registry, clock=SystemClock()))
        admin = Actor(name="setup", permissions=frozenset(Permission), operator_id=None)
        ops = center.operators
        await ops.bootstrap(CHIEF, "陈主任", CHIEF_PASSWORD)
        for username, real, perms in (
            (SECOND, "李华", list(Permission)),
            (NOPAY, "王芳", [Permission.CARD_HANDLING, Permission.REPORTS]),
            (LOCKED, "赵磊", [Permission.CARD_HANDLING]),
        ):
            await ops.create(
                admin,
                username=username,
                real_name=real,
                department="智能卡中心",
                permissions=perms,
                approved_by="网管中心主任",
                application_ref=f"ACC-2026-{username}",
                initial_password=INITIAL,
            )
        # MEAL-3: a staff member on HR's list, enabled: the card type waits for the reader
        rows = staff_rows(1, start=70)
        staff_id = (await center.holders.import_roster(admin, HolderKind.STAFF, rows)).holder_ids[0]
        staff_card = (
            await center.cards.issue_temp(admin, staff_id, proof_ref="人事处证明 2026-07")
        ).card
        number = rows[0].staff_number
        assert number is not None and staff_card.uid is not None
        await center.meal.import_quotas(admin, [QuotaRow(2, number, 20)], source="HR")
        await center.meal.enable(admin, number)
        # TERM-5: a class whose students settled their balances (temp cards, no money)
        college, class_name = CLASS
        class_rows = [
            StudentRow(
                row_number=i + 2,
                name=f"毕业生{i + 1}",
                national_id=make_national_id("110105", date(2003, 1, 10 + i), 300 + i),
                student_number=f"2022{i + 1:06d}",
                college=college,
                class_name=class_name,
            )
            for i in range(GRADUATES)
        ]
        report = await center.holders.import_roster(admin, HolderKind.STUDENT, class_rows)
        serials = [
            (await center.cards.issue_temp(admin, hid)).card.serial for hid in report.holder_ids
        ]
        return Desk(
            people=people,
            staff_name=rows[0].name or "",
            staff_serial=staff_card.serial,
            staff_uid=staff_card.uid,
            staff_number=number,
            class_serials=serials,
        )
    finally:
        await registry.close()
