"""REF: refund (退卡) of temp cards held by other people, through the services on SQLite."""

from __future__ import annotations

import pytest

from protocol.cards.identity import mask_id_doc
from protocol.errors import AccessDenied, ErrorCode, OnecardError
from protocol.ledger import deposit, fee_income, purse
from protocol.types import CardState, HolderStatus
from tests.conftest import Counter
from tests.gateway.services import helpers as h


@pytest.mark.asyncio
async def test_ref1_only_temp_cards_of_other_people(counter: Counter) -> None:
    """REF-1: current students and staff cannot return their temp card for a refund."""
    c = counter
    student, card = await h.student_with_temp(c)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.refund(c.op, card.serial, card_ok=True, presented_id=student.number)
    assert (err.value.rule, err.value.code) == ("REF-1", ErrorCode.NOT_ELIGIBLE)
    assert (await h.card(c, card.serial)).state is CardState.ACTIVE
    assert (await h.holder(c, student.id)).status is HolderStatus.ACTIVE

    visitor, vcard = await h.visitor_with_temp(c)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.refund(c.op, vcard.serial, card_ok=True, presented_id=None)
    assert (err.value.rule, err.value.code) == ("REF-3", ErrorCode.AUTH_FAILED)
    slip = await c.center.cards.refund(
        c.op,
        vcard.serial,
        card_ok=True,
        presented_id=visitor.national_id,
        receipt_no=await h.deposit_receipt_no(c, visitor.id),
    )
    assert slip.card.state is CardState.REFUNDED


@pytest.mark.asyncio
async def test_ref2_balance_settled_at_a_cash_point_first(counter: Counter) -> None:
    """REF-2: the holder cashes out the balance first; a refund with money on the card is
    refused and changes nothing."""
    c = counter
    visitor, card = await h.visitor_with_temp(c)
    await c.center.money.topup(c.op, card.serial, 1234)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.refund(
            c.op, card.serial, card_ok=True, presented_id=visitor.national_id
        )
    assert (err.value.rule, err.value.code) == ("REF-2", ErrorCode.BALANCE_NOT_SETTLED)
    assert "12.34 元" in str(err.value)
    assert (await h.card(c, card.serial)).state is CardState.ACTIVE
    assert await h.balance(c, deposit(visitor.id)) == 3000

    settled = await c.center.money.cash_out(c.op, card.serial, point="logistics-1")
    assert settled.balance == 0
    assert await h.balance(c, "cash:logistics-1") == 1234
    with pytest.raises(OnecardError) as err:
        await c.center.money.cash_out(c.op, card.serial)
    assert (err.value.rule, err.value.code) == ("REF-2", ErrorCode.INVALID_AMOUNT)
    slip = await c.center.cards.refund(
        c.op,
        card.serial,
        card_ok=True,
        presented_id=visitor.national_id,
        receipt_no=await h.deposit_receipt_no(c, visitor.id),
    )
    assert slip.amount == 3000


@pytest.mark.asyncio
async def test_ref3_deposit_refunded_for_a_good_card_forfeited_for_a_damaged_one(
    counter: Counter,
) -> None:
    """REF-3: the card comes back and is checked; if it passes the deposit refund slip is
    issued (30 yuan out of the deposit); a damaged card forfeits the deposit to fee income."""
    c = counter
    good, good_card = await h.visitor_with_temp(c, seq=1)
    bad, bad_card = await h.visitor_with_temp(c, seq=2)

    slip = await c.center.cards.refund(
        c.op,
        good_card.serial,
        card_ok=True,
        presented_id=good.national_id,
        receipt_no=await h.deposit_receipt_no(c, good.id),
    )
    assert (slip.amount, slip.holder_name) == (3000, good.name)
    assert slip.card.state is CardState.REFUNDED
    (out,) = await h.find(c, "transfers", id=slip.slip_no)
    assert (out["kind"], out["source"], out["amount"]) == ("deposit_out", deposit(good.id), 3000)
    assert await h.balance(c, deposit(good.id)) == 0
    assert await h.tap(c, good_card.serial) is ErrorCode.CARD_VOID
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, good_card.id)] == [
        ("refund", True)
    ]

    lost_deposit = await c.center.cards.refund(
        c.op,
        bad_card.serial,
        card_ok=False,
        presented_id=bad.national_id,
        receipt_no=await h.deposit_receipt_no(c, bad.id),
    )
    assert (lost_deposit.amount, lost_deposit.slip_no) == (0, 0)
    assert await h.balance(c, deposit(bad.id)) == 0
    assert await h.balance(c, fee_income()) == 3000
    (forfeit,) = await h.find(c, "transfers", source=deposit(bad.id))
    assert (forfeit["kind"], forfeit["dest"]) == ("fee", fee_income())
    assert "damaged" in forfeit["memo"]
    assert (await h.events(c, bad_card.id))[-1]["detail"] == "card damaged"


