"""MEAL: the staff meal subsidy (quotas, enabling, disabling), through the services on SQLite."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, InvalidInput, OnecardError
from protocol.types import CardState
from tests.conftest import Counter
from tests.gateway.services import helpers as h
from tests.gateway.services.helpers import QuotaRow


@pytest.mark.asyncio
async def test_meal1_quota_per_staff_member_set_from_hr_figures(counter: Counter) -> None:
    """MEAL-1: the number of subsidised swipes per month is set (and changed) from HR's figures;
    a newly listed member starts not enabled until the card is brought in."""
    c = counter
    staff, _ = await h.staff_with_smart(c)
    assert staff.number is not None
    report = await c.center.meal.import_quotas(
        c.admin, [QuotaRow(2, staff.number, 22)], source="人事处2026-11.xlsx"
    )
    assert report.updated == 1
    (quota,) = await h.find(c, "meal_quotas", holder_id=staff.id)
    assert (quota["meals_per_month"], quota["enabled"]) == (22, False)
    await c.center.meal.import_quotas(
        c.admin, [QuotaRow(2, staff.number, 18)], source="人事处2026-12.xlsx"
    )
    (quota,) = await h.find(c, "meal_quotas", holder_id=staff.id)
    assert (quota["meals_per_month"], quota["source"]) == (18, "人事处2026-12.xlsx")
    (_first, second) = await h.audit(c, "meal.quota")
    assert h.loads(second["before"])["meals_per_month"] == 22


@pytest.mark.asyncio
async def test_meal2_hr_list_kept_as_register_all_or_nothing(counter: Counter) -> None:
    """MEAL-2: HR's eligible list is the register: an unknown staff number refuses the whole
    list; someone not on the list cannot be enabled."""
    c = counter
    staff, _ = await h.staff_with_smart(c)
    assert staff.number is not None
    with pytest.raises(OnecardError) as err:
        await c.center.meal.import_quotas(
            c.admin,
            [QuotaRow(2, staff.number, 20), QuotaRow(3, "T99999", 20)],
            source="人事处.xlsx",
        )
    assert (err.value.rule, err.value.code) == ("MEAL-2", ErrorCode.NOT_FOUND)
    assert "3:T99999" in str(err.value)
    assert await h.count(c, "meal_quotas") == 0
    with pytest.raises(OnecardError) as err:
        await c.center.meal.enable(c.admin, staff.number)
    assert (err.value.rule, err.value.code) == ("MEAL-2", ErrorCode.NOT_ELIGIBLE)
    assert (await h.cards_of(c, staff.id))[0].type_group == 0


@pytest.mark.asyncio
async def test_meal3_enable_moves_card_into_group_1_and_writes_it_back(counter: Counter) -> None:
    """MEAL-3: enabling moves the card's type into group 1 (电子工作证) and marks the type to be
    written back onto the card; the reader's confirmation clears the mark."""
    c = counter
    staff, card = await h.staff_with_smart(c)
    assert staff.number is not None
    await c.center.meal.import_quotas(c.admin, [QuotaRow(2, staff.number, 20)], source="HR")
    enabled = await c.center.meal.enable(c.admin, staff.number)
    assert (enabled.id, enabled.type_group, enabled.card_write_pending) == (card.id, 1, True)
    assert (await h.find(c, "meal_quotas", holder_id=staff.id))[0]["enabled"] is True
    (log,) = await h.audit(c, "meal.enable")
    assert (h.loads(log["before"]), h.loads(log["after"])) == ({"type_group": 0}, {"type_group": 1})

    with pytest.raises(InvalidInput) as bad:
        await c.center.meal.card_written(c.admin, card.serial, 0)
    assert bad.value.rule == "MEAL-3"
    written = await c.center.meal.card_written(c.admin, card.serial, 1)
    assert (written.type_group, written.card_write_pending) == (1, False)
    assert written.state is CardState.ACTIVE


@pytest.mark.asyncio
async def test_meal4_disable_suspends_then_brought_in_resumes_outside_the_group(
    counter: Counter,
) -> None:
    """MEAL-4: disabling first suspends the card (refused, on the deny list); when the holder
    brings it in it is re-enabled, moved out of group 1 and the type written back."""
    c = counter
    staff, card = await h.staff_with_smart(c)
    assert staff.number is not None
    await c.center.meal.import_quotas(c.admin, [QuotaRow(2, staff.number, 20)], source="HR")
    await c.center.meal.enable(c.admin, staff.number)
    await c.center.meal.card_written(c.admin, card.serial, 1)

    suspended = await c.center.meal.disable(c.admin, staff.number)
    assert suspended.state is CardState.SUSPENDED
    assert await h.tap(c, card.serial) is ErrorCode.CARD_SUSPENDED
    assert (await h.find(c, "meal_quotas", holder_id=staff.id))[0]["enabled"] is False

    resumed = await c.center.meal.card_brought_in(c.admin, card.serial)
    assert resumed.state is CardState.ACTIVE
    assert (resumed.type_group, resumed.card_write_pending) == (0, True)
    assert await h.tap(c, card.serial) is None
    assert [(r["change"], r["denied"]) for r in await h.deny_rows(c, card.id)] == [
        ("suspend", True),
        ("resume", False),
    ]
    assert [e["rule"] for e in await h.events(c, card.id)][-2:] == ["MEAL-4", "MEAL-4"]
    with pytest.raises(OnecardError) as err:
        await c.center.meal.disable(c.admin, staff.number)
    assert (err.value.rule, err.value.code) == ("MEAL-4", ErrorCode.NOT_ELIGIBLE)
