"""ISS-1 / ISS-2 / ISS-4 by class (issue 10): temp cards for a whole class handed to the college,
the class's smart cards into the print batch, and the class monitor exchanging the class's temp
cards for smart cards in one go. All-or-nothing unless partial; one line per holder."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.services.batches import NOT_HANDED_IN, OK, REFUSED, BatchReport
from protocol.cards.fees import FeeItem
from protocol.ledger import fee_income
from protocol.types import CardKind, CardState, HolderKind
from tests.conftest import Counter, import_students, student_rows
from tests.gateway.services import helpers as h

COLLEGE, CLASS = "计算机学院", "计科2026-1班"


def statuses(report: BatchReport) -> dict[str | None, str]:
    return {line.number: line.status for line in report.lines}


@pytest.mark.asyncio
async def test_iss1_temp_cards_for_a_class_all_or_nothing(counter: Counter) -> None:
    c = counter
    ids = await import_students(c, 3)
    await import_students(c, 1, start=10, class_name="计科2026-2班")
    first = await h.holder(c, ids[0])
    await c.center.cards.issue_temp(c.op, first.id)  # came to the counter on their own

    refused = await c.center.batches.issue_temp(c.op, college=COLLEGE, class_name=CLASS)
    assert not refused.applied
    assert statuses(refused) == {"2026000001": REFUSED, "2026000002": OK, "2026000003": OK}
    assert refused.refused[0].rule == "ISS-1"
    assert await h.count(c, "cards") == 1  # nothing written

    done = await c.center.batches.issue_temp(c.op, college=COLLEGE, class_name=CLASS, partial=True)
    assert done.applied
    assert done.done == 2
    for line in done.lines:
        if line.status == OK:
            assert line.serial is not None
            card = await h.card(c, line.serial)
            assert (card.kind, card.state) == (CardKind.TEMP, CardState.ACTIVE)
            assert [e["rule"] for e in await h.events(c, card.id)] == ["ISS-1"]
    assert await h.count(c, "cards") == 3  # the other class untouched
    (audit,) = await h.audit(c, "batch.issue_temp")
    assert h.loads(audit["after"])["done"] == 2


@pytest.mark.asyncio
async def test_iss2_class_print_batch_refuses_missing_photos(counter: Counter) -> None:
    c = counter
    rows = student_rows(3)
    rows[1] = replace(rows[1], photo=None)
    await c.center.holders.import_roster(c.admin, HolderKind.STUDENT, rows)
    refused = await c.center.batches.order_smart(c.op, college=COLLEGE, class_name=CLASS)
    assert not refused.applied
    (bad,) = refused.refused
    assert (bad.number, bad.rule) == ("2026000002", "ISS-2")
    assert "photo_ref" in bad.detail
    assert await h.count(c, "cards") == 0

    done = await c.center.batches.order_smart(c.op, college=COLLEGE, class_name=CLASS, partial=True)
    assert done.done == 2
    table = await c.center.reports.print_batch(c.op, college=COLLEGE, class_name=CLASS)
    assert sorted(str(r[2]) for r in table.rows) == ["2026000001", "2026000003"]


async def _class_ready_for_exchange(
    c: Counter, n: int, *, checked: int | None = None
) -> tuple[list[str], list[str]]:
    """n students with temp cards (ISS-1) and smart cards ordered (ISS-2), the first ``checked``
    (default all) checked and waiting (ISS-3)."""
    await import_students(c, n)
    issued = await c.center.batches.issue_temp(c.op, college=COLLEGE, class_name=CLASS)
    ordered = await c.center.batches.order_smart(c.op, college=COLLEGE, class_name=CLASS)
    smart = [str(line.serial) for line in ordered.lines]
    for serial in smart[:checked]:
        await c.center.cards.check_printed(c.op, serial, passed=True)
    return [str(line.serial) for line in issued.lines], smart


@pytest.mark.asyncio
async def test_iss4_class_monitor_exchanges_the_class_temp_cards(counter: Counter) -> None:
    """ISS-4: the monitor hands in the class's temp cards (a lost one is paid for, 30 yuan) and
    collects the smart cards; a student whose card did not come back is listed, untouched."""
    c = counter
    temps, smart = await _class_ready_for_exchange(c, 4)
    stray = "9999999999"
    refused = await c.center.batches.exchange(
        c.op,
        college=COLLEGE,
        class_name=CLASS,
        returned=[temps[0], temps[1].lower(), stray],
        temp_lost=["2026000003"],
        collected_by="张班长",
    )
    assert not refused.applied
    assert [line.returned for line in refused.refused] == [stray]
    assert (await h.card(c, temps[0])).state is CardState.ACTIVE  # nothing written
    assert await h.balance(c, fee_income()) == 0

    done = await c.center.batches.exchange(
        c.op,
        college=COLLEGE,
        class_name=CLASS,
        returned=[temps[0], temps[1], stray],
        temp_lost=["2026000003"],
        collected_by="张班长",
        partial=True,
    )
    assert statuses(done) == {
        None: REFUSED,  # the stray card
        "2026000001": OK,
        "2026000002": OK,
        "2026000003": OK,
        "2026000004": NOT_HANDED_IN,
    }
    assert [(await h.card(c, s)).state for s in temps] == [
        CardState.RECOVERED,
        CardState.RECOVERED,
        CardState.TERMINATED,
        CardState.ACTIVE,
    ]
    assert [(await h.card(c, s)).state for s in smart] == [
        CardState.ACTIVE,
        CardState.ACTIVE,
        CardState.ACTIVE,
        CardState.READY,
    ]
    (receipt,) = done.receipts
    assert receipt.amount == c.center.ctx.fees.amount(FeeItem.LOST_TEMP_CARD) == 3000
    (audit,) = await h.audit(c, "batch.exchange")
    assert h.loads(audit["after"])["collected_by"] == "张班长"
    register = await h.rows(
        c,
        "SELECT c.serial, o.rule, o.collector_name, o.collector_is_holder, r.serial AS back"
        " FROM hand_overs o JOIN cards c ON c.id = o.card_id"
        " LEFT JOIN cards r ON r.id = o.returned_card_id ORDER BY c.serial",
    )
    assert [(r["serial"], r["rule"], r["collector_name"], r["back"]) for r in register] == [
        (smart[0], "ISS-4", "张班长", temps[0]),
        (smart[1], "ISS-4", "张班长", temps[1]),
        (smart[2], "ISS-4", "张班长", None),  # lost, paid for
    ]


@pytest.mark.asyncio
async def test_iss4_batch_refuses_what_is_not_ready_or_not_of_the_class(counter: Counter) -> None:
    c = counter
    temps, _ = await _class_ready_for_exchange(c, 2, checked=1)
    other = await import_students(c, 1, start=20, class_name="计科2026-2班")
    foreign = (await c.center.cards.issue_temp(c.op, other[0])).card.serial
    report = await c.center.batches.exchange(
        c.op,
        college=COLLEGE,
        class_name=CLASS,
        returned=[temps[0], temps[0], temps[1], foreign],
        collected_by="张班长",
    )
    assert not report.applied
    rules = [(line.returned, line.rule, line.detail.split(" / ")[-1]) for line in report.refused]
    assert rules == [
        (temps[0], "ISS-4", "the same student is listed twice"),
        (temps[1], "ISS-3", "smart card not checked yet"),
        (foreign, "ISS-4", "not a card of this class"),
    ]
