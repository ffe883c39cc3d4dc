"""TERM: termination on leaving, temp-card validity and graduation, through the services."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.services.base import SYSTEM
from protocol.cards.clock import end_of_validity
from protocol.cards.identity import mask_id_doc
from protocol.cards.lifecycle import auto_termination_at
from protocol.errors import ErrorCode, OnecardError
from protocol.ledger import deposit, fee_income, hold, purse
from protocol.types import CardState, HolderStatus
from tests.conftest import Counter, import_students
from tests.gateway.services import helpers as h

#: The visitors' last valid day and the first moment they are no longer valid (campus midnight).
LAST_DAY = date(2026, 11, 30)
END = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)


@pytest.mark.asyncio
async def test_term1_leaving_staff_card_ends_everywhere_and_holder_deregistered(
    counter: Counter,
) -> None:
    """TERM-1: a leaving staff member hands the card back (with ID); the card is terminated and
    denied everywhere, the holder is deregistered and the card takes no more money."""
    c = counter
    staff, card = await h.staff_with_smart(c)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.terminate(c.op, card.serial, reason="resignation", presented_id=None)
    assert (err.value.rule, err.value.code) == ("TERM-1", ErrorCode.AUTH_FAILED)

    ended = await c.center.cards.terminate(
        c.op, card.serial, reason="resignation", presented_id=staff.national_id
    )
    assert ended.state is CardState.TERMINATED
    last = (await h.events(c, card.id))[-1]
    assert (last["event"], last["rule"], last["detail"]) == ("terminate", "TERM-1", "resignation")
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, card.id)] == [
        ("terminate", True)
    ]
    assert await h.tap(c, card.serial) is ErrorCode.CARD_TERMINATED
    assert (await h.holder(c, staff.id)).status is HolderStatus.DEREGISTERED
    with pytest.raises(OnecardError) as err:
        await c.center.money.topup(c.op, card.serial, 100)
    assert err.value.rule == "TERM-6"  # the holder is deregistered
    assert await h.balance(c, purse(staff.id)) == 0


@pytest.mark.asyncio
async def test_term1_dropout_ends_every_card_including_one_being_printed(
    counter: Counter,
) -> None:
    """TERM-1: card function ends in every subsystem: a smart card still at the printer is
    terminated with the temp card."""
    c = counter
    student, temp = await h.student_with_temp(c)
    ordered = await c.center.cards.order_smart(c.op, student.id)
    await c.center.cards.terminate(c.op, temp.serial, reason="dropout", presented_id=student.number)
    states = {k.serial: k.state for k in await h.cards_of(c, student.id)}
    assert states == {temp.serial: CardState.TERMINATED, ordered.card.serial: CardState.TERMINATED}


@pytest.mark.asyncio
async def test_term2_temp_card_stops_the_moment_validity_ends_and_extension_restores(
    counter: Counter,
) -> None:
    """TERM-2: a temp card is refused from the first moment after its validity, even before the
    scheduler runs; the scheduler then expires it (deny list); an extension restores it."""
    c = counter
    visitor, card = await h.visitor_with_temp(c, valid_through=LAST_DAY)
    assert card.valid_until == END == end_of_validity(LAST_DAY)
    assert await h.tap(c, card.serial, END - timedelta(seconds=1)) is None
    assert await h.tap(c, card.serial, END) is ErrorCode.CARD_EXPIRED  # state still ACTIVE

    c.clock.set(END - timedelta(minutes=1))
    assert await c.center.cards.run_due(SYSTEM) == []
    c.clock.set(END + timedelta(minutes=5))
    assert (await h.card(c, card.serial)).state is CardState.ACTIVE
    assert await h.tap(c, card.serial) is ErrorCode.CARD_EXPIRED
    (expired,) = await c.center.cards.run_due(SYSTEM)
    assert expired.id == card.id
    assert expired.state is CardState.EXPIRED
    last = (await h.events(c, card.id))[-1]
    assert (last["event"], last["rule"], last["channel"]) == ("expire", "TERM-2", "scheduler")
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, card.id)] == [("expire", True)]

    extended = await c.center.cards.extend(c.op, card.serial, valid_through=date(2027, 5, 31))
    assert extended.state is CardState.ACTIVE
    assert extended.valid_until == end_of_validity(date(2027, 5, 31))
    assert (await h.holder(c, visitor.id)).valid_until == extended.valid_until
    assert await h.tap(c, card.serial) is None
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, card.id)][-1] == (
        "extend",
        False,
    )


@pytest.mark.asyncio
async def test_term3_extension_within_3_months_else_automatic_termination(
    counter: Counter,
) -> None:
    """TERM-3: within 3 months after expiry the temp card can still be extended; from then on
    the extension is refused and the scheduler terminates the card for good."""
    c = counter
    _, early = await h.visitor_with_temp(c, seq=1, valid_through=LAST_DAY)
    _, late = await h.visitor_with_temp(c, seq=2, valid_through=LAST_DAY)
    c.clock.set(END + timedelta(days=1))
    assert len(await c.center.cards.run_due(SYSTEM)) == 2

    due = auto_termination_at((await h.card(c, late.serial)).facts)
    assert due == datetime(2027, 2, 28, 16, 0, tzinfo=UTC)  # 3 months after, campus midnight
    c.clock.set(due - timedelta(minutes=1))
    assert await c.center.cards.run_due(SYSTEM) == []
    renewed = await c.center.cards.extend(c.op, early.serial, valid_through=date(2027, 6, 30))
    assert renewed.state is CardState.ACTIVE
    assert (await h.events(c, early.id))[-1]["rule"] == "TERM-3"

    c.clock.set(due)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.extend(c.op, late.serial, valid_through=date(2027, 6, 30))
    assert (err.value.rule, err.value.code) == ("TERM-3", ErrorCode.TOO_LATE)
    (ended,) = await c.center.cards.run_due(SYSTEM)
    assert ended.id == late.id
    assert ended.state is CardState.TERMINATED
    last = (await h.events(c, late.id))[-1]
    assert (last["event"], last["rule"]) == ("auto_terminate", "TERM-3")
    assert await h.tap(c, late.serial) is ErrorCode.CARD_TERMINATED
    with pytest.raises(OnecardError) as err:
        await c.center.cards.extend(c.op, late.serial, valid_through=date(2027, 6, 30))
    assert err.value.code is ErrorCode.TRANSITION_NOT_ALLOWED
    assert (await h.card(c, early.serial)).state is CardState.ACTIVE


@pytest.mark.asyncio
async def test_term4_balance_settled_first_and_lost_card_replaced_first(
    counter: Counter,
) -> None:
    """TERM-4: leaving holders settle the balance first (a frozen balance counts too); a lost
    card goes through replacement first, then the new card comes back."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.money.topup(c.op, card.serial, 800)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.terminate(
            c.op, card.serial, reason="dropout", presented_id=student.number
        )
    assert (err.value.rule, err.value.code) == ("TERM-4", ErrorCode.BALANCE_NOT_SETTLED)

    await h.lose(c, student, card.serial, hours=1)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.terminate(
            c.op, card.serial, reason="dropout", presented_id=student.number
        )
    assert (err.value.rule, err.value.code) == ("TERM-4", ErrorCode.TRANSITION_NOT_ALLOWED)
    assert (await h.card(c, card.serial)).state is CardState.LOST

    c.clock.advance(hours=47)
    new = (await c.center.cards.replace(c.op, card.serial, presented_id=student.number)).card
    await c.center.cards.report_fault(
        c.op, new.serial, presented_id=student.number, finding="读卡无响应，外观完好"
    )
    assert await h.balance(c, hold(student.id)) == 800
    with pytest.raises(OnecardError) as err:
        await c.center.cards.terminate(
            c.op, new.serial, reason="dropout", presented_id=student.number
        )
    assert (err.value.rule, err.value.code) == ("TERM-4", ErrorCode.BALANCE_NOT_SETTLED)

    c.clock.advance(hours=48)
    newer = (await c.center.cards.complete_faulty_exchange(c.op, new.serial)).card
    await c.center.money.cash_out(c.op, newer.serial)
    ended = await c.center.cards.terminate(
        c.op, newer.serial, reason="dropout", presented_id=student.number
    )
    assert ended.state is CardState.TERMINATED
    assert await h.balance(c, purse(student.id)) == await h.balance(c, hold(student.id)) == 0


