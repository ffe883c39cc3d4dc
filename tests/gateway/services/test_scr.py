"""SCR: the scrap register and the yearly disposal, through the services on SQLite."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, OnecardError
from protocol.types import CardState
from storage.records import Card
from tests.conftest import Counter
from tests.gateway.services import helpers as h


async def recovered_cards(c: Counter) -> list[Card]:
    """Cards back at the center: a temp card handed in (ISS-4), a smart card exchanged for
    changed data (EXC-4), a terminated card (TERM-1) and a refunded temp card (REF-3)."""
    student, temp = await h.student_with_temp(c)
    ordered = await c.center.cards.order_smart(c.op, student.id)
    await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)
    smart = (
        await c.center.cards.hand_over(c.op, ordered.card.serial, returned_temp_serial=temp.serial)
    ).card
    swapped = await c.center.cards.exchange_for_changed_data(
        c.op,
        smart.serial,
        presented_id=student.number,
        document_ref="教务处〔2026〕9号 休学",
        changes={"class_name": "计科2027-1班"},
        old_card_returned=True,  # EXC-5: the center takes the old card at once
    )
    ended = await c.center.cards.terminate(
        c.op, swapped.card.serial, reason="suspension", presented_id=student.number
    )
    visitor, vcard = await h.visitor_with_temp(c)
    refunded = await c.center.cards.refund(
        c.op,
        vcard.serial,
        card_ok=True,
        presented_id=visitor.national_id,
        receipt_no=await h.deposit_receipt_no(c, visitor.id),
    )
    return [await h.card(c, temp.serial), await h.card(c, smart.serial), ended, refunded.card]


@pytest.mark.asyncio
async def test_scr1_recovered_cards_enter_the_scrap_register_one_to_one(counter: Counter) -> None:
    """SCR-1: cards recovered by refund, termination, data-change exchange (and handed-in temp
    cards) are scrapped, each with one register line; cards in use are not."""
    c = counter
    cards = await recovered_cards(c)
    assert [k.state for k in cards] == [
        CardState.RECOVERED,
        CardState.EXCHANGED,
        CardState.TERMINATED,
        CardState.REFUNDED,
    ]
    student, live = await h.student_with_temp(c, start=9)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.scrap(c.op, live.serial)
    assert err.value.code is ErrorCode.TRANSITION_NOT_ALLOWED
    await c.center.cards.report_loss(c.op, live.serial, presented_id=student.number)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.scrap(c.op, live.serial)
    assert err.value.code is ErrorCode.TRANSITION_NOT_ALLOWED
    assert all(k.in_custody for k in cards)  # SCR-1: each one is back at the center

    for card in cards:
        assert (await c.center.cards.scrap(c.op, card.serial)).state is CardState.SCRAPPED
    register = await h.find(c, "scrap_register")
    assert [(r["serial"], r["card_kind"], r["reason"]) for r in register] == [
        (k.serial, k.kind.value, k.state.value) for k in cards
    ]
    assert all(r["actor"] == c.op.name for r in register)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.scrap(c.op, cards[0].serial)
    assert err.value.code is ErrorCode.TRANSITION_NOT_ALLOWED
    assert await h.count(c, "scrap_register") == await h.count(c, "cards", state="scrapped") == 4
    assert (await h.events(c, cards[0].id))[-1]["rule"] == "SCR-1"


@pytest.mark.asyncio
async def test_scr2_disposal_once_a_year_of_everything_on_the_register(counter: Counter) -> None:
    """SCR-2: the yearly disposal takes every register line not yet disposed; a year is disposed
    once; an empty register has nothing to dispose."""
    c = counter
    cards = await recovered_cards(c)
    for card in cards[:3]:
        await c.center.cards.scrap(c.op, card.serial)
    assert await c.center.cards.dispose(c.op, 2026) == 3
    with pytest.raises(OnecardError) as err:
        await c.center.cards.dispose(c.op, 2026)
    assert (err.value.rule, err.value.code) == ("SCR-2", ErrorCode.DUPLICATE)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.dispose(c.op, 2027)
    assert (err.value.rule, err.value.code) == ("SCR-2", ErrorCode.NOT_FOUND)

    await c.center.cards.scrap(c.op, cards[3].serial)
    assert await c.center.cards.dispose(c.op, 2027) == 1
    register = await h.find(c, "scrap_register")
    disposals = await h.find(c, "disposals")
    assert [
        (d["year"], d["count"], d["first_scrap_id"], d["last_scrap_id"]) for d in disposals
    ] == [
        (2026, 3, register[0]["id"], register[2]["id"]),
        (2027, 1, register[3]["id"], register[3]["id"]),
    ]
    assert len(await h.audit(c, "scrap.dispose")) == 2


@pytest.mark.asyncio
async def test_scr1_cards_still_out_are_refused_until_handed_in(counter: Counter) -> None:
    """SCR-1/2 "回收的校园卡 … 与报废卡片一一对应": a lost card after its replacement, a temp card
    terminated automatically (TERM-3) while the holder keeps it, a temp card paid for as lost
    (ISS-4) and an exchanged card not yet brought back are not in the center's hands: scrapping
    them is refused, citing SCR-1, and the register stays empty. Once a card is handed in at the
    counter it may be scrapped, one line per card."""
    c = counter
    # a lost card, replaced: void, but still out there
    a, card_a = await h.student_with_temp(c, start=1)
    await h.lose(c, a, card_a.serial)
    await c.center.cards.replace(c.op, card_a.serial, presented_id=a.number)
    # a temp card paid for as lost when the smart card is collected (ISS-4)
    b, card_b = await h.student_with_temp(c, start=2)
    ordered = await c.center.cards.order_smart(c.op, b.id)
    await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)
    await c.center.cards.hand_over(c.op, ordered.card.serial, temp_card_lost=True)
    # a smart card exchanged for a new smart card: the old one comes back at collection (EXC-5)
    exchanged = await c.center.cards.exchange_for_changed_data(
        c.op,
        ordered.card.serial,
        presented_id=b.number,
        document_ref="教务处〔2026〕12号 转专业",
        changes={"class_name": "计科2026-3班"},
    )
    # a visitor's temp card, expired and terminated automatically 3 months later (TERM-3)
    _visitor, card_v = await h.visitor_with_temp(c, valid_through=c.clock.now().date())
    c.clock.advance(days=2)
    await c.center.cards.run_due(c.op)
    c.clock.advance(days=100)
    await c.center.cards.run_due(c.op)
    assert (await h.card(c, card_v.serial)).state is CardState.TERMINATED

    out = [card_a.serial, card_b.serial, ordered.card.serial, card_v.serial]
    for serial in out:
        assert not (await h.card(c, serial)).in_custody
        with pytest.raises(OnecardError) as err:
            await c.center.cards.scrap(c.op, serial)
        assert (err.value.rule, err.value.code) == ("SCR-1", ErrorCode.NOT_ELIGIBLE)
        assert "回收" in err.value.message_zh
    assert await h.count(c, "scrap_register") == 0

    # the found lost card and the expired temp card are brought in; the old smart card comes
    # back when the new one is collected
    for serial in (card_a.serial, card_v.serial):
        handed_in = await c.center.cards.hand_in(c.op, serial)
        assert handed_in.in_custody
        with pytest.raises(OnecardError) as err:
            await c.center.cards.hand_in(c.op, serial)
        assert (err.value.rule, err.value.code) == ("SCR-1", ErrorCode.DUPLICATE)
    assert [e["event"] for e in await h.events(c, card_a.id)][-1] == "hand_in"
    assert len(await h.audit(c, "card.hand_in")) == 2
    c.clock.advance(days=3)
    await c.center.cards.hand_over(
        c.op,
        exchanged.card.serial,
        returned_card=ordered.card.serial,
        presented_id=b.number,
        signed=True,
    )
    for serial in (card_a.serial, card_v.serial, ordered.card.serial):
        assert (await c.center.cards.scrap(c.op, serial)).state is CardState.SCRAPPED
    register = await h.find(c, "scrap_register")
    assert [(r["serial"], r["reason"]) for r in register] == [
        (card_a.serial, "replaced"),
        (card_v.serial, "terminated"),
        (ordered.card.serial, "exchanged"),
    ]
    with pytest.raises(OnecardError) as err:  # the temp card paid for as lost never came back
        await c.center.cards.scrap(c.op, card_b.serial)
    assert err.value.rule == "SCR-1"
