"""The counter's reports over data made through the real services (SQLite; PostgreSQL too).

Times: T0 is Monday 2026-11-23 10:05 campus time (02:05 UTC). Campus days and months start at
00:00 UTC+8, i.e. 16:00 UTC the day before: several facts below sit on either side of that line.
"""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from openpyxl import load_workbook

from gateway.rosterio import write_table
from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from gateway.services.reports import TOTAL, ReportService, Table
from protocol.cards.identity import make_national_id, mask_national_id
from protocol.errors import AccessDenied, InvalidInput
from protocol.ledger import fee, purchase, subsidy_grant
from protocol.types import CardKind, CardState, HolderCategory, Permission
from storage.sql import SqlRegistry
from tests.conftest import T0, Counter, import_students, student_rows
from tests.gateway.services import helpers as h

PG_ADMIN_URL = os.environ.get(
    "ONECARD_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@dataclass
class World:
    """What the scenario did, for the assertions."""

    c: Counter
    reports: ReportService
    students: list[int] = field(default_factory=list)  # 计科2026-1班
    graduates: list[int] = field(default_factory=list)  # 计科2026-2班
    temp: dict[int, str] = field(default_factory=dict)  # holder id -> temp card serial
    smart: dict[int, str] = field(default_factory=dict)  # holder id -> first smart card serial
    visitors: list[int] = field(default_factory=list)
    national_ids: list[str] = field(default_factory=list)
    renewed_smart: str = ""
    receipt_nos: list[int] = field(default_factory=list)
    sale_id: int = 0


async def pos_sale(c: Counter, holder_id: int, amount: int, merchant: str = "canteen1") -> int:
    async with c.registry.transaction() as tx:
        return await tx.post(
            purchase(holder_id, merchant, amount),
            at=c.clock.now(),
            actor="pos-7",
            terminal_id="pos-7",
            request_id=secrets.token_hex(8),
            holder_id=holder_id,
        )


async def visitor(c: Counter, seq: int, category: HolderCategory) -> tuple[int, str]:
    nid = make_national_id("110105", date(1970, 3, seq), seq)
    holder = await c.center.cards.register_temporary_holder(
        c.op,
        name=f"访客{seq}",
        national_id=nid,
        category=category,
        valid_through=date(2027, 6, 30),
        application_ref=f"APP-{seq}",
    )
    return holder.id, nid


async def build_world(c: Counter) -> World:
    w = World(c=c, reports=ReportService(c.center.ctx))
    cards, op = c.center.cards, c.op
    w.national_ids += [r.national_id or "" for r in student_rows(5)]

    # --- T0, Monday 2026-11-23 10:05 campus: intake, issuing, sales ---------------------------
    w.students = await import_students(c, 3)
    for hid in w.students:
        w.temp[hid] = (await cards.issue_temp(op, hid)).card.serial
        w.smart[hid] = (await cards.order_smart(op, hid)).card.serial
    h1, h2, _h3 = w.students
    await cards.check_printed(op, w.smart[h1], passed=True, uid="04A1B2C3D4E5F6")
    await cards.hand_over(op, w.smart[h1], returned_temp_serial=w.temp[h1])
    await cards.check_printed(op, w.smart[h2], passed=True)
    lost_fee = await cards.hand_over(op, w.smart[h2], temp_card_lost=True)
    w.receipt_nos.append(lost_fee.receipts[0].receipt_no)

    await c.center.merchants.add(op, "canteen1", "第一食堂")
    await c.center.merchants.add(op, "shop2", "校园超市")
    await c.center.money.topup(op, w.smart[h1], 5000)
    w.sale_id = await pos_sale(c, h1, 1200)
    await c.center.money.correct(op, w.sale_id, 200, reason="多扣 / over-deducted")
    async with c.registry.transaction() as tx:
        await tx.post(subsidy_grant("canteen1", 500), at=c.clock.now(), actor="pos-7")

    v1, nid1 = await visitor(c, 11, HolderCategory.VISITING_PROFESSOR)
    deposit1 = await cards.issue_temp(op, v1)
    w.temp[v1] = deposit1.card.serial
    w.receipt_nos.append(deposit1.receipts[0].receipt_no)
    w.graduates = await import_students(c, 2, start=4, class_name="计科2026-2班")
    for hid in w.graduates:
        w.temp[hid] = (await cards.issue_temp(op, hid)).card.serial

    # --- the edges of the campus day 2026-11-23 ------------------------------------------------
    c.clock.set(utc(2026, 11, 23, 15, 59))  # 23:59 campus, still the 23rd
    await pos_sale(c, h1, 300)
    c.clock.set(utc(2026, 11, 23, 16, 0))  # 00:00 campus, the 24th
    await pos_sale(c, h1, 800)

    # --- the edges of the campus month ---------------------------------------------------------
    c.clock.set(utc(2026, 11, 30, 15, 30))  # 30 Nov 23:30 campus
    v2, nid2 = await visitor(c, 12, HolderCategory.VISITING_PROFESSOR)
    deposit2 = await cards.issue_temp(op, v2)
    w.temp[v2] = deposit2.card.serial
    w.receipt_nos.append(deposit2.receipts[0].receipt_no)
    c.clock.set(utc(2026, 11, 30, 16, 30))  # 1 Dec 00:30 campus
    v3, nid3 = await visitor(c, 13, HolderCategory.OFFICIAL_VISITOR)
    deposit3 = await cards.issue_temp(op, v3)
    w.temp[v3] = deposit3.card.serial
    w.receipt_nos.append(deposit3.receipts[0].receipt_no)
    w.visitors = [v1, v2, v3]
    w.national_ids += [nid1, nid2, nid3]

    # --- Tuesday 1 Dec 10:00 campus: refund, scrap, graduation, a faulty card -------------------
    c.clock.set(utc(2026, 12, 1, 2, 0))
    await cards.refund(
        op,
        w.temp[v1],
        card_ok=True,
        presented_id=nid1,
        receipt_no=await h.deposit_receipt_no(c, v1),
    )
    await cards.scrap(op, w.temp[v1])
    await cards.scrap(op, w.temp[h1])  # the temp card handed in for the smart card (ISS-4)
    s4, s5 = w.graduates
    s5_number = (await cards.holder(s5)).number
    assert s5_number is not None
    grad = await cards.graduate_class(
        op,
        college="计算机学院",
        class_name="计科2026-2班",
        returned_serials=[w.temp[s4]],
        missing_paid=[s5_number],
    )
    w.receipt_nos.append(grad.receipts[0].receipt_no)
    await cards.scrap(op, w.temp[s4])
    await cards.report_fault(
        op, w.smart[h1], presented_id="2026000001", finding="读卡无响应，外观完好"
    )

    # --- Thursday 3 Dec: the exchange after 48 h, the yearly disposal, one more scrap ----------
    c.clock.set(utc(2026, 12, 3, 2, 0))
    exchanged = await cards.complete_faulty_exchange(op, w.smart[h1])
    w.renewed_smart = exchanged.card.serial
    w.receipt_nos.append(exchanged.receipts[0].receipt_no)
    assert await cards.dispose(op, 2026) == 3
    await cards.refund(
        op,
        w.temp[v2],
        card_ok=True,
        presented_id=nid2,
        receipt_no=await h.deposit_receipt_no(c, v2),
    )
    await cards.scrap(op, w.temp[v2])

    # --- Monday 7 Dec: two working days later the exchanged smart card is handed over ----------
    c.clock.set(utc(2026, 12, 7, 2, 0))
    await cards.hand_over(
        op, w.renewed_smart, returned_card=w.smart[h1], presented_id="2026000001", signed=True
    )
    return w


# --- ISS ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_print_batch_lists_smart_cards_being_printed(counter: Counter) -> None:
    """ISS-2: the vendor batch holds the cards still printing, with the holder's data."""
    w = await build_world(counter)
    h3 = w.students[2]
    batch = await w.reports.print_batch(w.c.op)
    assert batch.rows == [
        [w.smart[h3], "学生3", "2026000003", "计算机学院", "计科2026-1班", None, "photo/0001.jpg"]
    ]
    assert batch.headers[2] == "学号/工号 / number"
    assert batch.as_dicts()[0]["卡号 / serial"] == w.smart[h3]
    per_class = await w.reports.print_batch(w.c.op, college="计算机学院", class_name="计科2026-2班")
    assert per_class.rows == []


@pytest.mark.asyncio
async def test_issuance_counts_per_college_in_the_period(counter: Counter) -> None:
    """ISS-5: smart cards handed over and temp cards recovered, in [since, until)."""
    w = await build_world(counter)
    first_day = await w.reports.issuance(w.c.op, utc(2026, 11, 22, 16, 0), utc(2026, 11, 23, 16, 0))
    assert first_day.rows == [
        ["学生 / student", "计算机学院", 2, 0, 1],
        [TOTAL, None, 2, 0, 1],
    ]
    assert "2026-11-23 00:00" in first_day.title_zh
    whole = await w.reports.issuance(w.c.op, utc(2026, 11, 1), utc(2027, 1, 1))
    assert whole.rows[0] == ["学生 / student", "计算机学院", 3, 1, 1]  # the exchange card too
    nothing = await w.reports.issuance(w.c.op, utc(2026, 11, 24), utc(2026, 11, 30))
    assert nothing.rows == [[TOTAL, None, 0, 0, 0]]
    with pytest.raises(InvalidInput):
        await w.reports.issuance(w.c.op, utc(2026, 12, 1), utc(2026, 11, 1))


@pytest.mark.asyncio
async def test_temp_cards_per_campus_month(counter: Counter) -> None:
    """ISS-12: temp cards issued per month, split at campus (UTC+8) midnight."""
    w = await build_world(counter)
    november = await w.reports.temp_monthly(w.c.op, 2026, 11)
    assert november.rows == [
        ["学生 / student", "学生 / student", 5, 0, 0],
        ["其他人员 / other", "客座教授 / visiting professor", 2, 0, 2],
        [TOTAL, None, 7, 0, 2],
    ]
    december = await w.reports.temp_monthly(w.c.op, 2026, 12)
    assert december.rows == [
        ["其他人员 / other", "公务交流人员 / official visitor", 1, 0, 1],
        [TOTAL, None, 1, 0, 1],
    ]
    assert december.title_en == "temp cards issued, 2026-12"
    with pytest.raises(InvalidInput):
        await w.reports.temp_monthly(w.c.op, 2026, 13)


# --- FEE ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_receipt_register_in_a_period(counter: Counter) -> None:
    """FEE-3: every receipt with number, date, payer, item, amount, cashier and book."""
    w = await build_world(counter)
    assert w.receipt_nos == [1, 2, 3, 4, 5, 6]
    november = await w.reports.receipts(w.c.op, utc(2026, 10, 31, 16, 0), utc(2026, 11, 30, 16, 0))
    assert november.rows == [
        [
            1,
            "2026-11-23 10:05",
            "学生2",
            "临时CPU卡工本费 / lost_temp_card",
            "30.00",
            "chief",
            "B0001",
        ],
        [2, "2026-11-23 10:05", "访客11", "临时卡押金 / deposit", "30.00", "chief", "B0001"],
        [3, "2026-11-30 23:30", "访客12", "临时卡押金 / deposit", "30.00", "chief", "B0001"],
        [TOTAL, None, None, "3 张 / receipts", "90.00", None, None],
    ]
    everything = await w.reports.receipts(w.c.op, utc(2026, 1, 1), utc(2027, 1, 1))
    assert everything.column("receipt no.")[:-1] == [1, 2, 3, 4, 5, 6]
    assert everything.rows[-1][4] == "220.00"
    assert everything.rows[4][2:5] == ["学生5", "未交卡工本费 / missing_card", "50.00"]


@pytest.mark.asyncio
async def test_receipt_books_used_and_unused(counter: Counter) -> None:
    """FEE-4: per book numbers used, unused, amount, used-up date and reconciliation."""
    w = await build_world(counter)
    books = await w.reports.receipt_books(w.c.op)
    assert [r[:3] + r[4:] for r in books.rows] == [
        ["B0001", 1, 50, "chief", 6, 44, "220.00", None, None],
        ["B0002", 51, 100, "chief", 0, 50, "0.00", None, None],
    ]
    assert books.rows[0][3] == "2026-11-23 10:05"


@pytest.mark.asyncio
async def test_receipt_book_used_up_and_reconciled(counter: Counter) -> None:
    """FEE-4: a used-up book shows when, and the reconciliation that took it back."""
    c = counter
    await c.center.receipts.add_book(c.op, "B0003", 101, 101)
    # use up B0001 and B0002 (100 receipts) and one more: the one-receipt book B0003
    (hid,) = await import_students(c, 1)
    async with c.registry.transaction() as tx:
        for n in range(101):
            tid = await tx.post(fee(n + 1, memo="test"), at=c.clock.now(), actor="chief")
            await tx.issue_receipt(
                holder_id=hid,
                payer="学生1",
                item="补卡费 / replacement",
                amount=n + 1,
                at=c.clock.now(),
                cashier="chief",
                transfer_id=tid,
            )
    c.clock.advance(hours=1)
    summary = await c.center.receipts.reconcile(c.op, allow_partial=True)
    books = await ReportService(c.center.ctx).receipt_books(c.op)
    assert [(r[0], r[5], r[6], r[8], r[9]) for r in books.rows] == [
        ("B0001", 50, 0, "2026-11-23 10:05", summary["id"]),
        ("B0002", 50, 0, "2026-11-23 10:05", summary["id"]),
        ("B0003", 1, 0, "2026-11-23 10:05", summary["id"]),
    ]
    assert books.rows[2][7] == "1.01"


# --- SCR / TERM ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_scrap_register_with_disposal_year(counter: Counter) -> None:
    """SCR-2: one row per card; the yearly disposal's year once disposed."""
    w = await build_world(counter)
    v1, v2, _ = w.visitors
    h1, s4 = w.students[0], w.graduates[0]
    register = await w.reports.scrap_register(w.c.op)
    assert [r[1:] for r in register.rows] == [
        ["2026-12-01 10:00", w.temp[v1], "临时卡 / temp", "refunded", "chief", 2026],
        ["2026-12-01 10:00", w.temp[h1], "临时卡 / temp", "recovered", "chief", 2026],
        ["2026-12-01 10:00", w.temp[s4], "临时卡 / temp", "terminated", "chief", 2026],
        ["2026-12-03 10:00", w.temp[v2], "临时卡 / temp", "refunded", "chief", None],
    ]
    assert register.column("no.") == [1, 2, 3, 4]
    disposed = await w.reports.scrap_register(w.c.op, disposal_year=2026)
    assert len(disposed.rows) == 3
    assert (await w.reports.scrap_register(w.c.op, 2026)).rows == register.rows
    assert (await w.reports.scrap_register(w.c.op, 2025)).rows == []


@pytest.mark.asyncio
async def test_clearances_of_a_class(counter: Counter) -> None:
    """TERM-5: certificate, card returned or paid for (with the receipt), per student."""
    w = await build_world(counter)
    s4, s5 = w.graduates
    table = await w.reports.clearances(w.c.op, "计算机学院", "计科2026-2班")
    assert table.rows == [
        ["2026000004", "学生4", f"GC2026-{s4:06d}", "是 / yes", None, "2026-12-01 10:00"],
        ["2026000005", "学生5", f"GC2026-{s5:06d}", "否 / no", 5, "2026-12-01 10:00"],
    ]
    assert (await w.reports.clearances(w.c.op, "计算机学院", "计科2026-1班")).rows == []


# --- settlement ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_daily_settlement_per_merchant_on_campus_days(counter: Counter) -> None:
    """Sales, subsidy, corrections (TOP-2) and net per merchant, per campus-time day."""
    w = await build_world(counter)
    monday = await w.reports.daily_settlement(w.c.op, date(2026, 11, 23))
    assert monday.rows == [
        ["canteen1", "第一食堂", 2, "15.00", 1, "5.00", 1, "2.00", "18.00"],
        ["shop2", "校园超市", 0, "0.00", 0, "0.00", 0, "0.00", "0.00"],
        [TOTAL, None, 2, "15.00", 1, "5.00", 1, "2.00", "18.00"],
    ]
    tuesday = await w.reports.daily_settlement(w.c.op, date(2026, 11, 24))
    assert tuesday.rows[0] == ["canteen1", "第一食堂", 1, "8.00", 0, "0.00", 0, "0.00", "8.00"]
    # a sale at a merchant not (yet) registered still settles, without a name
    w.c.clock.set(utc(2026, 12, 8, 4, 0))
    await pos_sale(w.c, w.students[0], 100, merchant="water3")
    december = await w.reports.daily_settlement(w.c.op, date(2026, 12, 8))
    assert december.rows[2] == ["water3", None, 1, "1.00", 0, "0.00", 0, "0.00", "1.00"]


# --- INV / EXC ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stock_and_requisition_register(counter: Counter) -> None:
    """INV-1 / INV-2: stock per kind and the 新卡领用登记表."""
    w = await build_world(counter)
    stock = await w.reports.stock(w.c.op)
    assert stock.rows == [
        ["智能卡 / smart", 1000, 500, 500, 4, 496],
        ["临时卡 / temp", 1000, 500, 500, 8, 492],
    ]
    reqs = await w.reports.requisitions(w.c.op)
    assert reqs.rows == [
        [
            "2026-11-23 10:05",
            "智能卡 / smart",
            500,
            "1000000000",
            "1000000499",
            "chief",
            "王科长",
            "新生入学",
        ],
        [
            "2026-11-23 10:05",
            "临时卡 / temp",
            500,
            "2000000000",
            "2000000499",
            "chief",
            "王科长",
            "新生入学",
        ],
    ]


@pytest.mark.asyncio
async def test_warranty_lots_from_the_exchange(counter: Counter) -> None:
    """EXC-6: the faulty card taken back in the exchange waits for a lot of 100."""
    w = await build_world(counter)
    lots = await w.reports.warranty_lots(w.c.op)
    h1 = w.students[0]
    assert lots.rows == [
        [1, 1, w.smart[h1], "智能卡 / smart", "2026-12-03 10:00", "未满 1/100 / open"]
    ]


@pytest.mark.asyncio
async def test_warranty_lots_group_by_hundred(counter: Counter) -> None:
    """EXC-6: 101 faulty cards make one full lot and one open lot, oldest first."""
    c = counter
    (hid,) = await import_students(c, 1)
    async with c.registry.transaction() as tx:
        for n in range(101):
            at = utc(2026, 12, 1, 2, 0).replace(minute=n % 60, hour=2 + n // 60)
            card_id = await tx.insert(
                "cards",
                {
                    "serial": f"9{n:09d}",
                    "kind": CardKind.SMART.value,
                    "holder_id": hid,
                    "state": CardState.EXCHANGED.value,
                    "exchange_reason": "faulty",
                    "created_at": at,
                    "updated_at": at,
                },
            )
            await tx.insert(
                "card_events",
                {
                    "card_id": card_id,
                    "event": "exchange",
                    "from_state": "frozen",
                    "to_state": "exchanged",
                    "rule": "EXC-3",
                    "at": at,
                    "actor": "chief",
                    "channel": "counter",
                },
            )
    lots = await ReportService(c.center.ctx).warranty_lots(c.op)
    assert len(lots.rows) == 101
    assert lots.rows[0][:3] == [1, 1, "9000000000"]
    assert lots.rows[99][:2] == [1, 100]
    assert {r[5] for r in lots.rows[:100]} == {"已满，可寄回厂家 / full: send to the vendor"}
    assert lots.rows[100] == [
        2,
        1,
        "9000000100",
        "智能卡 / smart",
        "2026-12-01 11:40",
        "未满 1/100 / open",
    ]


# --- audit / permissions ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_audit_log_newest_first_and_ids_masked(counter: Counter) -> None:
    c = counter
    (hid,) = await import_students(c, 1)
    nid = student_rows(1)[0].national_id or ""
    async with c.registry.transaction() as tx:
        await tx.audit(c.clock.now(), "chief", "holder.note", "holder", hid, None, {"id": nid})
    reports = ReportService(c.center.ctx)
    table = await reports.audit(c.op, "holder", limit=5)
    newest = table.rows[0]
    assert newest[2:6] == ["chief", "holder.note", "holder", str(hid)]
    assert newest[7] == f'{{"id": "{mask_national_id(nid)}"}}'
    assert nid not in str(table.rows)
    everything = await reports.audit(c.op)
    ids = [v for v in everything.column("no.") if isinstance(v, int)]
    assert len(ids) == len(everything.rows) > 3
    assert ids == sorted(ids, reverse=True)
    assert len((await reports.audit(c.op, limit=2)).rows) == 2
    only = await reports.audit(c.op, "roster", entity_id="student")
    assert [r[3] for r in only.rows] == ["holder.import"]
    with pytest.raises(InvalidInput):
        await reports.audit(c.op, limit=0)


@pytest.mark.asyncio
async def test_permissions(counter: Counter) -> None:
    """ACC-1: reports need the report permission; the print batch is counter work."""
    reports = ReportService(counter.center.ctx)
    viewer = Actor(name="viewer", permissions=frozenset({Permission.REPORTS}))
    clerk = Actor(name="clerk", permissions=frozenset({Permission.CARD_HANDLING}))
    assert (await reports.stock(viewer)).rows[0][1] == 1000
    assert (await reports.print_batch(clerk)).rows == []
    with pytest.raises(AccessDenied):
        await reports.print_batch(viewer)
    with pytest.raises(AccessDenied):
        await reports.receipts(clerk, utc(2026, 1, 1), utc(2027, 1, 1))
    with pytest.raises(AccessDenied):
        await reports.audit(clerk)


# --- export -------------------------------------------------------------------------------------


async def all_tables(w: World) -> list[Table]:
    r, op = w.reports, w.c.op
    return [
        await r.print_batch(op),
        await r.issuance(op, utc(2026, 11, 1), utc(2027, 1, 1)),
        await r.temp_monthly(op, 2026, 11),
        await r.receipts(op, utc(2026, 1, 1), utc(2027, 1, 1)),
        await r.receipt_books(op),
        await r.scrap_register(op),
        await r.clearances(op, "计算机学院", "计科2026-2班"),
        await r.daily_settlement(op, date(2026, 11, 23)),
        await r.stock(op),
        await r.requisitions(op),
        await r.warranty_lots(op),
        await r.audit(op, limit=500),
    ]


def _cell_text(value: object) -> str:
    return "" if value is None else str(value)


@pytest.mark.asyncio
async def test_every_report_writes_to_xlsx_and_csv(counter: Counter, tmp_path: Path) -> None:
    w = await build_world(counter)
    for index, table in enumerate(await all_tables(w)):
        assert table.rows, table.title
        csv_path = tmp_path / f"report{index}.csv"
        xlsx_path = tmp_path / f"report{index}.xlsx"
        assert write_table(csv_path, table.headers, table.rows) == len(table.rows)
        assert write_table(xlsx_path, table.headers, table.rows) == len(table.rows)
        with csv_path.open(encoding="utf-8-sig", newline="") as fh:
            back = list(csv.reader(fh))
        assert back[0] == table.headers
        assert back[1:] == [[_cell_text(v) for v in row] for row in table.rows]
        text = csv_path.read_text(encoding="utf-8-sig")
        for nid in w.national_ids:
            assert nid not in text, f"{table.title_en} leaks a national ID"
        book = load_workbook(xlsx_path, read_only=True)
        try:
            width = len(table.headers)  # read-only sheets drop trailing empty cells
            cells = [
                [*r, *[None] * (width - len(r))]
                for r in book.worksheets[0].iter_rows(values_only=True)
            ]
        finally:
            book.close()
        assert cells[0] == table.headers
        assert cells[1:] == table.rows


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def pg_counter() -> AsyncIterator[Counter]:
    """The ``counter`` fixture's card center on a fresh PostgreSQL database."""
    import asyncpg  # the ``postgres`` extra: only this test needs it

    name = f"onecard_reports_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        registry = await SqlRegistry.open(url, migrate=True)
        try:
            clock = FixedClock(T0)
            center = CardCenter.build(Context(registry=registry, clock=clock))
            chief = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
            await center.stock.purchase(chief, CardKind.SMART, 1000, "2026")
            await center.stock.purchase(chief, CardKind.TEMP, 1000, "2026")
            for kind in (CardKind.SMART, CardKind.TEMP):
                await center.stock.requisition(
                    chief, kind, 500, issued_by="王科长", usage_note="新生入学"
                )
            await center.receipts.add_book(chief, "B0001", 1, 50)
            await center.receipts.add_book(chief, "B0002", 51, 100)
            yield Counter(center, clock, registry, chief, Path(name))
        finally:
            await registry.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_postgres_reports_match_sqlite(counter: Counter, pg_counter: Counter) -> None:
    """The same scenario gives the same reports on PostgreSQL as on SQLite (portable SQL)."""
    on_sqlite = await all_tables(await build_world(counter))
    on_postgres = await all_tables(await build_world(pg_counter))
    for lite, pg in zip(on_sqlite, on_postgres, strict=True):
        assert pg.rows == lite.rows, lite.title_en
    settlement = on_postgres[7]
    assert settlement.rows[0][-1] == "18.00"