@pytest.mark.asyncio
async def test_term5_graduation_per_class_with_clearance_certificates(counter: Counter) -> None:
    """TERM-5: per class: returned cards, a missing card paid (50 yuan receipt), a student with
    an unsettled balance and one with neither card nor fee are blocked; cleared students get a
    certificate and are deregistered; a card from another class refuses the whole batch."""
    c = counter
    ids = await import_students(c, 4)
    people = [await h.holder(c, i) for i in ids]
    cards = [(await c.center.cards.issue_temp(c.op, i)).card for i in ids]
    returner, payer, debtor, absent = people
    await c.center.money.topup(c.op, cards[2].serial, 500)
    (other_id,) = await import_students(c, 1, start=50, class_name="计科2026-2班")
    other_card = (await c.center.cards.issue_temp(c.op, other_id)).card

    with pytest.raises(OnecardError) as err:
        await c.center.cards.graduate_class(
            c.op,
            college="计算机学院",
            class_name="计科2026-1班",
            returned_serials=[cards[0].serial, other_card.serial],
            missing_paid=[],
        )
    assert (err.value.rule, err.value.code) == ("TERM-5", ErrorCode.INVALID_INPUT)
    assert await h.count(c, "clearances") == 0
    assert (await h.card(c, cards[0].serial)).state is CardState.ACTIVE

    report = await c.center.cards.graduate_class(
        c.op,
        college="计算机学院",
        class_name="计科2026-1班",
        returned_serials=[cards[0].serial],
        missing_paid=[str(payer.number)],
    )
    assert [n for n, _ in report.cleared] == [returner.number, payer.number]
    assert [n for n, _ in report.blocked] == [debtor.number, absent.number]
    assert "5.00 元" in report.blocked[0][1]
    assert (report.returned, report.missing_paid) == (1, 1)
    (receipt,) = report.receipts
    assert (receipt.amount, receipt.payer, receipt.receipt_no) == (5000, payer.name, 1)
    assert "missing_card" in receipt.item
    assert await h.balance(c, fee_income()) == 5000

    clearances = {r["holder_id"]: r for r in await h.find(c, "clearances")}
    assert set(clearances) == {returner.id, payer.id}
    assert clearances[returner.id]["card_returned"] is True
    assert clearances[returner.id]["receipt_no"] is None
    assert clearances[payer.id]["card_returned"] is False
    assert clearances[payer.id]["receipt_no"] == 1
    assert clearances[returner.id]["certificate_no"] == dict(report.cleared)[str(returner.number)]
    for who, card in ((returner, cards[0]), (payer, cards[1])):
        assert (await h.holder(c, who.id)).status is HolderStatus.DEREGISTERED
        assert (await h.card(c, card.serial)).state is CardState.TERMINATED
        assert (await h.events(c, card.id))[-1]["rule"] == "TERM-5"
    assert await h.tap(c, cards[1].serial) is ErrorCode.CARD_TERMINATED  # unreturned card denied
    for who, card in ((debtor, cards[2]), (absent, cards[3])):
        assert (await h.holder(c, who.id)).status is HolderStatus.ACTIVE
        assert (await h.card(c, card.serial)).state is CardState.ACTIVE


