"""Cardholder alerts (issue 9 ★): a lost or frozen card presented at a terminal, low balance,
every top-up — recorded by the real tap path (the batching writer on a SQLite file) and the
counter's services, read through :class:`gateway.services.alerts.AlertService`.

LOSS-2: a lost card is refused everywhere; the holder is told where and when, by place name.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.services.alerts import AlertKind, AlertRules, AlertService
from gateway.services.base import Actor, Context
from gateway.services.taps import TerminalService
from protocol.errors import AccessDenied, InvalidInput
from protocol.wire import OPERATIONS, TerminalConfig, TerminalKind
from storage.records import Card, Holder
from storage.tapwriter import SqliteTapWriter
from tests.conftest import Counter
from tests.gateway.services.helpers import count, find, student_with_temp
from tests.gateway.services.test_offline_settlement import assert_conserved

pytestmark = pytest.mark.asyncio

CONFIG = TerminalConfig(
    heartbeat_interval_s=30,
    offline_max_age_s=600,
    offline_max_amount_fen=2000,
    offline_max_daily_fen=5000,
    offline_max_count=500,
)


@dataclass
class Campus:
    c: Counter
    service: TerminalService
    alerts: AlertService
    holder: Holder
    card: Card
    requests: int = 0

    @property
    def me(self) -> Actor:
        return Actor(name=f"holder:{self.holder.id}", channel="web", holder_id=self.holder.id)

    async def tap(self, op: str, data: dict[str, Any], terminal: str = "pos-001") -> dict[str, Any]:
        self.requests += 1
        envelope = OPERATIONS[op].request_envelope.model_validate(
            {"v": 1, "request_id": f"r-{self.requests}", "data": data}
        )
        outcome = await self.service.handle(terminal, op, envelope)
        reply: dict[str, Any] = json.loads(outcome.payload)
        return reply

    async def buy(self, amount: int, terminal: str = "pos-001") -> dict[str, Any]:
        assert self.card.uid is not None
        return await self.tap("purchase", {"card": self.card.uid, "amount_fen": amount}, terminal)


@pytest_asyncio.fixture
async def campus(counter: Counter) -> AsyncIterator[Campus]:
    c = counter
    await c.center.merchants.add(c.admin, "canteen1", "第一食堂")
    await c.center.terminals.add(
        c.admin,
        "pos-001",
        TerminalKind.POS,
        password_hash=mosquitto_password_hash("pw-1"),
        merchant_id="canteen1",
        location="2号窗口",
    )
    await c.center.terminals.add(
        c.admin,
        "pos-002",
        TerminalKind.POS,
        password_hash=mosquitto_password_hash("pw-2"),
        merchant_id="canteen1",
        location="3号窗口",
    )
    await c.center.terminals.add(
        c.admin,
        "door-001",
        TerminalKind.DOOR,
        password_hash=mosquitto_password_hash("pw-3"),
        location="图书馆东门",
    )
    who, card = await student_with_temp(c)
    writer = SqliteTapWriter(c.path)
    writer.start()
    ctx = Context(registry=c.registry, clock=c.clock)
    service = TerminalService(ctx, CONFIG, writer, alerts=AlertRules(low_balance_fen=1000))
    try:
        yield Campus(c, service, AlertService(ctx), who, card)
        await assert_conserved(c)
    finally:
        await writer.close()


async def test_lost_card_presented_is_refused_and_the_holder_told_once_per_window(
    campus: Campus,
) -> None:
    """LOSS-2 + alert: each refusal of the lost card at a POS is decided and recorded, but the
    holder gets one alert per card per terminal per 10 minutes (a flooding stolen POS cannot
    fill the table), naming the place (merchant and location), not the terminal id."""
    k, c = campus, campus.c
    await c.center.money.topup(c.op, k.card.serial, 5000)
    await c.center.cards.report_loss(c.op, k.card.serial, presented_id=k.holder.national_id)
    c.clock.advance(minutes=1)
    for _ in range(50):
        reply = await k.buy(300)
        assert reply["error"]["code"] == "card_lost"
    assert await count(c, "holder_alerts", kind="card_presented") == 1
    await k.buy(300, terminal="pos-002")  # another terminal: its own alert
    assert await count(c, "holder_alerts", kind="card_presented") == 2
    c.clock.advance(minutes=10, seconds=1)
    await k.buy(300)  # the window has passed
    assert await count(c, "holder_alerts", kind="card_presented") == 3

    page = await k.alerts.list_alerts(k.me)
    newest = page.alerts[0]
    assert newest.kind is AlertKind.CARD_PRESENTED
    assert "已挂失" in newest.message_zh
    assert "第一食堂 2号窗口" in newest.message_zh
    assert "已拒绝" in newest.message_zh
    assert "pos-001" not in newest.message_zh + newest.message_en
    assert k.card.serial[-4:] in newest.message_zh
    assert k.card.serial not in newest.message_zh  # only the tail of the card number
    assert "10:" in newest.message_zh or "10:" in newest.message_en  # campus time (UTC+8)
    assert "refused" in newest.message_en
    assert newest.place == "第一食堂 2号窗口"
    # the money stayed where it was
    (purse,) = await find(c, "accounts", id=f"purse:{k.holder.id}")
    assert purse["balance"] == 5000


async def test_frozen_card_at_a_door_is_alerted_too(campus: Campus) -> None:
    """EXC-3: a faulty card is frozen; presented at a door it is refused and the holder told."""
    k, c = campus, campus.c
    await c.center.money.topup(c.op, k.card.serial, 2000)
    extra: dict[str, Any] = {"finding": "芯片无响应 / chip dead"}  # EXC-3's card check
    if "finding" not in inspect.signature(c.center.cards.report_fault).parameters:
        extra = {}
    await c.center.cards.report_fault(
        c.op, k.card.serial, presented_id=k.holder.national_id, **extra
    )
    assert k.card.uid is not None
    reply = await k.tap("access", {"card": k.card.uid}, terminal="door-001")
    assert reply["data"]["allowed"] is False
    (alert,) = (await k.alerts.list_alerts(k.me)).alerts[:1]
    assert alert.kind is AlertKind.CARD_PRESENTED
    assert "已冻结" in alert.message_zh
    assert alert.place == "图书馆东门"


async def test_an_approved_tap_writes_no_alert_above_the_mark(campus: Campus) -> None:
    """The approved path adds nothing while the balance stays at or above the mark."""
    k, c = campus, campus.c
    await c.center.money.topup(c.op, k.card.serial, 5000)
    before = await count(c, "holder_alerts")
    assert (await k.buy(4000))["ok"]
    assert await count(c, "holder_alerts") == before  # 1000 left: at the mark, not below


async def test_low_balance_once_per_crossing(campus: Campus) -> None:
    """Low balance: one alert when a debit crosses below the mark, none for the next debits;
    a top-up above the mark arms it again."""
    k, c = campus, campus.c
    await c.center.money.topup(c.op, k.card.serial, 3000)
    assert (await k.buy(2500))["ok"]  # 500 left: crossed
    assert (await k.buy(100))["ok"]
    assert (await k.buy(100))["ok"]
    assert await count(c, "holder_alerts", kind="low_balance") == 1
    await c.center.money.topup(c.op, k.card.serial, 2000)  # 2300: above again
    assert (await k.buy(1500))["ok"]  # 800: crossed again
    assert await count(c, "holder_alerts", kind="low_balance") == 2
    newest = (await k.alerts.list_alerts(k.me)).alerts[0]
    assert newest.kind is AlertKind.LOW_BALANCE
    assert "8.00" in newest.message_zh
    assert "第一食堂" in newest.message_zh


async def test_every_top_up_is_an_alert_counter_and_kiosk(campus: Campus) -> None:
    """TOP-1: counter, cash point and kiosk top-ups each tell the holder, with the balance."""
    k, c = campus, campus.c
    await c.center.terminals.add(
        c.admin,
        "kiosk-001",
        TerminalKind.KIOSK,
        password_hash=mosquitto_password_hash("pw-k"),
        location="食堂门口",
    )
    await c.center.money.topup(c.op, k.card.serial, 5000)
    await c.center.money.topup(c.op, k.card.serial, 1000, point="logistics-1")
    assert k.card.uid is not None
    reply = await k.tap(
        "topup",
        {"card": k.card.uid, "amount_fen": 2000, "payment_ref": "wx-123"},
        terminal="kiosk-001",
    )
    assert reply["ok"], reply
    page = await k.alerts.list_alerts(k.me)
    kinds = [a.kind for a in page.alerts]
    assert kinds == [AlertKind.TOPUP] * 3
    kiosk, cash_point, counter_topup = page.alerts
    assert "自助终端" in kiosk.message_zh or "食堂门口" in kiosk.message_zh
    assert "20.00" in kiosk.message_zh
    assert "80.00" in kiosk.message_zh  # the balance after
    assert "充值点" in cash_point.message_zh
    assert "卡务中心" in counter_topup.message_zh
    assert "50.00" in counter_topup.message_en


async def test_alerts_are_paged_newest_first_and_marked_read(campus: Campus) -> None:
    k, c = campus, campus.c
    for amount in range(1, 8):
        await c.center.money.topup(c.op, k.card.serial, amount * 100)
    first = await k.alerts.list_alerts(k.me, page=1, per_page=3)
    second = await k.alerts.list_alerts(k.me, page=2, per_page=3)
    third = await k.alerts.list_alerts(k.me, page=3, per_page=3)
    assert (first.total, first.pages, first.unread) == (7, 3, 7)
    ids = [a.id for a in first.alerts + second.alerts + third.alerts]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == 7
    assert "7.00" in first.alerts[0].message_zh

    assert await k.alerts.mark_read(k.me, [ids[0], ids[1], 10_000]) == 2
    assert await k.alerts.mark_read(k.me, [ids[0]]) == 0  # already read
    assert await k.alerts.unread_count(k.me) == 5
    page = await k.alerts.list_alerts(k.me, per_page=3)
    assert [a.read for a in page.alerts] == [True, True, False]
    assert await k.alerts.mark_read(k.me) == 5
    assert await k.alerts.unread_count(k.me) == 0

    with pytest.raises(InvalidInput):
        await k.alerts.list_alerts(k.me, page=0)


async def test_a_holder_sees_only_their_own_alerts(campus: Campus) -> None:
    k, c = campus, campus.c
    other, other_card = await student_with_temp(c, start=2)
    await c.center.money.topup(c.op, other_card.serial, 100)
    mine = await k.alerts.list_alerts(k.me)
    assert mine.total == 0
    with pytest.raises(AccessDenied):
        await k.alerts.list_alerts(k.me, holder_id=other.id)
    theirs = await k.alerts.list_alerts(c.op, holder_id=other.id)  # an operator with REPORTS
    assert theirs.total == 1
    # marking someone else's alert read does nothing
    assert await k.alerts.mark_read(k.me, [theirs.alerts[0].id]) == 0
    assert (await k.alerts.list_alerts(c.op, holder_id=other.id)).unread == 1
