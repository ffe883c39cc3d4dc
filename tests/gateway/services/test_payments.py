"""TOP-1, the app channel: online top-up through the sandbox payment provider.

Real parts: the registry on a SQLite file, the card center's services, the sandbox provider's
bank (in-process, signed requests and notifications as over HTTP). After every test the ledger is
conserved (Σ balances = 0, every account equals its transfers) — the fixture checks it.

Rules tested: credited exactly once per provider trade (duplicated, concurrent and late callbacks,
a query racing a callback), only on a verified signature and a matching amount and order number;
a never-called-back order resolved by query; expiry; limits; reconciliation differences.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
import pytest_asyncio

from gateway.payments.sandbox import (
    HttpTransport,
    InProcessTransport,
    SandboxBank,
    SandboxError,
    SandboxProvider,
    signed,
)
from gateway.services.alerts import AlertKind, AlertService
from gateway.services.base import Actor, Context
from gateway.services.payments import (
    AMOUNT_MISMATCH,
    MISSING_OURS,
    MISSING_THEIRS,
    OrderState,
    PaymentService,
    ProviderUnavailable,
    TopupRules,
    clearing_account,
    parse_statement,
    reconcile,
)
from protocol.cards.clock import local
from protocol.errors import AccessDenied, ErrorCode, NotFound, RuleViolation
from protocol.ledger import purse
from storage.records import Holder
from tests.conftest import Counter
from tests.gateway.services.helpers import audit, balance, count, find, student_with_temp
from tests.gateway.services.test_offline_settlement import assert_conserved

pytestmark = pytest.mark.asyncio

KEY = b"sandbox-test-key-0123456789abcdef"
RULES = TopupRules(min_amount=100, max_amount=50_000, max_daily=80_000)


@dataclass
class Shop:
    c: Counter
    bank: SandboxBank
    payments: PaymentService
    holder: Holder

    @property
    def me(self) -> Actor:
        return Actor(name=f"holder:{self.holder.id}", channel="web", holder_id=self.holder.id)

    async def purse(self) -> int:
        return await balance(self.c, purse(self.holder.id))

    async def order(self, number: str) -> dict[str, object]:
        (row,) = await find(self.c, "payment_orders", out_trade_no=number)
        return row

    async def paid(self, amount: int = 5000) -> str:
        """An order the holder created and paid at the provider (no callback delivered yet)."""
        order = await self.payments.create_topup(self.me, amount)
        assert order.pay_url is not None and order.out_trade_no in order.pay_url
        self.bank.pay(order.out_trade_no)
        return order.out_trade_no


@pytest_asyncio.fixture
async def shop(counter: Counter) -> AsyncIterator[Shop]:
    c = counter
    who, _card = await student_with_temp(c)
    bank = SandboxBank(KEY, merchant_id="onecard-test", clock=c.clock.now)
    provider = SandboxProvider(
        InProcessTransport(bank),
        key=KEY,
        merchant_id="onecard-test",
        notify_url="http://127.0.0.1/pay/notify/sandbox",
    )
    payments = PaymentService(Context(registry=c.registry, clock=c.clock), provider, RULES)
    yield Shop(c, bank, payments, who)
    await assert_conserved(c)


async def test_top1_paid_and_notified_credits_the_purse_once(shop: Shop) -> None:
    """One order, one payment, the provider calls back five times: one credit, one transfer
    from the provider's clearing account, one top-up alert; every step audited (channel web)."""
    s = shop
    number = await s.paid(5000)
    body = s.bank.notification(number)
    outcomes = [await s.payments.handle_notification(body) for _ in range(5)]
    assert [o.code for o in outcomes] == ["credited"] + ["duplicate"] * 4
    assert all(o.accepted and o.status == 200 for o in outcomes)  # the provider stops retrying
    assert json.loads(outcomes[1].body)["code"] == "SUCCESS"
    assert await s.purse() == 5000
    (transfer,) = await find(s.c, "transfers", kind="topup")
    assert (transfer["source"], transfer["dest"], transfer["amount"]) == (
        clearing_account("sandbox"),
        purse(s.holder.id),
        5000,
    )
    order = await s.order(number)
    assert order["state"] == "paid"
    assert order["transfer_id"] == transfer["id"]
    assert order["provider_trade_no"] == s.bank.orders[number].trade_no
    assert order["late"] is False
    (created,) = await audit(s.c, "topup.order_created")
    assert json.loads(created["after"])["channel"] == "web"
    assert created["actor"] == f"holder:{s.holder.id}"
    assert len(await audit(s.c, "topup.credited")) == 1
    assert len(await audit(s.c, "topup.duplicate")) == 4
    alerts = await AlertService(s.payments.ctx).list_alerts(s.me)
    assert [a.kind for a in alerts.alerts] == [AlertKind.TOPUP]
    assert "网上充值" in alerts.alerts[0].message_zh
    assert "50.00" in alerts.alerts[0].message_zh


