"""EXC: exchanging faulty cards and cards whose holder data changed, on SQLite."""

from __future__ import annotations

from datetime import date

import pytest

from protocol.cards.lifecycle import ExchangeReason
from protocol.errors import ErrorCode, InvalidInput, OnecardError
from protocol.ledger import fee_income, hold, purse
from protocol.types import CardKind, CardState
from tests.conftest import Counter, import_students
from tests.gateway.services import helpers as h

DOC = "教务处〔2026〕12号 转专业"


@pytest.mark.asyncio
async def test_exc1_two_reasons_faulty_card_or_changed_data(counter: Counter) -> None:
    """EXC-1: an exchange is for a faulty card or for changed holder data; a working card is not
    exchanged as faulty without the fault report, and each exchange records its reason."""
    c = counter
    a_id, b_id = await import_students(c, 2)
    a, b = await h.holder(c, a_id), await h.holder(c, b_id)
    card_a = (await c.center.cards.issue_temp(c.op, a_id)).card
    card_b = (await c.center.cards.issue_temp(c.op, b_id)).card

    with pytest.raises(OnecardError) as err:
        await c.center.cards.complete_faulty_exchange(c.op, card_a.serial)
    assert (err.value.rule, err.value.code) == ("EXC-3", ErrorCode.TRANSITION_NOT_ALLOWED)

    await c.center.cards.report_fault(c.op, card_a.serial, presented_id=a.national_id)
    changed = await c.center.cards.exchange_for_changed_data(
        c.op,
        card_b.serial,
        presented_id=b.national_id,
        document_ref=DOC,
        changes={"class_name": "计科2026-2班"},
    )
    c.clock.advance(hours=48)
    faulty = await c.center.cards.complete_faulty_exchange(c.op, card_a.serial)
    assert faulty.old_card is not None
    assert changed.old_card is not None
    assert faulty.old_card.exchange_reason is ExchangeReason.FAULTY
    assert changed.old_card.exchange_reason is ExchangeReason.DATA_CHANGE
    assert faulty.old_card.state is changed.old_card.state is CardState.EXCHANGED


@pytest.mark.asyncio
async def test_exc2_student_pays_50_yuan_staff_pays_nothing(counter: Counter) -> None:
    """EXC-2: a student exchanging because of changed data pays 50 yuan (receipt); staff do not."""
    c = counter
    student, card = await h.student_with_temp(c)
    result = await c.center.cards.exchange_for_changed_data(
        c.op,
        card.serial,
        presented_id=student.number,
        document_ref=DOC,
        changes={"college": "数学学院", "class_name": "数学2026-1班"},
    )
    (receipt,) = result.receipts
    assert (receipt.amount, receipt.receipt_no, receipt.payer) == (5000, 1, student.name)
    assert "exchange" in receipt.item
    assert await h.balance(c, fee_income()) == 5000

    staff, smart = await h.staff_with_smart(c)
    moved = await c.center.cards.exchange_for_changed_data(
        c.op,
        smart.serial,
        presented_id=staff.national_id,
        document_ref="人事处〔2026〕5号 调动",
        changes={"department": "物理系"},
    )
    assert moved.receipts == []
    assert await h.balance(c, fee_income()) == 5000


