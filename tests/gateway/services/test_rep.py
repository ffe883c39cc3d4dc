"""REP: replacement of lost cards, through the services on SQLite."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from gateway.services.reports import NO, YES
from protocol.errors import ErrorCode, OnecardError
from protocol.ledger import fee_income, purse
from protocol.types import CardKind, CardState, HolderKind
from tests.conftest import Counter, import_students, student_rows
from tests.gateway.services import helpers as h


@pytest.mark.asyncio
async def test_rep1_replacement_refused_at_47h_and_done_at_48h(counter: Counter) -> None:
    """REP-1: a replacement only 48 hours after the loss report; the operator is told when
    (campus time); an early attempt charges nothing."""
    c = counter
    student, card = await h.student_with_temp(c)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.replace(c.op, card.serial, presented_id=student.national_id)
    assert err.value.code is ErrorCode.TRANSITION_NOT_ALLOWED  # not lost: nothing to replace

    await h.lose(c, student, card.serial, hours=47)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.replace(c.op, card.serial, presented_id=student.national_id)
    assert (err.value.rule, err.value.code) == ("REP-1", ErrorCode.TOO_EARLY)
    assert "2026-11-25 10:05" in err.value.message_zh
    assert "2026-11-25 10:05" in err.value.message_en
    c.clock.advance(minutes=59, seconds=59)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.replace(c.op, card.serial, presented_id=student.national_id)
    assert err.value.rule == "REP-1"
    assert await h.count(c, "receipts") == 0
    assert (await h.card(c, card.serial)).state is CardState.LOST

    with pytest.raises(OnecardError) as err:
        await c.center.cards.replace(c.op, card.serial, presented_id=None)
    assert (err.value.rule, err.value.code) == ("REP-1", ErrorCode.AUTH_FAILED)

    c.clock.advance(seconds=1)  # exactly 48 h
    result = await c.center.cards.replace(c.op, card.serial, presented_id=student.number)
    assert result.old_card is not None
    assert result.old_card.state is CardState.REPLACED
    assert result.card.replaces_card_id == card.id
    assert [e["rule"] for e in await h.events(c, card.id)][-1] == "REP-1"


@pytest.mark.asyncio
async def test_rep2_fee_50_for_smart_30_for_temp_with_consecutive_receipts(
    counter: Counter,
) -> None:
    """REP-2: 50 yuan for a smart card, 30 yuan for a temp card; the applicant gets a receipt."""
    c = counter
    a_id, b_id = await import_students(c, 2)
    a, b = await h.holder(c, a_id), await h.holder(c, b_id)
    card_a = (await c.center.cards.issue_temp(c.op, a_id)).card
    card_b = (await c.center.cards.issue_temp(c.op, b_id)).card
    await c.center.cards.report_loss(c.op, card_a.serial, presented_id=a.national_id)
    await c.center.cards.report_loss(c.op, card_b.serial, presented_id=b.national_id)
    c.clock.advance(hours=48)

    temp = await c.center.cards.replace(c.op, card_a.serial, presented_id=a.national_id)
    smart = await c.center.cards.replace(
        c.op, card_b.serial, presented_id=b.national_id, kind=CardKind.SMART
    )
    (r1,) = temp.receipts
    (r2,) = smart.receipts
    assert (r1.amount, r1.receipt_no, r1.payer, r1.holder_id) == (3000, 1, a.name, a_id)
    assert (r2.amount, r2.receipt_no, r2.payer, r2.holder_id) == (5000, 2, b.name, b_id)
    assert "replacement_temp" in r1.item
    assert "replacement_smart" in r2.item
    assert r1.cashier == r2.cashier == c.op.name
    assert await h.balance(c, fee_income()) == 8000
    assert temp.card.kind is CardKind.TEMP
    assert smart.card.kind is CardKind.SMART


@pytest.mark.asyncio
async def test_rep3_missing_holder_data_completed_first(counter: Counter) -> None:
    """REP-3: holder data is checked; missing data (here the photo) is completed first, and the
    refused attempt leaves nothing behind (no fee, the card still lost)."""
    c = counter
    row = replace(student_rows(1)[0], photo=None)
    (hid,) = (await c.center.holders.import_roster(c.admin, HolderKind.STUDENT, [row])).holder_ids
    student = await h.holder(c, hid)
    card = (await c.center.cards.issue_temp(c.op, hid)).card
    await h.lose(c, student, card.serial)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.replace(c.op, card.serial, presented_id=student.national_id)
    assert (err.value.rule, err.value.code) == ("REP-3", ErrorCode.HOLDER_DATA_INCOMPLETE)
    assert "photo_ref" in err.value.message_en
    assert (await h.card(c, card.serial)).state is CardState.LOST
    assert await h.count(c, "receipts") == 0
    assert await h.balance(c, fee_income()) == 0
    assert len(await h.cards_of(c, hid)) == 1

    updated = await c.center.holders.update(
        c.op, hid, {"photo_ref": "photo/retake.jpg"}, reason="REP-3 completed"
    )
    assert updated.photo_ref == "photo/retake.jpg"
    (log,) = await h.audit(c, "holder.update")
    assert h.loads(log["before"]) == {"photo_ref": None}
    result = await c.center.cards.replace(c.op, card.serial, presented_id=student.national_id)
    assert result.card.state is CardState.ACTIVE


@pytest.mark.asyncio
async def test_rep4_temp_at_once_smart_after_two_working_days(counter: Counter) -> None:
    """REP-4: a temp card is handed over at once; a smart card two working days later (a weekend
    does not count), not before."""
    c = counter
    a_id, b_id = await import_students(c, 2)
    a, b = await h.holder(c, a_id), await h.holder(c, b_id)
    card_a = (await c.center.cards.issue_temp(c.op, a_id)).card
    card_b = (await c.center.cards.issue_temp(c.op, b_id)).card
    c.clock.advance(days=3)  # Thursday 2026-11-26 10:05
    await c.center.cards.report_loss(c.op, card_a.serial, presented_id=a.national_id)
    await c.center.cards.report_loss(c.op, card_b.serial, presented_id=b.national_id)
    c.clock.advance(hours=48)  # Saturday 2026-11-28

    temp = await c.center.cards.replace(c.op, card_a.serial, presented_id=a.national_id)
    assert temp.card.state is CardState.ACTIVE
    assert temp.card.handed_over_at == c.clock.now()
    assert await h.tap(c, temp.card.serial) is None

    smart = await c.center.cards.replace(
        c.op, card_b.serial, presented_id=b.national_id, kind=CardKind.SMART
    )
    assert smart.card.state is CardState.READY
    assert smart.card.ready_on == date(2026, 12, 1)  # Sat -> Mon, Tue
    c.clock.advance(days=2)  # Monday 2026-11-30
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, smart.card.serial)
    assert (err.value.rule, err.value.code) == ("REP-4", ErrorCode.TOO_EARLY)
    assert "2026-12-01" in str(err.value)
    c.clock.advance(days=1)
    handed = await c.center.cards.hand_over(
        c.op,
        smart.card.serial,
        receipt_no=smart.receipts[0].receipt_no,
        presented_id=b.national_id,
        signed=True,
    )
    assert handed.card.state is CardState.ACTIVE


@pytest.mark.asyncio
async def test_rep5_balance_follows_the_holder_to_the_new_card(counter: Counter) -> None:
    """REP-5: the purse belongs to the holder: the balance left on the lost card is there on the
    new card; the lost card can no longer spend it."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.money.topup(c.op, card.serial, 5000)
    await h.post_purchase(c, student.id, "canteen-1", 1200)
    assert await h.balance(c, purse(student.id)) == 3800
    await h.lose(c, student, card.serial)
    result = await c.center.cards.replace(c.op, card.serial, presented_id=student.national_id)
    assert await h.balance(c, purse(student.id)) == 3800  # the fee is paid in cash, not purse
    topped = await c.center.money.topup(c.op, result.card.serial, 200)
    assert topped.balance == 4000
    assert await h.tap(c, card.serial) is ErrorCode.CARD_VOID
    assert await h.tap(c, result.card.serial) is None
    # conservation: every fen is somewhere
    total = await h.rows(c, "SELECT sum(balance) AS s FROM accounts")
    assert total[0]["s"] == 0