@pytest.mark.asyncio
async def test_term6_holder_data_backed_up_before_deregistration(counter: Counter) -> None:
    """TERM-6: the archive snapshot (holder and cards, no password) is written before the holder
    is deregistered; a held deposit is paid back on the way out."""
    c = counter
    visitor, card = await h.visitor_with_temp(c)
    ended = await c.center.cards.terminate(
        c.op, card.serial, reason="contract ended", presented_id=visitor.national_id
    )
    assert ended.state is CardState.TERMINATED
    (archived,) = await h.find(c, "holder_archive", holder_id=visitor.id)
    snapshot = h.loads(archived["snapshot"])
    assert archived["reason"] == "contract ended"
    assert snapshot["status"] == "active"  # the data as it was before deregistration
    assert snapshot["national_id"] == mask_id_doc(visitor.national_id or "")  # issue 15: no copy
    assert snapshot["cards"][0]["serial"] == card.serial
    assert "password_hash" not in snapshot
    gone = await h.holder(c, visitor.id)
    assert gone.status is HolderStatus.DEREGISTERED
    assert archived["at"] == gone.deregistered_at
    (log,) = await h.audit(c, "holder.deregister")
    assert h.loads(log["after"]) == {"status": "deregistered", "reason": "contract ended"}
    assert await h.balance(c, deposit(visitor.id)) == 0