async def test_top1_concurrent_callbacks_and_query_credit_once(shop: Shop) -> None:
    """Callbacks, a query from the return page and a sweep all at once: one credit."""
    s = shop
    number = await s.paid(3000)
    body = s.bank.notification(number)
    s.c.clock.advance(minutes=2)  # the sweep queries orders whose callback is overdue
    notified, status, _swept = await asyncio.gather(
        asyncio.gather(*(s.payments.handle_notification(body) for _ in range(4))),
        s.payments.order_status(s.me, number),
        s.payments.sweep(),
    )
    codes = [r.code for r in notified]
    assert status.state is OrderState.PAID
    assert codes.count("credited") <= 1
    assert await s.purse() == 3000
    assert await count(s.c, "transfers", kind="topup") == 1
    assert len(await audit(s.c, "topup.credited")) == 1


async def test_top1_forged_signature_is_refused(shop: Shop) -> None:
    """A notification signed with another key, altered after signing, or not JSON: refused,
    nothing credited, the order still pending and later resolved by query."""
    s = shop
    number = await s.paid(5000)
    forged = s.bank.notification(number, key=b"not-the-merchant-key")
    fields = json.loads(s.bank.notification(number))
    fields["total_fee"] = "500000"  # altered after signing
    tampered = json.dumps(fields).encode()
    for body in (forged, tampered, b"<xml>", b"[]"):
        outcome = await s.payments.handle_notification(body)
        assert (outcome.accepted, outcome.credited, outcome.code) == (False, False, "forged")
        assert outcome.status == 400
    assert await s.purse() == 0
    assert (await s.order(number))["state"] == "pending"
    assert len(await audit(s.c, "topup.forged")) == 4
    # another merchant's correctly signed notification is not ours either
    other = signed({**fields, "mch_id": "someone-else"}, KEY)
    assert (await s.payments.handle_notification(json.dumps(other).encode())).code == "forged"
    assert (await s.payments.order_status(s.me, number)).state is OrderState.PAID
    assert await s.purse() == 5000


async def test_top1_amount_mismatch_is_refused(shop: Shop) -> None:
    """The provider charged another amount than ordered: never credited, audited, and the
    reconciliation lists it."""
    s = shop
    order = await s.payments.create_topup(s.me, 5000)
    s.bank.pay(order.out_trade_no, amount=50)
    outcome = await s.payments.handle_notification(s.bank.notification(order.out_trade_no))
    assert (outcome.accepted, outcome.credited, outcome.code) == (False, False, "amount_mismatch")
    assert await s.purse() == 0
    (row,) = await audit(s.c, "topup.amount_mismatch")
    assert json.loads(row["after"])["paid"] == 50
    # the query path refuses it too
    assert (await s.payments.order_status(s.me, order.out_trade_no)).state is OrderState.PENDING
    assert await s.purse() == 0
    table = await reconcile(
        s.payments.ctx,
        s.c.op,
        local(s.c.clock.now()).date(),
        parse_statement(s.bank.statement(local(s.c.clock.now()).date())),
        provider="sandbox",
    )
    assert table.column("difference")[:-1] == [MISSING_OURS]  # we did not credit their trade


async def test_top1_unknown_order_is_refused(shop: Shop) -> None:
    s = shop
    fields = {
        "mch_id": "onecard-test",
        "out_trade_no": "OC20261123ffffffffffffffff",
        "transaction_id": "42000",
        "trade_state": "SUCCESS",
        "total_fee": "100",
        "success_time": s.c.clock.now().isoformat(),
    }
    outcome = await s.payments.handle_notification(json.dumps(signed(fields, KEY)).encode())
    assert (outcome.accepted, outcome.code) == (False, "unknown_order")
    assert await count(s.c, "transfers") == 0


