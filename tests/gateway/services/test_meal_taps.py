"""MEAL-1 at the till: a staff member's subsidised swipes are counted per month through the tap
path (the SQLite writer), then the purse pays; the portal reads the same allowance (one typed
operation, ``meal_allowance``, on both sides of the registry)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.services.base import Actor, Context
from gateway.services.portal import PortalService
from gateway.services.taps import TerminalService
from protocol.wire import OPERATIONS, TerminalKind
from storage.tapwriter import SqliteTapWriter
from tests.conftest import Counter
from tests.gateway.services import helpers as h
from tests.gateway.services.helpers import QuotaRow
from tests.gateway.services.test_alerts import CONFIG


@pytest.mark.asyncio
async def test_meal1_subsidised_swipes_are_counted_then_the_purse_pays(counter: Counter) -> None:
    c = counter
    await c.center.merchants.add(c.admin, "canteen1", "第一食堂")
    await c.center.terminals.add(
        c.admin,
        "pos-001",
        TerminalKind.POS,
        password_hash=mosquitto_password_hash("pw-1"),
        merchant_id="canteen1",
    )
    staff, card = await h.staff_with_smart(c)
    assert staff.number is not None and card.uid is not None
    await c.center.meal.import_quotas(c.admin, [QuotaRow(2, staff.number, 2)], source="HR")
    await c.center.meal.enable(c.admin, staff.number)
    await c.center.money.topup(c.admin, card.serial, 1_000)
    portal = PortalService(Context(registry=c.registry, clock=c.clock))
    me = Actor(name=f"holder:{staff.id}", channel="web", holder_id=staff.id)
    assert (await portal.overview(me)).meals_left == 2

    writer = SqliteTapWriter(c.path)
    writer.start()
    service = TerminalService(Context(registry=c.registry, clock=c.clock), CONFIG, writer)
    replies: list[dict[str, Any]] = []
    try:
        for i in range(3):
            envelope = OPERATIONS["meal"].request_envelope.model_validate(
                {"v": 1, "request_id": f"m-{i}", "data": {"card": card.uid, "amount_fen": 600}}
            )
            outcome = await service.handle("pos-001", "meal", envelope)
            replies.append(json.loads(outcome.payload)["data"])
    finally:
        await writer.close()
    assert [(r["paid_by"], r["subsidy_left"]) for r in replies] == [
        ("subsidy", 1),
        ("subsidy", 0),
        ("purse", 0),
    ]
    assert replies[2]["balance_after_fen"] == 400  # only the third swipe came out of the purse
    (usage,) = await h.find(c, "meal_usage", holder_id=staff.id)
    assert usage["used"] == 2
    overview = await portal.overview(me)
    assert (overview.meals_per_month, overview.meals_left) == (2, 0)
