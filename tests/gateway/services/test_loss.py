"""LOSS: loss reports (counter, kiosk) and unlocking, through the services on SQLite."""

from __future__ import annotations

import pytest

from protocol.errors import AccessDenied, ErrorCode, OnecardError
from protocol.types import CardState, Permission
from tests.conftest import Counter, import_students
from tests.gateway.services import helpers as h


@pytest.mark.asyncio
async def test_loss1_kiosk_loss_report_with_number_and_default_password(counter: Counter) -> None:
    """LOSS-1: at a kiosk the holder logs in with the student number and the default password
    (last 6 of the national ID) and reports the own card lost; never someone else's."""
    c = counter
    a_id, b_id = await import_students(c, 2)
    a, b = await h.holder(c, a_id), await h.holder(c, b_id)
    assert a.number is not None
    assert a.national_id is not None
    assert b.number is not None
    assert b.national_id is not None
    card_a = (await c.center.cards.issue_temp(c.op, a_id)).card
    await c.center.cards.issue_temp(c.op, b_id)

    kiosk_b = await c.center.holders.authenticate(b.number, b.national_id[-6:], channel="kiosk")
    with pytest.raises(OnecardError) as err:
        await c.center.cards.report_loss(kiosk_b, card_a.serial)
    assert (err.value.rule, err.value.code) == ("LOSS-1", ErrorCode.PERMISSION_DENIED)
    assert (await h.card(c, card_a.serial)).state is CardState.ACTIVE

    kiosk_a = await c.center.holders.authenticate(a.number, a.national_id[-6:], channel="kiosk")
    assert (kiosk_a.holder_id, kiosk_a.channel, kiosk_a.permissions) == (a_id, "kiosk", frozenset())
    lost = await c.center.cards.report_loss_of_holder(kiosk_a, a_id)
    assert lost.id == card_a.id
    assert lost.state is CardState.LOST
    assert lost.loss_reported_at == c.clock.now()
    last = (await h.events(c, card_a.id))[-1]
    assert (last["event"], last["rule"], last["channel"], last["actor"]) == (
        "report_loss",
        "LOSS-1",
        "kiosk",
        f"holder:{a_id}",
    )


@pytest.mark.asyncio
async def test_loss1_counter_loss_report_needs_the_identity_check(counter: Counter) -> None:
    """LOSS-1: at the counter the operator verifies the holder's valid ID first."""
    c = counter
    student, card = await h.student_with_temp(c)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.report_loss(c.op, card.serial)
    assert (err.value.rule, err.value.code) == ("LOSS-1", ErrorCode.AUTH_FAILED)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.report_loss(c.op, card.serial, presented_id="2026999999")
    assert (err.value.rule, err.value.code) == ("LOSS-1", ErrorCode.AUTH_FAILED)
    assert (await h.card(c, card.serial)).state is CardState.ACTIVE
    assert await h.deny_rows(c, card.id) == []

    lost = await c.center.cards.report_loss(c.op, card.serial, presented_id=student.number)
    assert lost.state is CardState.LOST
    assert (await h.events(c, card.id))[-1]["channel"] == "counter"


@pytest.mark.asyncio
async def test_loss1_self_service_lockout_after_5_wrong_passwords(counter: Counter) -> None:
    """LOSS-1: five wrong passwords lock self-service for 30 minutes, even for the right one."""
    c = counter
    student, _ = await h.student_with_temp(c)
    assert student.number is not None
    assert student.national_id is not None
    right = student.national_id[-6:]
    for _ in range(4):
        with pytest.raises(AccessDenied) as err:
            await c.center.holders.authenticate(student.number, "000000", channel="kiosk")
        assert (err.value.rule, err.value.code) == ("LOSS-1", ErrorCode.AUTH_FAILED)
    assert (await h.holder(c, student.id)).failed_logins == 4
    with pytest.raises(AccessDenied) as err:
        await c.center.holders.authenticate(student.number, "000000", channel="kiosk")
    assert (err.value.rule, err.value.code) == ("LOSS-1", ErrorCode.ACCOUNT_LOCKED)
    with pytest.raises(AccessDenied) as err:
        await c.center.holders.authenticate(student.number, right, channel="web")
    assert err.value.code is ErrorCode.ACCOUNT_LOCKED
    locked = await h.holder(c, student.id)
    assert locked.locked_until is not None
    assert locked.locked_until > c.clock.now()

    c.clock.advance(minutes=31)
    ok = await c.center.holders.authenticate(student.number, right, channel="web")
    assert ok.holder_id == student.id