@pytest.mark.asyncio
async def test_exc3_faulty_card_balance_frozen_48h_then_moves_to_new_card(
    counter: Counter,
) -> None:
    """EXC-3: the faulty card's balance is frozen (the purse shows 0, the card is refused); the
    exchange is refused at 47 h (naming the time) and done at 48 h with the balance back."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.money.topup(c.op, card.serial, 5000)

    frozen = await c.center.cards.report_fault(c.op, card.serial, presented_id=student.national_id)
    assert frozen.state is CardState.FROZEN
    assert frozen.frozen_at == c.clock.now()
    assert await h.balance(c, purse(student.id)) == 0
    assert await h.balance(c, hold(student.id)) == 5000
    assert await h.tap(c, card.serial) is ErrorCode.CARD_FROZEN
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, card.id)] == [
        ("report_fault", True)
    ]

    c.clock.advance(hours=47)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.complete_faulty_exchange(c.op, card.serial)
    assert (err.value.rule, err.value.code) == ("EXC-3", ErrorCode.TOO_EARLY)
    assert "2026-11-25 10:05" in str(err.value)
    assert await h.balance(c, purse(student.id)) == 0
    assert await h.count(c, "receipts") == 0

    c.clock.advance(hours=1)
    done = await c.center.cards.complete_faulty_exchange(c.op, card.serial)
    assert done.card.state is CardState.ACTIVE
    assert done.card.kind is CardKind.TEMP
    assert await h.balance(c, purse(student.id)) == 5000
    assert await h.balance(c, hold(student.id)) == 0
    kinds = [t["kind"] for t in await h.rows(c, "SELECT kind FROM transfers ORDER BY id")]
    assert kinds[-3:] == ["freeze", "fee", "release"]
    assert await h.tap(c, card.serial) is ErrorCode.CARD_VOID
    assert await h.tap(c, done.card.serial) is None


@pytest.mark.asyncio
async def test_exc4_changed_data_updates_holder_with_audit_and_exchanges_at_once(
    counter: Counter,
) -> None:
    """EXC-4: the operator checks the official document, updates the holder record (audited
    before/after) and exchanges at once; no document, no exchange."""
    c = counter
    student, card = await h.student_with_temp(c)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.exchange_for_changed_data(
            c.op,
            card.serial,
            presented_id=student.number,
            document_ref=" ",
            changes={"college": "数学学院"},
        )
    assert (err.value.rule, err.value.code) == ("EXC-4", ErrorCode.INVALID_INPUT)
    with pytest.raises(InvalidInput) as bad:
        await c.center.cards.exchange_for_changed_data(
            c.op,
            card.serial,
            presented_id=student.number,
            document_ref=DOC,
            changes={"national_id": "110105197005010101"},
        )
    assert bad.value.rule == "EXC-4"
    assert (await h.card(c, card.serial)).state is CardState.ACTIVE

    result = await c.center.cards.exchange_for_changed_data(
        c.op,
        card.serial,
        presented_id=student.number,
        document_ref=DOC,
        changes={"college": "数学学院", "class_name": "数学2026-1班"},
    )
    updated = await h.holder(c, student.id)
    assert (updated.college, updated.class_name) == ("数学学院", "数学2026-1班")
    (log,) = await h.audit(c, "holder.update")
    assert h.loads(log["before"]) == {"college": "计算机学院", "class_name": "计科2026-1班"}
    after = h.loads(log["after"])
    assert after["college"] == "数学学院"
    assert after["document"] == DOC
    assert result.card.state is CardState.ACTIVE  # a temp card: at once
    assert result.card.handed_over_at == c.clock.now()
    assert (await h.events(c, result.card.id))[0]["rule"] == "EXC-4"


@pytest.mark.asyncio
async def test_exc5_old_card_back_first_new_smart_card_after_two_working_days(
    counter: Counter,
) -> None:
    """EXC-5: the old card is handed back (void at once); a new smart card is READY with a date
    two working days later and cannot be handed over before it."""
    c = counter
    student, card = await h.student_with_temp(c)
    result = await c.center.cards.exchange_for_changed_data(
        c.op,
        card.serial,
        presented_id=student.number,
        document_ref=DOC,
        changes={"class_name": "计科2026-3班"},
        kind=CardKind.SMART,
    )
    assert result.old_card is not None
    assert result.old_card.state is CardState.EXCHANGED
    assert await h.tap(c, card.serial) is ErrorCode.CARD_VOID
    assert result.card.state is CardState.READY
    assert result.card.ready_on == date(2026, 11, 25)
    assert await h.tap(c, result.card.serial) is ErrorCode.CARD_NOT_ISSUED

    c.clock.advance(days=1)  # Tuesday
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, result.card.serial)
    assert (err.value.rule, err.value.code) == ("EXC-5", ErrorCode.TOO_EARLY)
    assert "2026-11-25" in str(err.value)
    c.clock.advance(days=1)
    handed = await c.center.cards.hand_over(c.op, result.card.serial)
    assert handed.card.state is CardState.ACTIVE
    assert await h.tap(c, result.card.serial) is None


@pytest.mark.asyncio
async def test_exc6_faulty_cards_go_to_the_vendor_not_to_scrap(counter: Counter) -> None:
    """EXC-6: a faulty exchanged card goes back to the vendor under warranty: it cannot be
    scrapped; a card exchanged for changed data can (SCR-1)."""
    c = counter
    a_id, b_id = await import_students(c, 2)
    a, b = await h.holder(c, a_id), await h.holder(c, b_id)
    card_a = (await c.center.cards.issue_temp(c.op, a_id)).card
    card_b = (await c.center.cards.issue_temp(c.op, b_id)).card
    await c.center.cards.report_fault(c.op, card_a.serial, presented_id=a.national_id)
    c.clock.advance(hours=48)
    await c.center.cards.complete_faulty_exchange(c.op, card_a.serial)
    await c.center.cards.exchange_for_changed_data(
        c.op,
        card_b.serial,
        presented_id=b.national_id,
        document_ref=DOC,
        changes={"class_name": "计科2026-2班"},
    )

    with pytest.raises(OnecardError) as err:
        await c.center.cards.scrap(c.op, card_a.serial)
    assert (err.value.rule, err.value.code) == ("EXC-6", ErrorCode.NOT_ELIGIBLE)
    assert (await h.card(c, card_a.serial)).state is CardState.EXCHANGED
    assert await h.find(c, "scrap_register", card_id=card_a.id) == []

    scrapped = await c.center.cards.scrap(c.op, card_b.serial)
    assert scrapped.state is CardState.SCRAPPED
    (row,) = await h.find(c, "scrap_register", card_id=card_b.id)
    assert row["reason"] == "exchanged"
