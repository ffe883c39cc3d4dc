"""A card center for the console tests: students with money (tests/web/site.py), operators with
different rights, a staff member whose meal-subsidy card type waits to be written (MEAL-3), and
a graduating class with settled balances (the mass-block guard-rail)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gateway.services.base import Actor, Context, FixedClock, SystemClock
from gateway.services.center import CardCenter
from protocol.cards.identity import make_national_id
from protocol.types import CardKind, HolderCategory, HolderKind, Permission
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
#: Reports only: no counter procedure (the forms of issue 11 refuse it).
VIEWER = "sunyue"
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
    #: issue 11's remaining counter forms: role -> card serial (see seed_counter)
    counter: dict[str, str] = field(default_factory=dict)
    #: the visitor's deposit receipt (REF-3) and the hand-over card's original (EXC-5)
    deposit_receipt: int = 0
    original: str = ""


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
            (VIEWER, "孙悦", [Permission.REPORTS]),
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
        class_rows = _class_rows(CLASS, "毕业生", GRADUATES, year=2022, born=date(2003, 1, 10))
        report = await center.holders.import_roster(admin, HolderKind.STUDENT, class_rows)
        serials = [
            (await center.cards.issue_temp(admin, hid)).card.serial for hid in report.holder_ids
        ]
        desk = Desk(
            people=people,
            staff_name=rows[0].name or "",
            staff_serial=staff_card.serial,
            staff_uid=staff_card.uid,
            staff_number=number,
            class_serials=serials,
        )
        await seed_counter(registry, admin, desk)
        return desk
    finally:
        await registry.close()


def _class_rows(
    where: tuple[str, str], name: str, n: int, *, year: int, born: date
) -> list[StudentRow]:
    """``n`` students of one class: numbers YEAR000001.., names NAME1.., valid IDs."""
    college, class_name = where
    return [
        StudentRow(
            row_number=i + 2,
            name=f"{name}{i + 1}",
            national_id=make_national_id("110105", born + timedelta(days=i), year % 100 * 10 + i),
            student_number=f"{year}{i + 1:06d}",
            college=college,
            class_name=class_name,
        )
        for i in range(n)
    ]


COUNTER_CLASS = ("物理学院", "物理2024-1班")
#: roles of the counter-form cards: student numbers 2024000001.. in this order
COUNTER_ROLES = ("fault", "exchange", "hand_over", "terminate", "data")


async def seed_counter(registry: SqlRegistry, admin: Actor, desk: Desk) -> None:
    """Cards for the remaining counter forms, none with money: one to report faulty (EXC-3),
    one reported faulty 50 h ago (EXC-5 exchange due), one whose smart card from an exchange
    8 days ago is ready (EXC-5 hand-over against the original card), one to terminate and then
    scrap (TERM, SCR-1), one for a data change (EXC-4); and a visitor's temp card with its
    deposit (ISS-10, REF)."""
    now = datetime.now(UTC)
    clock = FixedClock(now - timedelta(days=10))
    center = CardCenter.build(Context(registry=registry, clock=clock))
    await center.stock.purchase(admin, CardKind.SMART, 10, "2026")
    await center.stock.requisition(admin, CardKind.SMART, 10, issued_by="科长", usage_note="测试")
    rows = _class_rows(COUNTER_CLASS, "柜台", len(COUNTER_ROLES), year=2024, born=date(2004, 2, 10))
    ids = (await center.holders.import_roster(admin, HolderKind.STUDENT, rows)).holder_ids
    for role, holder_id in zip(COUNTER_ROLES, ids, strict=True):
        desk.counter[role] = (await center.cards.issue_temp(admin, holder_id)).card.serial
    # EXC-5 hand-over: faulty 10 days ago, exchanged for a smart card 8 days ago
    original = desk.counter["hand_over"]
    await center.cards.report_fault(
        admin, original, presented_id="2024000003", finding="芯片无响应"
    )
    clock.set(now - timedelta(days=8))
    smart = await center.cards.complete_faulty_exchange(admin, original, kind=CardKind.SMART)
    desk.counter["hand_over"], desk.original = smart.card.serial, original
    # EXC-5 exchange: reported faulty 50 hours ago
    clock.set(now - timedelta(hours=50))
    await center.cards.report_fault(
        admin, desk.counter["exchange"], presented_id="2024000002", finding="芯片无响应"
    )
    clock.set(now)
    visitor = await center.cards.register_temporary_holder(
        admin,
        name="访客甲",
        national_id=make_national_id("110105", date(1980, 5, 6), 700),
        category=HolderCategory.VISITING_PROFESSOR,
        valid_through=date(2030, 6, 30),
        application_ref="外事处 2026-1",
    )
    issued = await center.cards.issue_temp(admin, visitor.id)
    desk.counter["refund"] = issued.card.serial
    desk.deposit_receipt = issued.receipts[0].receipt_no
    # pos-001's offline sales as uploaded: seq 1, 2, 3 and 5 (4 not yet), 5 refused
    async with registry.transaction() as tx:
        for seq in (1, 2, 3, 5):
            await tx.put(
                "offline_sales",
                {
                    "terminal_id": "pos-001",
                    "seq": seq,
                    "card_uid": issued.card.uid or "04A1B2C3D4E5F6",
                    "amount": 350,
                    "sold_at": now - timedelta(hours=2),
                    "uploaded_at": now - timedelta(hours=1),
                    "result": "card_lost" if seq == 5 else "accepted",
                },
            )