@pytest.mark.asyncio
async def test_loss2_lost_card_is_refused_everywhere_at_once(counter: Counter) -> None:
    """LOSS-2: the loss report puts the card on the deny list at once (a denied row, same
    moment); every terminal refuses it with card_lost."""
    c = counter
    student, card = await h.student_with_temp(c)
    assert await h.tap(c, card.serial) is None
    await c.center.cards.report_loss(c.op, card.serial, presented_id=student.national_id)
    (row,) = await h.deny_rows(c, card.id)
    assert row["change"] == "report_loss"
    assert row["denied"] is True
    assert row["serial"] == card.serial
    assert row["at"] == c.clock.now()
    assert await h.tap(c, card.serial) is ErrorCode.CARD_LOST
    assert await h.listed(c, card.serial) is ErrorCode.CARD_LOST


@pytest.mark.asyncio
async def test_loss3_unlock_only_at_the_counter_with_a_valid_id(counter: Counter) -> None:
    """LOSS-3: never at a kiosk or on the web (whatever the account may do), never without ID;
    at the counter with the holder's ID the card is usable again and leaves the deny list."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.cards.report_loss(c.op, card.serial, presented_id=student.national_id)
    for channel in ("kiosk", "web"):
        strong = h.actor("kiosk-7", *Permission, channel=channel)
        with pytest.raises(OnecardError) as err:
            await c.center.cards.unlock(strong, card.serial, presented_id=student.national_id)
        assert (err.value.rule, err.value.code) == ("LOSS-3", ErrorCode.PERMISSION_DENIED)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.unlock(c.op, card.serial, presented_id=None)
    assert (err.value.rule, err.value.code) == ("LOSS-3", ErrorCode.AUTH_FAILED)
    assert (await h.card(c, card.serial)).state is CardState.LOST

    unlocked = await c.center.cards.unlock(c.op, card.serial, presented_id=student.national_id)
    assert unlocked.state is CardState.ACTIVE
    assert unlocked.loss_reported_at is None
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, card.id)] == [
        ("report_loss", True),
        ("unlock", False),
    ]
    assert await h.tap(c, card.serial) is None
    assert (await h.events(c, card.id))[-1]["rule"] == "LOSS-3"


@pytest.mark.asyncio
async def test_loss4_replaced_card_is_void_forever(counter: Counter) -> None:
    """LOSS-4: once a replacement is issued the lost card can never be unlocked (even if found)."""
    c = counter
    student, card = await h.student_with_temp(c)
    await h.lose(c, student, card.serial)
    result = await c.center.cards.replace(c.op, card.serial, presented_id=student.national_id)
    assert result.old_card is not None
    assert result.old_card.state is CardState.REPLACED
    with pytest.raises(OnecardError) as err:
        await c.center.cards.unlock(c.op, card.serial, presented_id=student.national_id)
    assert (err.value.rule, err.value.code) == ("LOSS-4", ErrorCode.TRANSITION_NOT_ALLOWED)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.report_loss(c.op, card.serial, presented_id=student.national_id)
    assert err.value.code is ErrorCode.TRANSITION_NOT_ALLOWED
    assert (await h.card(c, card.serial)).state is CardState.REPLACED
    assert await h.tap(c, card.serial) is ErrorCode.CARD_VOID
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, card.id)] == [
        ("report_loss", True),
        ("replace", True),
    ]


@pytest.mark.asyncio
async def test_loss4_void_card_takes_no_topup(counter: Counter) -> None:
    """LOSS-4: a lost card replaced is void forever: a top-up on it is refused (card_void,
    citing LOSS-4) and moves no money; the new card takes the top-up. The same holds for every
    other void or ended card (a batch top-up included)."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.money.topup(c.op, card.serial, 1000)
    await h.lose(c, student, card.serial)
    new = (await c.center.cards.replace(c.op, card.serial, presented_id=student.number)).card
    with pytest.raises(OnecardError) as err:
        await c.center.money.topup(c.op, card.serial, 500)
    assert (err.value.rule, err.value.code) == ("LOSS-4", ErrorCode.CARD_VOID)
    assert err.value.message_zh.startswith("补卡作废")
    with pytest.raises(OnecardError) as err:
        await c.center.money.topup_batch(c.op, [(new.serial, 100), (card.serial, 100)])
    assert err.value.rule == "LOSS-4"
    assert await h.balance(c, f"purse:{student.id}") == 1000
    assert (await c.center.money.topup(c.op, new.serial, 500)).balance == 1500
