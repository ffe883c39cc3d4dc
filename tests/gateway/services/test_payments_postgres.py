"""Online top-up and alerts on PostgreSQL: the same rule tests as on SQLite, plus real
concurrency (several connections) against one order — exactly one credit per provider trade.

Needs PostgreSQL (see tests/storage/test_postgres_contract.py); marker ``postgres``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.payments.sandbox import InProcessTransport, SandboxBank, SandboxProvider
from gateway.services.alerts import AlertService
from gateway.services.base import Context
from gateway.services.payments import OrderState, PaymentService
from storage.sql import SqlRegistry
from tests.gateway.services import test_payments as rules
from tests.gateway.services.helpers import audit, count, make_counter, student_with_temp
from tests.gateway.services.test_offline_settlement import assert_conserved
from tests.gateway.services.test_payments import KEY, RULES, Shop
from tests.storage.test_postgres_contract import pg_server, pg_url  # noqa: F401 - fixtures

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio]


@pytest_asyncio.fixture
async def pg_shop(pg_url: str, tmp_path: Path) -> AsyncIterator[Shop]:  # noqa: F811
    registry = await SqlRegistry.open(pg_url, migrate=True)
    try:
        c = await make_counter(registry, tmp_path, books=[("B0001", 1, 50)])
        who, _card = await student_with_temp(c)
        bank = SandboxBank(KEY, merchant_id="onecard-test", clock=c.clock.now)
        provider = SandboxProvider(
            InProcessTransport(bank),
            key=KEY,
            merchant_id="onecard-test",
            notify_url="http://127.0.0.1/pay/notify/sandbox",
        )
        payments = PaymentService(Context(registry=registry, clock=c.clock), provider, RULES)
        yield Shop(c, bank, payments, who)
        await assert_conserved(c)
    finally:
        await registry.close()


async def test_pg_paid_and_notified_credits_once(pg_shop: Shop) -> None:
    await rules.test_top1_paid_and_notified_credits_the_purse_once(pg_shop)


async def test_pg_forged_refused(pg_shop: Shop) -> None:
    await rules.test_top1_forged_signature_is_refused(pg_shop)


async def test_pg_amount_mismatch_refused(pg_shop: Shop) -> None:
    await rules.test_top1_amount_mismatch_is_refused(pg_shop)


async def test_pg_late_callback_credited(pg_shop: Shop) -> None:
    await rules.test_top1_late_callback_after_expiry_is_credited(pg_shop)


async def test_pg_expiry(pg_shop: Shop) -> None:
    await rules.test_top1_unpaid_order_expires_and_is_closed_at_the_provider(pg_shop)


async def test_pg_never_called_back(pg_shop: Shop) -> None:
    await rules.test_top1_never_called_back_is_resolved_by_query(pg_shop)


async def test_pg_limits(pg_shop: Shop) -> None:
    await rules.test_top1_limits_per_top_up_and_per_day(pg_shop)


async def test_pg_reconciliation(pg_shop: Shop) -> None:
    await rules.test_top1_reconciliation_lists_every_difference(pg_shop)


async def test_pg_concurrent_callbacks_on_several_connections_credit_once(pg_shop: Shop) -> None:
    """Twenty callbacks and queries at once, each in its own PostgreSQL transaction on its own
    connection: the claim (UPDATE ... WHERE credited_at IS NULL) lets exactly one credit."""
    s = pg_shop
    numbers = [await s.paid(1000 + i) for i in range(3)]
    bodies = [s.bank.notification(n) for n in numbers]
    results = await asyncio.gather(
        *(s.payments.handle_notification(b) for b in bodies for _ in range(6)),
        *(s.payments.order_status(s.me, n) for n in numbers),
    )
    assert all(getattr(r, "state", OrderState.PAID) is OrderState.PAID for r in results)
    assert await count(s.c, "transfers", kind="topup") == 3
    assert await s.purse() == 1000 + 1001 + 1002
    credited = await audit(s.c, "topup.credited")
    assert sorted(json.loads(r["after"])["amount"] for r in credited) == [1000, 1001, 1002]


async def test_pg_alerts_paged_and_marked(pg_shop: Shop) -> None:
    s = pg_shop
    for amount in (100, 200, 300):
        await s.c.center.money.topup(s.c.op, (await _serial(s)), amount)
    alerts = AlertService(s.payments.ctx)
    page = await alerts.list_alerts(s.me, page=1, per_page=2)
    assert (page.total, page.unread, len(page.alerts)) == (3, 3, 2)
    assert "3.00" in page.alerts[0].message_zh
    assert await alerts.mark_read(s.me) == 3
    assert await alerts.unread_count(s.me) == 0


async def _serial(s: Shop) -> str:
    async with s.c.registry.read() as tx:
        (card,) = await tx.cards_of_holder(s.holder.id)
    return card.serial
