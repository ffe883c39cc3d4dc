"""ISS: issuing cards to students, staff and other people, through the services on SQLite."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from gateway.services.holders import check_holder_password, uses_default_password
from protocol.cards.clock import end_of_validity
from protocol.errors import ErrorCode, InvalidInput, OnecardError
from protocol.ledger import cash, deposit, fee_income
from protocol.types import CardKind, CardState, HolderCategory, HolderKind
from tests.conftest import Counter, import_students, student_rows
from tests.gateway.services import helpers as h


@pytest.mark.asyncio
async def test_iss1_import_sets_validity_and_each_student_gets_a_free_temp_card(
    counter: Counter,
) -> None:
    """ISS-1: the admitted-student list is imported with the e-student-ID validity; each student
    gets one temp CPU card (no fee); the same list cannot be imported twice."""
    c = counter
    ids = await import_students(c, 2)
    first = await h.holder(c, ids[0])
    assert first.kind is HolderKind.STUDENT
    assert first.number == "2026000001"
    assert first.valid_until == end_of_validity(date(2030, 7, 31))
    # LOSS-1: the self-service password is the last 6 of the national ID until changed
    assert uses_default_password(first)
    assert first.national_id is not None
    assert check_holder_password(first, first.national_id[-6:])
    assert not check_holder_password(first, "000000")

    issued = await c.center.cards.issue_temp(c.op, first.number)
    assert issued.card.kind is CardKind.TEMP
    assert issued.card.state is CardState.ACTIVE
    assert issued.card.valid_until == first.valid_until
    assert issued.card.serial == "2000000000"  # first of the requisitioned temp range (INV-2)
    assert issued.receipts == []
    assert [e["rule"] for e in await h.events(c, issued.card.id)] == ["ISS-1"]

    with pytest.raises(OnecardError) as err:
        await c.center.cards.issue_temp(c.op, first.id)
    assert (err.value.rule, err.value.code) == ("ISS-1", ErrorCode.DUPLICATE)

    with pytest.raises(OnecardError) as err:
        await c.center.holders.import_roster(c.admin, HolderKind.STUDENT, student_rows(3))
    assert (err.value.rule, err.value.code) == ("ISS-1", ErrorCode.DUPLICATE)
    assert await h.count(c, "holders") == 2  # nothing of the refused list was imported


@pytest.mark.asyncio
async def test_iss2_print_order_needs_a_photo(counter: Counter) -> None:
    """ISS-2: photos are collected per class; a student without a photo is not sent to print."""
    c = counter
    row = replace(student_rows(1)[0], photo=None)
    report = await c.center.holders.import_roster(c.admin, HolderKind.STUDENT, [row])
    (hid,) = report.holder_ids
    with pytest.raises(OnecardError) as err:
        await c.center.cards.order_smart(c.op, hid)
    assert (err.value.rule, err.value.code) == ("ISS-2", ErrorCode.HOLDER_DATA_INCOMPLETE)
    assert "photo_ref" in str(err.value)
    assert await h.count(c, "cards") == 0

    await c.center.holders.update(c.op, hid, {"photo_ref": "photo/late.jpg"}, reason="photo day")
    ordered = await c.center.cards.order_smart(c.op, hid)
    assert ordered.card.state is CardState.PRINTING
    assert ordered.card.kind is CardKind.SMART
    assert ordered.card.serial == "1000000000"
    assert [e["rule"] for e in await h.events(c, ordered.card.id)] == ["ISS-2"]
    with pytest.raises(OnecardError) as err:
        await c.center.cards.order_smart(c.op, hid)
    assert (err.value.rule, err.value.code) == ("ISS-2", ErrorCode.DUPLICATE)


@pytest.mark.asyncio
async def test_iss3_failed_check_goes_back_for_reprint_then_passes(counter: Counter) -> None:
    """ISS-3: printed cards are checked; a failed card goes back to the vendor (stays PRINTING and
    cannot be handed over); a passed card becomes READY with its chip UID."""
    c = counter
    student, temp = await h.student_with_temp(c)
    ordered = await c.center.cards.order_smart(c.op, student.id)
    serial = ordered.card.serial

    failed = await c.center.cards.check_printed(c.op, serial, passed=False)
    assert failed.state is CardState.PRINTING
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, serial, returned_temp_serial=temp.serial)
    assert err.value.code is ErrorCode.TRANSITION_NOT_ALLOWED

    passed = await c.center.cards.check_printed(c.op, serial, passed=True, uid="04A1B2C3D4E5F6")
    assert passed.state is CardState.READY
    assert passed.uid == "04A1B2C3D4E5F6"
    history = [(e["event"], e["to_state"], e["rule"]) for e in await h.events(c, passed.id)]
    assert history == [
        ("issue", "printing", "ISS-2"),
        ("reprint", "printing", "ISS-3"),
        ("printed", "ready", "ISS-3"),
    ]
    # a card not yet handed over is usable nowhere, but is not on the deny list either
    assert await h.tap(c, serial) is ErrorCode.CARD_NOT_ISSUED
    assert await h.deny_rows(c, passed.id) == []


@pytest.mark.asyncio
async def test_iss4_smart_card_against_the_temp_card(counter: Counter) -> None:
    """ISS-4: the student gets the smart card by handing in the temp card, which is recovered."""
    c = counter
    student, temp = await h.student_with_temp(c)
    ordered = await c.center.cards.order_smart(c.op, student.id)
    await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)

    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, ordered.card.serial)
    assert (err.value.rule, err.value.code) == ("ISS-4", ErrorCode.NOT_ELIGIBLE)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, ordered.card.serial, returned_temp_serial="2000000499")
    assert (err.value.rule, err.value.code) == ("ISS-4", ErrorCode.INVALID_INPUT)

    result = await c.center.cards.hand_over(
        c.op, ordered.card.serial, returned_temp_serial=temp.serial
    )
    assert result.card.state is CardState.ACTIVE
    assert result.card.handed_over_at == c.clock.now()
    assert result.receipts == []
    assert (await h.card(c, temp.serial)).state is CardState.RECOVERED
    assert await h.tap(c, temp.serial) is ErrorCode.CARD_VOID
    assert await h.tap(c, ordered.card.serial) is None
    (row,) = await h.deny_rows(c, temp.id)
    assert (row["change"], row["denied"]) == ("recover", True)


@pytest.mark.asyncio
async def test_iss4_lost_temp_card_costs_30_yuan(counter: Counter) -> None:
    """ISS-4: a student who lost the temp card pays 30 yuan, with a receipt; the lost temp card is
    ended everywhere."""
    c = counter
    student, temp = await h.student_with_temp(c)
    ordered = await c.center.cards.order_smart(c.op, student.id)
    await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)
    result = await c.center.cards.hand_over(c.op, ordered.card.serial, temp_card_lost=True)
    (receipt,) = result.receipts
    assert receipt.amount == 3000
    assert receipt.receipt_no == 1
    assert "lost_temp_card" in receipt.item
    assert receipt.payer == student.name
    assert await h.balance(c, fee_income()) == 3000
    lost_temp = await h.card(c, temp.serial)
    assert lost_temp.state is CardState.TERMINATED
    assert (await h.events(c, temp.id))[-1]["rule"] == "ISS-4"
    assert await h.tap(c, temp.serial) is ErrorCode.CARD_TERMINATED


@pytest.mark.asyncio
async def test_iss5_center_counts_smart_cards_issued_and_temp_cards_recovered(
    counter: Counter,
) -> None:
    """ISS-5: the center counts smart cards handed over and temp cards recovered."""
    c = counter
    ids = await import_students(c, 2)
    temps = [(await c.center.cards.issue_temp(c.op, hid)).card for hid in ids]
    smart = []
    for hid in ids:
        ordered = await c.center.cards.order_smart(c.op, hid)
        await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)
        smart.append(ordered.card)
    await c.center.cards.hand_over(c.op, smart[0].serial, returned_temp_serial=temps[0].serial)
    await c.center.cards.hand_over(c.op, smart[1].serial, temp_card_lost=True)

    issued = await h.rows(
        c,
        "SELECT count(*) AS n FROM card_events e JOIN cards k ON k.id = e.card_id "
        "WHERE e.event = 'hand_over' AND k.kind = :kind",
        kind="smart",
    )
    assert issued[0]["n"] == 2
    assert await h.count(c, "cards", kind="temp", state="recovered") == 1
    assert await h.count(c, "cards", kind="temp", state="terminated") == 1


@pytest.mark.asyncio
async def test_iss6_staff_without_number_get_a_temp_card_on_written_proof(
    counter: Counter,
) -> None:
    """ISS-6: staff without a staff number get a temp card on written proof; once HR assigns the
    number the temp card is exchanged for a smart card (made in two working days)."""
    c = counter
    (hid,) = await h.import_staff(c, 1, with_number=False)
    staff = await h.holder(c, hid)
    assert staff.number is None

    with pytest.raises(OnecardError) as err:
        await c.center.cards.issue_temp(c.op, hid)
    assert (err.value.rule, err.value.code) == ("ISS-6", ErrorCode.INVALID_INPUT)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.order_smart(c.op, hid)
    assert (err.value.rule, err.value.code) == ("ISS-6", ErrorCode.HOLDER_DATA_INCOMPLETE)

    temp = (await c.center.cards.issue_temp(c.op, hid, proof_ref="数学系证明-2026-17")).card
    assert temp.state is CardState.ACTIVE
    assert [e["rule"] for e in await h.events(c, temp.id)] == ["ISS-6"]

    swapped = await c.center.cards.exchange_for_changed_data(
        c.op,
        temp.serial,
        presented_id=staff.national_id,
        document_ref="人事处〔2026〕88号",
        changes={"number": "T09999"},
        kind=CardKind.SMART,
    )
    assert swapped.old_card is not None
    assert swapped.old_card.state is CardState.EXCHANGED
    assert swapped.card.kind is CardKind.SMART
    assert swapped.card.state is CardState.READY
    assert swapped.card.ready_on == date(2026, 11, 25)  # Monday + two working days
    assert swapped.receipts == []  # staff pay no exchange fee
    assert (await h.holder(c, hid)).number == "T09999"


@pytest.mark.asyncio
async def test_iss7_staff_collect_the_smart_card_in_person_with_their_id(
    counter: Counter,
) -> None:
    """ISS-7: staff collect the smart card in person with their national ID; issuance counted."""
    c = counter
    (hid,) = await h.import_staff(c, 1)
    staff = await h.holder(c, hid)
    assert staff.number is not None
    ordered = await c.center.cards.order_smart(c.op, staff.number)
    await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)

    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, ordered.card.serial)
    assert (err.value.rule, err.value.code) == ("ISS-7", ErrorCode.AUTH_FAILED)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.hand_over(c.op, ordered.card.serial, presented_id="110105197001010015")
    assert (err.value.rule, err.value.code) == ("ISS-7", ErrorCode.AUTH_FAILED)
    assert (await h.card(c, ordered.card.serial)).state is CardState.READY

    handed = await c.center.cards.hand_over(
        c.op, ordered.card.serial, presented_id=staff.national_id
    )
    assert handed.card.state is CardState.ACTIVE
    assert handed.card.handed_over_at == c.clock.now()
    assert await h.count(c, "card_events", event="hand_over") == 1


@pytest.mark.asyncio
async def test_iss8_only_eligible_people_get_visitor_temp_cards(counter: Counter) -> None:
    """ISS-8: students and staff are not registered as temporary holders; temporary holders get
    temp cards only (no smart card, not even as a replacement)."""
    c = counter
    for category in (HolderCategory.STUDENT, HolderCategory.STAFF):
        with pytest.raises(OnecardError) as err:
            await c.center.cards.register_temporary_holder(
                c.op,
                name="某人",
                national_id="110105197005010101",
                category=category,
                valid_through=date(2027, 1, 31),
                application_ref="申请表-1",
            )
        assert (err.value.rule, err.value.code) == ("ISS-8", ErrorCode.NOT_ELIGIBLE)
    assert await h.count(c, "holders") == 0

    visitor, card = await h.visitor_with_temp(c, category=HolderCategory.FOREIGN_TEACHER)
    assert visitor.kind is HolderKind.TEMPORARY
    assert visitor.category is HolderCategory.FOREIGN_TEACHER
    with pytest.raises(OnecardError) as err:
        await c.center.cards.order_smart(c.op, visitor.id)
    assert err.value.rule == "ISS-8"
    await h.lose(c, visitor, card.serial)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.replace(
            c.op, card.serial, presented_id=visitor.national_id, kind=CardKind.SMART
        )
    assert err.value.rule == "ISS-8"
    assert (await h.card(c, card.serial)).state is CardState.LOST


@pytest.mark.asyncio
async def test_iss9_application_form_required(counter: Counter) -> None:
    """ISS-9: the signed and stamped application form is required; it is kept on the record.
    Temporary holders are registered one by one, never by roster import."""
    c = counter
    with pytest.raises(OnecardError) as err:
        await c.center.cards.register_temporary_holder(
            c.op,
            name="访客",
            national_id="110105197005010101",
            category=HolderCategory.OFFICIAL_VISITOR,
            valid_through=date(2027, 1, 31),
            application_ref="  ",
        )
    assert (err.value.rule, err.value.code) == ("ISS-9", ErrorCode.INVALID_INPUT)
    with pytest.raises(InvalidInput) as bad:
        await c.center.holders.import_roster(c.admin, HolderKind.TEMPORARY, student_rows(1))
    assert bad.value.rule == "ISS-9"
    assert await h.count(c, "holders") == 0

    visitor, _ = await h.visitor_with_temp(c, seq=3)
    assert visitor.application_ref == "临时卡申请表-2026-003"


@pytest.mark.asyncio
async def test_iss10_deposit_of_30_yuan_is_held_for_the_holder(counter: Counter) -> None:
    """ISS-10: a temporary holder pays a 30 yuan deposit (held, refundable), with a receipt."""
    c = counter
    visitor, card = await h.visitor_with_temp(c)
    assert await h.balance(c, deposit(visitor.id)) == 3000
    assert await h.balance(c, cash("counter")) == -3000  # the cash drawer took the money in
    assert await h.balance(c, fee_income()) == 0  # a deposit is not fee income
    (receipt,) = await h.find(c, "receipts", holder_id=visitor.id)
    assert receipt["amount"] == 3000
    assert "deposit" in receipt["item"]
    transfer = (await h.find(c, "transfers", id=receipt["transfer_id"]))[0]
    assert (transfer["kind"], transfer["dest"]) == ("deposit_in", deposit(visitor.id))
    assert [e["rule"] for e in await h.events(c, card.id)] == ["ISS-10"]


@pytest.mark.asyncio
async def test_iss11_record_work_number_is_last_6_of_id_and_validity(counter: Counter) -> None:
    """ISS-11: name, national ID, work number = last 6 of the ID, validity period; one active
    registration per national ID."""
    c = counter
    nid = "11010519491231002X"
    visitor = await c.center.cards.register_temporary_holder(
        c.op,
        name=" 张三 ",
        national_id=nid.lower(),
        category=HolderCategory.RETIRED_STAFF,
        valid_through=date(2027, 3, 31),
        application_ref="离退休处-12",
    )
    assert visitor.number == "31002X"
    assert visitor.name == "张三"
    assert visitor.national_id == nid
    assert visitor.valid_until == end_of_validity(date(2027, 3, 31))
    with pytest.raises(OnecardError) as err:
        await c.center.cards.register_temporary_holder(
            c.op,
            name="张三",
            national_id=nid,
            category=HolderCategory.RETIRED_STAFF,
            valid_through=date(2027, 3, 31),
            application_ref="离退休处-13",
        )
    assert (err.value.rule, err.value.code) == ("ISS-11", ErrorCode.DUPLICATE)
    with pytest.raises(InvalidInput):
        await c.center.cards.register_temporary_holder(
            c.op,
            name="李四",
            national_id="110105194912310021",  # wrong check digit
            category=HolderCategory.RETIRED_STAFF,
            valid_through=date(2027, 3, 31),
            application_ref="离退休处-14",
        )
    card = (await c.center.cards.issue_temp(c.op, visitor.id)).card
    assert card.valid_until == end_of_validity(date(2027, 3, 31))


@pytest.mark.asyncio
async def test_iss12_card_collected_on_the_fee_receipt_and_counted_monthly(
    counter: Counter,
) -> None:
    """ISS-12: the holder collects the card on the fee receipt; temp-card issuance is counted
    per month."""
    c = counter
    visitor, card = await h.visitor_with_temp(c, seq=1)
    (receipt,) = await h.find(c, "receipts", holder_id=visitor.id)
    assert receipt["payer"] == visitor.name
    assert receipt["cashier"] == c.op.name
    assert card.state is CardState.ACTIVE
    assert card.handed_over_at == receipt["at"]
    c.clock.advance(days=10)  # December
    await h.visitor_with_temp(c, seq=2)
    monthly = await h.rows(
        c,
        "SELECT substr(at, 1, 7) AS month, count(*) AS n FROM card_events "
        "WHERE event = 'issue' AND rule = 'ISS-10' GROUP BY substr(at, 1, 7) ORDER BY month",
    )
    assert [(r["month"], r["n"]) for r in monthly] == [("2026-11", 1), ("2026-12", 1)]
