"""TOP: top-up and consumption corrections, through the services on SQLite."""

from __future__ import annotations

import pytest

from protocol.errors import AccessDenied, ErrorCode, InvalidInput, OnecardError
from protocol.ledger import MAX_AMOUNT, merchant, purse
from protocol.types import Permission
from tests.conftest import Counter
from tests.gateway.services import helpers as h


@pytest.mark.asyncio
async def test_top1_cash_point_top_up_into_the_holders_purse(counter: Counter) -> None:
    """TOP-1: a cash point tops up the purse (integer fen, positive, bounded), recorded as one
    balanced transfer; only the top-up permission may do it."""
    c = counter
    student, card = await h.student_with_temp(c)
    first = await c.center.money.topup(c.op, card.serial, 5000, point="logistics-canteen-1")
    second = await c.center.money.topup(c.op, card.serial, 1)
    assert (first.balance, second.balance) == (5000, 5001)
    (transfer,) = await h.find(c, "transfers", id=first.transfer_id)
    assert (transfer["kind"], transfer["source"], transfer["dest"], transfer["amount"]) == (
        "topup",
        "cash:logistics-canteen-1",
        purse(student.id),
        5000,
    )
    assert transfer["card_id"] == card.id

    for bad in (0, -100, MAX_AMOUNT + 1):
        with pytest.raises(InvalidInput) as err:
            await c.center.money.topup(c.op, card.serial, bad)
        assert err.value.code is ErrorCode.INVALID_AMOUNT
    with pytest.raises(AccessDenied) as denied:
        await c.center.money.topup(h.actor("reports", Permission.REPORTS), card.serial, 100)
    assert denied.value.code is ErrorCode.PERMISSION_DENIED
    assert await h.balance(c, purse(student.id)) == 5001
    assert await h.count(c, "transfers", kind="topup") == 2


@pytest.mark.asyncio
async def test_top2_correction_refers_to_the_sale_and_never_exceeds_it(counter: Counter) -> None:
    """TOP-2: an over-deduction at a logistics POS is given back by a correction that refers to
    the original sale; all corrections together never exceed it; only sales at logistics POS."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.merchants.add(c.admin, "canteen-1", "第一食堂")
    await c.center.merchants.add(c.admin, "bookshop", "书店", operator_dept="外包商户")
    topped = await c.center.money.topup(c.op, card.serial, 5000)
    sale = await h.post_purchase(c, student.id, "canteen-1", 1500)
    assert await h.balance(c, purse(student.id)) == 3500

    fixed = await c.center.money.correct(c.op, sale, 500, reason="多扣 5 元")
    assert fixed.balance == 4000
    (row,) = await h.find(c, "transfers", id=fixed.transfer_id)
    assert (row["kind"], row["ref_id"], row["source"], row["dest"], row["amount"]) == (
        "correction",
        sale,
        merchant("canteen-1"),
        purse(student.id),
        500,
    )
    assert row["memo"] == "多扣 5 元"

    with pytest.raises(OnecardError) as err:
        await c.center.money.correct(c.op, sale, 1001, reason="too much")
    assert (err.value.rule, err.value.code) == ("TOP-2", ErrorCode.CORRECTION_EXCEEDS_ORIGINAL)
    assert "(10.00 yuan)" in err.value.message_en
    await c.center.money.correct(c.op, sale, 1000, reason="rest")
    with pytest.raises(OnecardError) as err:
        await c.center.money.correct(c.op, sale, 1, reason="again")
    assert err.value.code is ErrorCode.CORRECTION_EXCEEDS_ORIGINAL
    assert await h.balance(c, purse(student.id)) == 5000
    assert await h.balance(c, merchant("canteen-1")) == 0

    with pytest.raises(OnecardError) as err:
        await c.center.money.correct(c.op, topped.transfer_id, 100, reason="not a sale")
    assert (err.value.rule, err.value.code) == ("TOP-2", ErrorCode.INVALID_INPUT)
    book_sale = await h.post_purchase(c, student.id, "bookshop", 300)
    with pytest.raises(OnecardError) as err:
        await c.center.money.correct(c.op, book_sale, 100, reason="not logistics")
    assert (err.value.rule, err.value.code) == ("TOP-2", ErrorCode.NOT_ELIGIBLE)
    with pytest.raises(AccessDenied):
        await c.center.money.correct(
            h.actor("cashier", Permission.TOPUP_CENTER), sale, 1, reason="x"
        )
    assert await h.count(c, "transfers", kind="correction") == 2
