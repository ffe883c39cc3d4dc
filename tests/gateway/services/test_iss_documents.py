"""ISS-8 / ISS-11 / LOSS-1 with other identity documents (issue 10): foreign teachers and exchange
students register with a passport, visitors from Hong Kong, Macau or Taiwan with their permits,
foreign residents with the permanent residence card. Each number is checked by its own format;
the work number and the default password are its last 6 characters; the counter's identity check
(verify_identity) accepts the document however it is typed."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.services.holders import check_holder_password
from protocol.cards.identity import IdDocType, make_permanent_residence_no
from protocol.errors import ErrorCode, InvalidInput, OnecardError
from protocol.types import CardState, HolderCategory, HolderKind
from tests.conftest import Counter
from tests.gateway.services import helpers as h


async def _register(
    c: Counter, number: str, doc_type: IdDocType, *, name: str = "Anna Schmidt"
) -> int:
    holder = await c.center.cards.register_temporary_holder(
        c.op,
        name=name,
        national_id=number,
        id_doc_type=doc_type,
        category=HolderCategory.FOREIGN_TEACHER,
        valid_through=date(2027, 6, 30),
        application_ref="外事处 2026-118",
    )
    return holder.id


@pytest.mark.asyncio
async def test_iss11_passport_holder_gets_work_number_and_default_password(
    counter: Counter,
) -> None:
    """ISS-11: a foreign teacher registers with a passport; work number and LOSS-1 default
    password = the last 6 characters of the passport number (upper case)."""
    c = counter
    hid = await _register(c, " c01x00t47 ", IdDocType.PASSPORT)
    visitor = await h.holder(c, hid)
    assert (visitor.national_id, visitor.id_doc_type) == ("C01X00T47", IdDocType.PASSPORT)
    assert visitor.number == "X00T47"
    assert visitor.kind is HolderKind.TEMPORARY
    assert check_holder_password(visitor, "X00T47")
    assert not check_holder_password(visitor, "x00t47")
    actor = await c.center.holders.authenticate("X00T47", "X00T47", channel="kiosk")
    assert actor.holder_id == hid
    (audit,) = await h.audit(c, "holder.register")
    assert h.loads(audit["after"])["id_doc_type"] == "passport"
    assert "C01X00T47" not in str(audit["after"])


@pytest.mark.asyncio
async def test_iss11_each_document_is_checked_by_its_own_format(counter: Counter) -> None:
    """ISS-11: a typo the format can catch is refused, citing the rule, before anything is
    written; numbers are stored in their normalised form."""
    c = counter
    for number, doc_type in (
        ("ABCDEFGH", IdDocType.PASSPORT),
        ("H1234567", IdDocType.HK_MACAU_PERMIT),
        ("1234567", IdDocType.TAIWAN_PERMIT),
        ("911840198005060019", IdDocType.PERMANENT_RESIDENCE),  # check digit wrong
    ):
        with pytest.raises(InvalidInput) as err:
            await _register(c, number, doc_type)
        assert err.value.rule == "ISS-11"
        assert err.value.message_zh
        assert err.value.message_en
    assert await h.count(c, "holders") == 0
    pr = make_permanent_residence_no("51", "276", date(1975, 2, 3), 7)
    stored = {
        IdDocType.HK_MACAU_PERMIT: ("m1234567802", "M12345678"),
        IdDocType.TAIWAN_PERMIT: ("87654321", "87654321"),
        IdDocType.PERMANENT_RESIDENCE: (pr, pr),
    }
    for seq, (doc_type, (typed, normal)) in enumerate(stored.items()):
        hid = await _register(c, typed, doc_type, name=f"访客{seq}")
        holder = await h.holder(c, hid)
        assert (holder.national_id, holder.number) == (normal, normal[-6:])


@pytest.mark.asyncio
async def test_iss11_one_active_registration_per_document(counter: Counter) -> None:
    """ISS-11: the same document cannot be registered twice; the same digits on another kind of
    document are another person."""
    c = counter
    await _register(c, "12345678", IdDocType.TAIWAN_PERMIT)
    with pytest.raises(OnecardError) as err:
        await _register(c, "12345678", IdDocType.TAIWAN_PERMIT)
    assert (err.value.rule, err.value.code) == ("ISS-11", ErrorCode.DUPLICATE)
    await _register(c, "12345678", IdDocType.PASSPORT)
    assert await h.count(c, "holders") == 2


@pytest.mark.asyncio
async def test_loss3_counter_identity_check_accepts_the_document_as_typed(
    counter: Counter,
) -> None:
    """LOSS-1 / LOSS-3: at the counter the clerk types the document shown; a lower-case or
    full-width passport number, or an old-form permit, is the same document; another number is
    refused (and the refusal shows it masked)."""
    c = counter
    hid = await _register(c, "E12345678", IdDocType.PASSPORT)
    card = (await c.center.cards.issue_temp(c.op, hid)).card
    await c.center.cards.report_loss(c.op, card.serial, presented_id="e1234 5678")
    with pytest.raises(OnecardError) as err:
        await c.center.cards.unlock(c.op, card.serial, presented_id="E12345679")
    assert (err.value.rule, err.value.code) == ("LOSS-3", ErrorCode.AUTH_FAILED)
    assert "E12345679" not in str(err.value)
    assert "E1*****79" in str(err.value)
    unlocked = await c.center.cards.unlock(c.op, card.serial, presented_id="ｅ１２３４５６７８")
    assert unlocked.state is CardState.ACTIVE

    hk = await _register(c, "H87654321", IdDocType.HK_MACAU_PERMIT, name="陈大文")
    hk_card = (await c.center.cards.issue_temp(c.op, hk)).card
    lost = await c.center.cards.report_loss(c.op, hk_card.serial, presented_id="H8765432103")
    assert lost.state is CardState.LOST


@pytest.mark.asyncio
async def test_loss1_web_password_rules_know_the_passport_default(counter: Counter) -> None:
    """LOSS-1 on the web platform: a passport holder's default password (last 6 of the passport)
    is refused as a new password, like a national ID holder's."""
    from gateway.services.portal import password_problems

    c = counter
    visitor = await h.holder(c, await _register(c, "E12345678", IdDocType.PASSPORT))
    assert ("不能使用初始密码", "not the default password") in password_problems("345678", visitor)