async def test_top1_never_called_back_is_resolved_by_query(shop: Shop) -> None:
    """The provider never calls back: the return page's status query credits the order; the
    sweep does the same for orders nobody looks at."""
    s = shop
    first = await s.paid(2000)
    status = await s.payments.order_status(s.me, first)
    assert (status.state, status.balance) == (OrderState.PAID, 2000)
    second = await s.paid(1000)
    assert (await s.payments.sweep()).credited == []  # not overdue yet: wait for the callback
    s.c.clock.advance(minutes=2)
    assert (await s.payments.sweep()).credited == [second]
    assert await s.purse() == 3000
    # the callback comes after all: nothing more
    assert (await s.payments.handle_notification(s.bank.notification(second))).code == "duplicate"
    assert await s.purse() == 3000
    vias = sorted(json.loads(r["after"])["via"] for r in await audit(s.c, "topup.credited"))
    assert vias == ["query", "query"]


async def test_top1_unpaid_order_expires_and_is_closed_at_the_provider(shop: Shop) -> None:
    """An order never paid expires after the configured time: queried, closed at the provider
    (so it can no longer be paid), marked expired; paying it afterwards is refused."""
    s = shop
    order = await s.payments.create_topup(s.me, 4000)
    s.c.clock.advance(minutes=29)
    swept = await s.payments.sweep()
    assert (swept.expired, swept.pending) == ([], [order.out_trade_no])
    s.c.clock.advance(minutes=2)
    assert (await s.payments.sweep()).expired == [order.out_trade_no]
    assert (await s.order(order.out_trade_no))["state"] == "expired"
    assert s.bank.orders[order.out_trade_no].state == "CLOSED"
    with pytest.raises(SandboxError):
        s.bank.pay(order.out_trade_no)
    assert len(await audit(s.c, "topup.expired")) == 1
    assert await s.purse() == 0


async def test_top1_late_callback_after_expiry_is_credited(shop: Shop) -> None:
    """The rule for a late callback: the provider says paid (the money was taken from the
    holder) after our side expired the order — we credit it, marked late, audited, alerted."""
    s = shop
    order = await s.payments.create_topup(s.me, 4000)
    s.bank.pay(order.out_trade_no)
    body = s.bank.notification(order.out_trade_no)
    # our side expired the order without hearing of the payment (e.g. the provider was down
    # when the sweep asked): simulated by closing the order in the registry as the sweep does
    s.c.clock.advance(minutes=31)
    async with s.c.registry.transaction() as tx:
        row = (await tx.find("payment_orders", out_trade_no=order.out_trade_no))[0]
        assert await tx.update_where(
            "payment_orders", row["id"], {"state": "expired"}, state="pending"
        )
    s.c.clock.advance(hours=3)  # the callback comes hours later
    outcome = await s.payments.handle_notification(body)
    assert (outcome.code, outcome.credited) == ("credited", True)
    assert await s.purse() == 4000
    row = await s.order(order.out_trade_no)
    assert (row["state"], row["late"]) == ("paid", True)
    (credited,) = await audit(s.c, "topup.credited")
    assert json.loads(credited["after"])["late"] is True
    assert (await s.payments.handle_notification(body)).code == "duplicate"
    assert await s.purse() == 4000


async def test_top1_paid_just_before_the_sweep_closes_is_credited_not_expired(shop: Shop) -> None:
    """The sweep queries before it expires: an order paid late in its window is credited."""
    s = shop
    number = await s.paid(2500)
    s.c.clock.advance(minutes=45)
    swept = await s.payments.sweep()
    assert (swept.credited, swept.expired) == ([number], [])
    assert await s.purse() == 2500


async def test_top1_limits_per_top_up_and_per_day(shop: Shop) -> None:
    """Limits (configurable): 1..500 yuan per top-up; 800 yuan per holder per campus day,
    counting pending and credited orders, not expired ones; a new campus day starts afresh."""
    s = shop
    for bad in (99, 50_001):
        with pytest.raises(RuleViolation) as err:
            await s.payments.create_topup(s.me, bad)
        assert (err.value.code, err.value.rule) == (ErrorCode.INVALID_AMOUNT, "TOP-1")
    await s.paid(50_000)
    pending = await s.payments.create_topup(s.me, 30_000)  # 800 yuan: at the limit
    with pytest.raises(RuleViolation) as err:
        await s.payments.create_topup(s.me, 100)
    assert "800.00" in err.value.message_zh
    s.c.clock.advance(minutes=31)
    await s.payments.sweep()  # the unpaid one expires and no longer counts
    assert (await s.order(pending.out_trade_no))["state"] == "expired"
    await s.payments.create_topup(s.me, 30_000)
    s.c.clock.advance(days=1)
    await s.payments.create_topup(s.me, 50_000)
    assert await count(s.c, "payment_orders") == 4


