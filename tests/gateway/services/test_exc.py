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

    await c.center.cards.report_fault(
        c.op, card_a.serial, presented_id=a.national_id, finding="读卡无响应，外观完好"
    )
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

    frozen = await c.center.cards.report_fault(
        c.op, card.serial, presented_id=student.national_id, finding="读卡无响应，外观完好"
    )
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
    handed = await c.center.cards.hand_over(
        c.op,
        result.card.serial,
        returned_card=card.serial,
        presented_id=student.number,
        signed=True,
    )
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
    await c.center.cards.report_fault(
        c.op, card_a.serial, presented_id=a.national_id, finding="读卡无响应，外观完好"
    )
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


@pytest.mark.asyncio
async def test_exc5_smart_card_collected_against_the_original_card(counter: Counter) -> None:
    """EXC-5 "申请人退回原卡后，方可领取新卡 … 凭原卡到智能卡中心签字领取": the exchanged smart card is
    handed over only when the original card comes back (its serial or the UID read from it) to
    someone who shows an ID and signs; the original is then in the center's hands. A new temp
    card is handed over at once, so its old card comes back at the exchange."""
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
    assert not (await h.card(c, card.serial)).in_custody  # the holder still has it
    other, other_card = await h.student_with_temp(c, start=5)
    c.clock.advance(days=2)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(
            c.op, result.card.serial, presented_id=student.number, signed=True
        )
    assert (err.value.rule, err.value.code) == ("EXC-5", ErrorCode.NOT_ELIGIBLE)
    assert card.serial in str(err.value)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(
            c.op,
            result.card.serial,
            returned_card=other_card.serial,
            presented_id=student.number,
            signed=True,
        )
    assert (err.value.rule, err.value.code) == ("EXC-5", ErrorCode.INVALID_INPUT)
    assert other_card.serial in str(err.value)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, result.card.serial, returned_card=card.serial)
    assert (err.value.rule, err.value.code) == ("EXC-5", ErrorCode.AUTH_FAILED)

    assert card.uid is not None
    typed_uid = ":".join(card.uid[i : i + 2] for i in range(0, len(card.uid), 2)).lower()
    handed = await c.center.cards.hand_over(
        c.op, result.card.serial, returned_card=typed_uid, presented_id=student.number, signed=True
    )
    assert handed.card.state is CardState.ACTIVE
    back = await h.card(c, card.serial)
    assert back.in_custody
    (row,) = await h.find(c, "hand_overs", card_id=result.card.id)
    assert (row["rule"], row["returned_card_id"], row["collector_is_holder"]) == (
        "EXC-5",
        card.id,
        True,
    )
    assert row["collector_name"] == student.name

    swapped = await c.center.cards.exchange_for_changed_data(
        c.op,
        other_card.serial,
        presented_id=other.number,
        document_ref=DOC,
        changes={"class_name": "计科2026-3班"},
    )
    assert swapped.card.kind is CardKind.TEMP
    assert (await h.card(c, other_card.serial)).in_custody


@pytest.mark.asyncio
async def test_exc3_only_a_fault_not_caused_by_the_holder_and_not_repairable(
    counter: Counter,
) -> None:
    """EXC-3 "非人为损坏的故障且无法修复的": the clerk checks the card and records the finding; a
    repairable card and a card the holder damaged are refused (the latter goes the paid route:
    loss report and replacement with the fee) and nothing is frozen, but the inspection stays
    recorded; an accepted fault carries the finding in the card's history."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.money.topup(c.op, card.serial, 3000)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.report_fault(
            c.op, card.serial, presented_id=student.number, finding=" "
        )
    assert (err.value.rule, err.value.code) == ("EXC-3", ErrorCode.INVALID_INPUT)
    for flags, words in (
        ({"repairable": True}, "修复"),
        ({"holder_damaged": True}, "补卡"),
    ):
        with pytest.raises(OnecardError) as err:
            await c.center.cards.report_fault(
                c.op,
                card.serial,
                presented_id=student.number,
                finding="卡面断裂" if "holder_damaged" in flags else "触点氧化",
                **flags,
            )
        assert (err.value.rule, err.value.code) == ("EXC-3", ErrorCode.NOT_ELIGIBLE)
        assert words in err.value.message_zh
    assert "REP-1/2" in err.value.message_en
    assert (await h.card(c, card.serial)).state is CardState.ACTIVE
    assert await h.balance(c, purse(student.id)) == 3000
    inspections = await h.audit(c, "card.fault_inspection")
    assert [
        (h.loads(r["after"])["finding"], h.loads(r["after"])["accepted"]) for r in inspections
    ] == [("触点氧化", False), ("卡面断裂", False)]

    frozen = await c.center.cards.report_fault(
        c.op, card.serial, presented_id=student.number, finding="芯片无响应，外观完好"
    )
    assert frozen.state is CardState.FROZEN
    assert (await h.events(c, card.id))[-1]["detail"] == "finding: 芯片无响应，外观完好"
    assert h.loads((await h.audit(c, "card.fault_inspection"))[-1]["after"])["accepted"] is True
