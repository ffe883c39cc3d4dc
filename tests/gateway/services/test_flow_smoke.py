from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, RuleViolation
from protocol.types import CardState
from tests.conftest import Counter, import_students


@pytest.mark.asyncio
async def test_loss_then_replace_at_47h_refused_and_48h_done(counter: Counter) -> None:
    """REP-1: replacement only 48 hours after the loss report; LOSS-4 the old card is void."""
    c = counter
    (hid,) = await import_students(c, 1)
    holder = await c.center.cards.holder(hid)
    issued = await c.center.cards.issue_temp(c.op, hid)
    await c.center.money.topup(c.op, issued.card.serial, 5000)
    await c.center.cards.report_loss(c.op, issued.card.serial, presented_id=holder.national_id)
    c.clock.advance(hours=47)
    with pytest.raises(RuleViolation) as err:
        await c.center.cards.replace(c.op, issued.card.serial, presented_id=holder.number)
    assert err.value.rule == "REP-1"
    assert err.value.code is ErrorCode.TOO_EARLY
    assert "2026-11-25 10:05" in str(err.value)
    c.clock.advance(hours=1)
    result = await c.center.cards.replace(c.op, issued.card.serial, presented_id=holder.number)
    assert result.old_card is not None
    assert result.old_card.state is CardState.REPLACED
    assert result.card.state is CardState.ACTIVE
    assert result.receipts[0].amount == 3000
    with pytest.raises(RuleViolation) as err:
        await c.center.cards.unlock(c.op, issued.card.serial, presented_id=holder.number)
    assert err.value.rule == "LOSS-4"