async def test_top1_only_the_holder_and_only_their_orders(shop: Shop) -> None:
    s = shop
    with pytest.raises(AccessDenied):
        await s.payments.create_topup(s.c.op, 100)  # an operator is not a holder
    number = await s.paid(100)
    other, _ = await student_with_temp(s.c, start=2)
    intruder = Actor(name=f"holder:{other.id}", channel="web", holder_id=other.id)
    with pytest.raises(NotFound):
        await s.payments.order_status(intruder, number)
    assert await s.payments.orders_of(intruder) == []
    (mine,) = await s.payments.orders_of(s.me)
    assert mine.out_trade_no == number


async def test_top1_reconciliation_lists_every_difference(shop: Shop) -> None:
    """The daily reconciliation against the provider's statement: a trade the provider has and
    we never credited, a credit missing from their statement, an amount that differs."""
    s = shop
    matched = await s.paid(1000)
    await s.payments.handle_notification(s.bank.notification(matched))
    dropped = await s.paid(2000)  # credited by us, then "lost" from their statement
    await s.payments.handle_notification(s.bank.notification(dropped))
    altered = await s.paid(3000)  # credited, their statement says another amount
    await s.payments.handle_notification(s.bank.notification(altered))
    unseen = await s.paid(4000)  # paid, never called back, never queried: not credited
    day: date = local(s.c.clock.now()).date()

    statement = s.bank.statement(day)
    lines = statement.splitlines()
    lines = [line for line in lines if dropped not in line]
    lines = [line.replace("`30.00", "`31.00") if altered in line else line for line in lines]
    table = await reconcile(
        s.payments.ctx, s.c.op, day, parse_statement("\n".join(lines)), provider="sandbox"
    )
    found = {(row[0], row[1]) for row in table.rows[:-1]}  # (difference, out_trade_no)
    assert found == {
        (MISSING_OURS, unseen),
        (MISSING_THEIRS, dropped),
        (AMOUNT_MISMATCH, altered),
    }
    total = table.rows[-1]
    assert "1 matched" in str(total[1])
    assert "3 differences" in str(total[2])
    assert (total[3], total[4]) == ("60.00", "81.00")  # ours 10+20+30, theirs 10+31+40

    # the untouched statement, after the sweep credited the unseen trade: no difference
    s.c.clock.advance(minutes=2)
    await s.payments.sweep()
    clean = await reconcile(
        s.payments.ctx, s.c.op, day, parse_statement(s.bank.statement(day)), provider="sandbox"
    )
    assert clean.rows[:-1] == []
    assert "4 matched" in str(clean.rows[-1][1])
    with pytest.raises(AccessDenied):
        await reconcile(s.payments.ctx, s.me, day, [], provider="sandbox")


async def test_top1_reconciliation_day_boundary(shop: Shop) -> None:
    """A trade paid just before campus midnight and credited after it belongs to the day it
    was paid on (the provider's day)."""
    s = shop
    now = s.c.clock.now()
    midnight = local(now).replace(hour=23, minute=59, second=50)
    s.c.clock.set(midnight)
    number = await s.paid(1500)
    s.c.clock.advance(seconds=30)  # credited on the next campus day
    await s.payments.handle_notification(s.bank.notification(number))
    day = local(midnight).date()
    table = await reconcile(
        s.payments.ctx, s.c.op, day, parse_statement(s.bank.statement(day)), provider="sandbox"
    )
    assert table.rows[:-1] == []
    nxt = await reconcile(
        s.payments.ctx,
        s.c.op,
        day + timedelta(days=1),
        parse_statement(s.bank.statement(day + timedelta(days=1))),
        provider="sandbox",
    )
    assert nxt.rows[:-1] == []


async def test_top1_provider_down(shop: Shop) -> None:
    """The provider cannot be reached: a new order fails cleanly (no money, state failed,
    audited); the sweep leaves pending orders for the next round and resolves them later."""
    s = shop
    provider = s.payments.provider
    assert isinstance(provider, SandboxProvider)
    working = provider.transport
    number = await s.paid(1200)
    provider.transport = HttpTransport("http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ProviderUnavailable):
        await s.payments.create_topup(s.me, 500)
    (failed,) = await find(s.c, "payment_orders", state="failed")
    assert failed["amount"] == 500
    assert len(await audit(s.c, "topup.provider_failed")) == 1
    s.c.clock.advance(minutes=2)
    assert (await s.payments.sweep()).failed == [number]
    assert (await s.order(number))["state"] == "pending"
    provider.transport = working
    assert (await s.payments.sweep()).credited == [number]
    assert await s.purse() == 1200
