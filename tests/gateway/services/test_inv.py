"""INV: blank-card stock and requisitions, through the services on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import AccessDenied, ErrorCode, InvalidInput, OnecardError
from protocol.types import CardKind, Permission
from storage.sql import SqlRegistry
from tests.conftest import Counter, import_students
from tests.gateway.services import helpers as h


@pytest.mark.asyncio
async def test_inv1_yearly_purchase_held_by_the_section_chief(counter: Counter) -> None:
    """INV-1: cards bought each academic year are held centrally; the counter cannot take more
    than the central stock; only the stock permission records purchases."""
    c = counter
    levels = await c.center.stock.levels()
    assert levels["smart"] == {
        "bought": 1000,
        "requisitioned": 500,
        "central_stock": 500,
        "used": 0,
        "counter_stock": 500,
    }
    await c.center.stock.purchase(c.admin, CardKind.SMART, 200, "2027")
    rows = await h.find(c, "stock_purchases", kind="smart")
    assert [(r["academic_year"], r["count"], r["received_by"]) for r in rows] == [
        ("2026", 1000, "chief"),
        ("2027", 200, "chief"),
    ]
    assert (await c.center.stock.levels())["smart"]["central_stock"] == 700

    with pytest.raises(OnecardError) as err:
        await c.center.stock.requisition(
            c.admin, CardKind.SMART, 701, issued_by="王科长", usage_note="补卡用完"
        )
    assert (err.value.rule, err.value.code) == ("INV-1", ErrorCode.OUT_OF_STOCK)
    with pytest.raises(InvalidInput) as bad:
        await c.center.stock.purchase(c.admin, CardKind.TEMP, 0, "2027")
    assert bad.value.rule == "INV-1"
    with pytest.raises(AccessDenied) as denied:
        await c.center.stock.purchase(h.actor("clerk", Permission.FEES), CardKind.TEMP, 5, "2027")
    assert denied.value.code is ErrorCode.PERMISSION_DENIED
    assert await h.count(c, "stock_purchases") == 3


@pytest.mark.asyncio
async def test_inv2_requisition_registered_with_serial_range_and_usage(counter: Counter) -> None:
    """INV-2: a requisition states the current usage and who issues; it is registered with date,
    kind, count and a serial range following on from the last one."""
    c = counter
    with pytest.raises(OnecardError) as err:
        await c.center.stock.requisition(
            c.admin, CardKind.SMART, 10, issued_by="王科长", usage_note=" "
        )
    assert (err.value.rule, err.value.code) == ("INV-2", ErrorCode.INVALID_INPUT)

    req = await c.center.stock.requisition(
        c.admin, CardKind.SMART, 100, issued_by="王科长", usage_note="已用 480 张，余 20 张"
    )
    assert (req["serial_from"], req["serial_to"]) == ("1000000500", "1000000599")
    (row,) = await h.find(c, "requisitions", id=req["id"])
    assert row["at"] == c.clock.now()
    assert (row["kind"], row["count"], row["requested_by"], row["issued_by"]) == (
        "smart",
        100,
        "chief",
        "王科长",
    )
    assert row["usage_note"] == "已用 480 张，余 20 张"
    first_temp = (await h.find(c, "requisitions", kind="temp"))[0]
    assert (first_temp["serial_from"], first_temp["serial_to"]) == ("2000000000", "2000000499")
    assert len(await h.audit(c, "stock.requisition")) == 3

    _, card = await h.student_with_temp(c)
    assert card.serial == "2000000000"
    levels = (await c.center.stock.levels())["temp"]
    assert (levels["used"], levels["counter_stock"]) == (1, 499)


@pytest.mark.asyncio
async def test_inv2_counter_out_of_blank_cards_until_the_next_requisition(
    registry: SqlRegistry, tmp_path: Path
) -> None:
    """INV-2: cards come only from requisitioned ranges: when they are used up the counter must
    requisition more, and serials continue from the new range."""
    c = await h.make_counter(registry, tmp_path, books=[("B1", 1, 50)], blank_temp=2)
    ids = await import_students(c, 3)
    serials = [(await c.center.cards.issue_temp(c.op, hid)).card.serial for hid in ids[:2]]
    assert serials == ["2000000000", "2000000001"]
    with pytest.raises(OnecardError) as err:
        await c.center.cards.issue_temp(c.op, ids[2])
    assert (err.value.rule, err.value.code) == ("INV-2", ErrorCode.OUT_OF_STOCK)
    assert await h.cards_of(c, ids[2]) == []

    with pytest.raises(OnecardError) as err:  # nothing left centrally either (INV-1)
        await c.center.stock.requisition(
            c.admin, CardKind.TEMP, 1, issued_by="王科长", usage_note="用完"
        )
    assert err.value.rule == "INV-1"
    await c.center.stock.purchase(c.admin, CardKind.TEMP, 10, "2026")
    await c.center.stock.requisition(
        c.admin, CardKind.TEMP, 5, issued_by="王科长", usage_note="用完"
    )
    third = (await c.center.cards.issue_temp(c.op, ids[2])).card
    assert third.serial == "2000000002"