@pytest.mark.asyncio
async def test_ref4_holder_data_archived_then_deregistered(counter: Counter) -> None:
    """REF-4: the holder's data is backed up and recorded, then the holder is deregistered
    (no more self-service login, no new card)."""
    c = counter
    visitor, card = await h.visitor_with_temp(c)
    assert visitor.number is not None
    assert visitor.national_id is not None
    await c.center.cards.refund(
        c.op,
        card.serial,
        card_ok=True,
        presented_id=visitor.number,
        receipt_no=await h.deposit_receipt_no(c, visitor.id),
    )

    gone = await h.holder(c, visitor.id)
    assert gone.status is HolderStatus.DEREGISTERED
    assert gone.deregistered_at == c.clock.now()
    (archived,) = await h.find(c, "holder_archive", holder_id=visitor.id)
    assert archived["reason"] == "refund"
    snapshot = h.loads(archived["snapshot"])
    assert snapshot["name"] == visitor.name
    assert snapshot["national_id"] == mask_id_doc(visitor.national_id)  # issue 15: no copy
    assert snapshot["application_ref"] == visitor.application_ref
    assert [k["serial"] for k in snapshot["cards"]] == [card.serial]
    assert snapshot["cards"][0]["state"] == "refunded"
    assert "password_hash" not in snapshot
    assert await h.balance(c, purse(visitor.id)) == 0

    with pytest.raises(AccessDenied) as err:
        await c.center.holders.authenticate(
            visitor.number, visitor.national_id[-6:], channel="kiosk"
        )
    assert err.value.code is ErrorCode.AUTH_FAILED
    with pytest.raises(OnecardError) as refused:
        await c.center.cards.issue_temp(c.op, visitor.id)
    assert refused.value.rule == "TERM-6"


@pytest.mark.asyncio
async def test_ref3_the_original_deposit_receipt_comes_back(counter: Counter) -> None:
    """REF-3 "检查收费原始凭证后": the refund is refused without the deposit receipt, or with a
    receipt that is not this holder's deposit receipt; nothing changes until it is shown, and
    the slip names the receipt for finance."""
    c = counter
    visitor, card = await h.visitor_with_temp(c, seq=1)
    other, _ = await h.visitor_with_temp(c, seq=2)
    mine = await h.deposit_receipt_no(c, visitor.id)
    for wrong in (None, await h.deposit_receipt_no(c, other.id), 99999):
        with pytest.raises(OnecardError) as err:
            await c.center.cards.refund(
                c.op, card.serial, card_ok=True, presented_id=visitor.number, receipt_no=wrong
            )
        assert (err.value.rule, err.value.code) == ("REF-3", ErrorCode.INVALID_INPUT)
        if wrong is not None:
            assert str(wrong) in str(err.value)  # what was typed is shown
    assert (await h.card(c, card.serial)).state is CardState.ACTIVE
    assert await h.balance(c, deposit(visitor.id)) == 3000
    slip = await c.center.cards.refund(
        c.op, card.serial, card_ok=True, presented_id=visitor.number, receipt_no=mine
    )
    assert (slip.amount, slip.deposit_receipt_no) == (3000, mine)
