"""ISS-6 (issue 10): staff imported without a staff number get a temp card on written proof; when
HR assigns the number the clerk adds it (once, audited), and the temp card is then exchanged for
a smart card. A recorded number changes only by an explicit, audited correction, and not while a
smart card printed with it is in use or being made (that is EXC-4's exchange)."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, InvalidInput, OnecardError
from protocol.types import CardKind, CardState
from tests.conftest import Counter
from tests.gateway.services import helpers as h


@pytest.mark.asyncio
async def test_iss6_number_assigned_later_then_temp_card_exchanged_for_smart(
    counter: Counter,
) -> None:
    c = counter
    (hid,) = await h.import_staff(c, 1, with_number=False)
    temp = (await c.center.cards.issue_temp(c.op, hid, proof_ref="数学系证明 2026-7")).card
    with pytest.raises(OnecardError) as err:
        await c.center.cards.order_smart(c.op, hid)
    assert (err.value.rule, err.value.code) == ("ISS-6", ErrorCode.HOLDER_DATA_INCOMPLETE)

    staff = await c.center.holders.update(
        c.op, hid, {"number": " T2026051 "}, reason="人事处通知 2026-45"
    )
    assert staff.number == "T2026051"
    (row,) = await h.audit(c, "holder.number_set")
    assert h.loads(row["before"]) == {"number": None}
    assert h.loads(row["after"]) == {
        "number": "T2026051",
        "reason": "人事处通知 2026-45",
        "rule": "ISS-6",
    }

    ordered = await c.center.cards.order_smart(c.op, "T2026051")
    assert ordered.card.kind is CardKind.SMART
    await c.center.cards.check_printed(c.op, ordered.card.serial, passed=True)
    handed = await c.center.cards.hand_over(
        c.op,
        ordered.card.serial,
        returned_temp_serial=temp.serial,
        presented_id=staff.national_id,
    )
    assert handed.card.state is CardState.ACTIVE
    assert (await h.card(c, temp.serial)).state is CardState.RECOVERED


@pytest.mark.asyncio
async def test_iss6_a_recorded_number_changes_only_by_explicit_correction(
    counter: Counter,
) -> None:
    c = counter
    first, second = await h.import_staff(c, 2, with_number=False)
    await c.center.holders.update(c.op, first, {"number": "T1"}, reason="人事处通知 1")
    with pytest.raises(OnecardError) as err:
        await c.center.holders.update(c.op, first, {"number": "T2"}, reason="人事处通知 2")
    assert (err.value.rule, err.value.code) == ("ISS-6", ErrorCode.DUPLICATE)
    assert "T1" in err.value.message_zh
    with pytest.raises(OnecardError) as err:  # another holder's number
        await c.center.holders.update(c.op, second, {"number": "T1"}, reason="人事处通知 3")
    assert (err.value.rule, err.value.code) == ("ISS-6", ErrorCode.DUPLICATE)
    with pytest.raises(InvalidInput) as bad:
        await c.center.holders.update(c.op, second, {"number": "T 3"}, reason="x")
    assert bad.value.rule == "ISS-6"
    with pytest.raises(InvalidInput):
        await c.center.holders.update(c.op, second, {"number": "T3"}, reason="  ")

    fixed = await c.center.holders.update(
        c.op, first, {"number": "T2"}, reason="录入错误，人事处通知 1 为 T2", correction=True
    )
    assert fixed.number == "T2"
    (row,) = await h.audit(c, "holder.number_corrected")
    assert (h.loads(row["before"]), h.loads(row["after"])["number"]) == ({"number": "T1"}, "T2")

    ordered = await c.center.cards.order_smart(c.op, "T2")
    with pytest.raises(OnecardError) as err:
        await c.center.holders.update(
            c.op, first, {"number": "T9"}, reason="又错了", correction=True
        )
    assert err.value.rule == "EXC-4"
    assert ordered.card.serial in err.value.message_zh
    assert (await h.holder(c, first)).number == "T2"


@pytest.mark.asyncio
async def test_iss11_a_temporary_holders_work_number_is_not_edited(counter: Counter) -> None:
    c = counter
    visitor, _ = await h.visitor_with_temp(c)
    with pytest.raises(OnecardError) as err:
        await c.center.holders.update(c.op, visitor.id, {"number": "123456"}, reason="x")
    assert err.value.rule == "ISS-11"