@pytest.mark.asyncio
async def test_rep4_smart_card_collected_against_the_fee_receipt_and_signed_for(
    counter: Counter,
) -> None:
    """REP-4 "两个工作日后凭收费票据到智能卡中心签字领取": the replacement smart card is handed over
    only against the receipt of its replacement fee, to someone who shows an ID and signs; a
    proxy is named. Who collected it is registered, with the receipt (which serves once)."""
    c = counter
    student, card = await h.student_with_temp(c)
    other, other_card = await h.student_with_temp(c, start=2)
    await h.lose(c, student, card.serial)
    smart = await c.center.cards.replace(
        c.op, card.serial, presented_id=student.number, kind=CardKind.SMART
    )
    receipt_no = smart.receipts[0].receipt_no
    await h.lose(c, other, other_card.serial)
    other_receipt = (
        await c.center.cards.replace(c.op, other_card.serial, presented_id=other.number)
    ).receipts[0]
    c.clock.advance(days=5)

    attempts: list[tuple[dict[str, object], ErrorCode, str | None]] = [
        ({"presented_id": student.number, "signed": True}, ErrorCode.INVALID_INPUT, None),
        (
            {
                "receipt_no": other_receipt.receipt_no,
                "presented_id": student.number,
                "signed": True,
            },
            ErrorCode.INVALID_INPUT,
            str(other_receipt.receipt_no),
        ),
        ({"receipt_no": receipt_no, "signed": True}, ErrorCode.AUTH_FAILED, None),
        ({"receipt_no": receipt_no, "presented_id": student.number}, ErrorCode.INVALID_INPUT, None),
        (
            {"receipt_no": receipt_no, "presented_id": "510104198001010000", "signed": True},
            ErrorCode.INVALID_INPUT,
            None,
        ),
    ]
    for kwargs, code, shown in attempts:
        with pytest.raises(OnecardError) as err:
            await c.center.cards.hand_over(c.op, smart.card.serial, **kwargs)  # type: ignore[arg-type]
        assert (err.value.rule, err.value.code) == ("REP-4", code), kwargs
        assert err.value.message_zh and err.value.message_en
        if shown is not None:
            assert shown in str(err.value)
    assert (await h.card(c, smart.card.serial)).state is CardState.READY
    assert await h.count(c, "hand_overs") == 0

    handed = await c.center.cards.hand_over(
        c.op,
        smart.card.serial,
        receipt_no=receipt_no,
        presented_id="510104198001010000",
        collector_name="王同学（室友）",
        signed=True,
    )
    assert handed.card.state is CardState.ACTIVE
    assert "王同学（室友）" in handed.note
    (row,) = await h.find(c, "hand_overs", card_id=smart.card.id)
    assert (row["rule"], row["receipt_no"], row["signed"]) == ("REP-4", receipt_no, True)
    assert (row["collector_name"], row["collector_doc"], row["collector_is_holder"]) == (
        "王同学（室友）",
        "5101**********0000",  # issue 15: the register keeps the masked number only
        False,
    )
    assert row["actor"] == c.op.name
    register = await c.center.reports.hand_overs(c.op)
    (line,) = register.rows
    assert line[2] == smart.card.serial
    assert line[6:12] == ["REP-4", "王同学（室友）", "5101**********0000", NO, YES, receipt_no]
