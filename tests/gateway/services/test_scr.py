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
    )
    ended = await c.center.cards.terminate(
        c.op, swapped.card.serial, reason="suspension", presented_id=student.number
    )
    visitor, vcard = await h.visitor_with_temp(c)
    refunded = await c.center.cards.refund(
        c.op, vcard.serial, card_ok=True, presented_id=visitor.national_id
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
