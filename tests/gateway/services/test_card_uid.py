"""Card UIDs are normalised and validated wherever the counter sets or looks one up (issue 8,
item 10: a lost card registered with a lower-case UID stopped ``onecard serve`` from starting)."""

from __future__ import annotations

import pytest

from gateway.denylist import DenyState
from gateway.readers.pcsc import CardInserted
from protocol.carduid import canonical_card_uid, card_uid_from_bytes, normalise_card_uid
from protocol.errors import Duplicate, ErrorCode, InvalidInput, OnecardError
from protocol.types import CardState
from tests.conftest import Counter, import_students
from tests.gateway.services import helpers as h


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("04a1b2c3d4e5f6", "04A1B2C3D4E5F6"),
        (" 04:A1:b2:C3 ", "04A1B2C3"),
        ("04-a1-b2-c3-d4-e5-f6", "04A1B2C3D4E5F6"),
        ("0x04a1b2c3", "04A1B2C3"),
        ("０４ａ１ｂ２ｃ３", "04A1B2C3"),  # full-width, typed with a Chinese IME
        ("04 A1 B2 C3 D4 E5 F6 07 08 09", "04A1B2C3D4E5F6070809"),
    ],
)
def test_normalise(typed: str, canonical: str) -> None:
    assert normalise_card_uid(typed) == canonical


@pytest.mark.parametrize("typed", ["", "04A1B2", "04A1B2C", "04A1B2CG", "0" * 34, "卡片", "04A1"])
def test_invalid_uids_are_refused_bilingually(typed: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalise_card_uid(typed)
    assert err.value.code is ErrorCode.INVALID_INPUT
    assert "UID" in err.value.message_en
    assert "物理号" in err.value.message_zh
    assert canonical_card_uid(typed) is None


def test_reader_bytes() -> None:
    assert card_uid_from_bytes(bytes.fromhex("04a1b2c3d4e5f6")) == "04A1B2C3D4E5F6"
    with pytest.raises(InvalidInput):
        card_uid_from_bytes(b"\x04\xa1")


@pytest.mark.asyncio
async def test_lower_case_uid_at_the_counter_is_stored_upper_case_and_found(
    counter: Counter,
) -> None:
    c = counter
    (holder_id,) = await import_students(c, 1)
    result = await c.center.cards.issue_temp(c.op, holder_id, uid="04a1:b2:c3:d4")
    assert result.card.uid == "04A1B2C3D4"
    # looked up by the UID as the clerk types it
    found = await h.card(c, "04a1b2c3d4")
    assert found.id == result.card.id
    student = await h.holder(c, holder_id)
    await c.center.cards.report_loss(c.op, "04:a1:b2:c3:d4", presented_id=student.number)
    assert (await h.card(c, result.card.serial)).state is CardState.LOST
    # the gateway's deny set and snapshot take it as is
    async with c.registry.read() as tx:
        rows = await tx.deny_changes_after(0)
    state = DenyState()
    state.load_rows(rows)
    assert state.snapshot(0).entries == ["04A1B2C3D4"]


@pytest.mark.asyncio
async def test_bad_or_taken_uid_is_refused_before_anything_is_written(counter: Counter) -> None:
    c = counter
    a_id, b_id = await import_students(c, 2)
    with pytest.raises(InvalidInput):
        await c.center.cards.issue_temp(c.op, a_id, uid="04a1b2c")
    first = await c.center.cards.issue_temp(c.op, a_id, uid="04A1B2C3")
    with pytest.raises(Duplicate):
        await c.center.cards.issue_temp(c.op, b_id, uid="04a1b2c3")
    async with c.registry.read() as tx:
        assert [card.id for card in await tx.cards_of_holder(b_id)] == []
    assert first.card.uid == "04A1B2C3"


@pytest.mark.asyncio
async def test_print_check_replace_and_hand_over_normalise(counter: Counter) -> None:
    c = counter
    student, temp = await h.student_with_temp(c)
    ordered = await c.center.cards.order_smart(c.op, student.id)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True, uid="zz")
    assert err.value.code is ErrorCode.INVALID_INPUT
    passed = await c.center.cards.check_printed(
        c.op, ordered.card.serial, passed=True, uid="04 e1 e2 e3 e4 e5 e6"
    )
    assert passed.uid == "04E1E2E3E4E5E6"
    # the clerk reads the returned temp card's UID instead of typing its serial
    assert temp.uid is not None
    result = await c.center.cards.hand_over(
        c.op, ordered.card.serial, returned_temp_serial=temp.uid.lower()
    )
    assert result.card.state is CardState.ACTIVE
    assert (await h.card(c, temp.serial)).state is CardState.RECOVERED


def test_the_counter_reader_gives_the_canonical_uid() -> None:
    """The PC/SC bridge hands the counter the registry's form, never raw lower-case hex."""
    event = CardInserted("Virtual PCD 00 00", bytes.fromhex("04a1b2c3d4e5f6"), b"", None)
    assert event.card_uid == "04A1B2C3D4E5F6"
    assert CardInserted("Virtual PCD 00 00", b"\x04\xa1", b"", None).card_uid is None
