"""Online top-up (TOP-1, the mobile-app / web channel) through a payment provider.

The provider sits behind :class:`PaymentProvider` (a ``typing.Protocol``): the sandbox
(gateway/payments/sandbox.py) in the demo and the tests, WeChat Pay or Alipay as one more adapter.
They all work the same way: we create an order with our ``out_trade_no`` and the amount; the
holder confirms on the provider's page; the provider calls back with a **signed** notification —
maybe several times, maybe late, maybe never (then we query the order).

Rules (tests: tests/gateway/services/test_payments.py):

- **Exactly once per provider trade.** A notification credits only after the adapter verified
  its signature (:class:`ForgedNotification` otherwise) and only if its ``out_trade_no`` is ours
  and its amount is the order's. The credit is ONE balanced transfer ``external:app-<provider>
  -> purse:<holder>`` (:func:`protocol.ledger.topup`), in the same transaction as the order's
  claim (:meth:`storage.ports.Tx.update_where` on ``credited_at IS NULL``), and the order's
  ``(provider, provider_trade_no)`` and ``transfer_id`` are UNIQUE in ``payment_orders``:
  duplicated or concurrent callbacks, a query racing a callback, a sweep — one credit.
- **Expiry.** An order not paid within ``order_ttl`` expires (:meth:`PaymentService.sweep`,
  run by the web process every few seconds, or :meth:`PaymentService.resolve`): we query the
  provider first (a paid order is credited, never expired), then close it at the provider (so it
  can no longer be paid), then mark it ``expired``.
- **Late callback after expiry: credit.** If the provider nevertheless reports the order paid
  (the holder paid in the instant before the close, or the provider closed late), the money was
  taken from the holder: we credit the purse (``late = true``, audited, the holder alerted) rather
  than leave the holder to chase a refund. Limits are checked when an order is created, never
  when money that was already taken arrives.
- **Limits** (configurable, :class:`TopupRules`): per top-up ``min_amount``..``max_amount``; per
  holder and campus day, ``max_daily`` over orders still pending or credited.
- **Audit.** Every step is in the audit log (entity ``payment_order``, channel ``web``):
  ``topup.order_created``, ``topup.notified``, ``topup.credited``, ``topup.duplicate``,
  ``topup.forged``, ``topup.amount_mismatch``, ``topup.unknown_order``, ``topup.expired``,
  ``topup.provider_failed``. Logs carry the order number, never the holder's name or card.
- **Reconciliation.** :func:`reconcile` matches our credits of a campus day against the provider's
  statement file (CSV, :func:`parse_statement`) and lists every difference.

API for the web pages (``gateway/web``; the holder's own :class:`Actor`, channel ``web``)::

    payments = PaymentService(ctx, provider, rules)        # gateway.bootstrap.payment_service()
    order = await payments.create_topup(actor, amount_fen)  # -> TopupOrder; redirect to .pay_url
    order = await payments.order_status(actor, out_trade_no)  # the return page: queries if pending
    orders = await payments.orders_of(actor)                # the holder's recent orders
    payments.rules                                           # limits, to show on the page
    # POST /pay/notify/<provider> (no session, no CSRF: the signature is the authentication):
    result = await payments.handle_notification(body_bytes, headers)
    return Response(result.body, status_code=result.status, media_type=result.media_type)
    # in the app's lifespan: every few seconds
    await payments.sweep()
"""

from __future__ import annotations

import csv
import io
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, Protocol

from gateway.services.alerts import record_topup
from gateway.services.base import Actor, Context
from gateway.services.common import live_card, require_active_holder
from gateway.services.reports import TOTAL, Table
from protocol.cards.clock import CAMPUS_TZ, fmt_local, local
from protocol.cards.fees import parse_yuan, yuan
from protocol.errors import (
    AccessDenied,
    Duplicate,
    ErrorCode,
    InvalidInput,
    NotFound,
    OnecardError,
    RuleViolation,
)
from protocol.ledger import MAX_AMOUNT, TransferSpec, check_amount, external, purse, topup
from protocol.types import Permission
from storage.ports import Tx
from storage.records import Row

log = logging.getLogger("onecard.payments")

CHANNEL = "web"


# --- the provider port -------------------------------------------------------------------------


class TradeState(StrEnum):
    """A trade's state as the provider reports it."""

    PAID = "paid"  # WeChat SUCCESS, Alipay TRADE_SUCCESS / TRADE_FINISHED
    PENDING = "pending"  # NOTPAY / USERPAYING / WAIT_BUYER_PAY
    CLOSED = "closed"  # CLOSED / TRADE_CLOSED / PAYERROR: never paid, never will be
    UNKNOWN = "unknown"  # the provider has no such order


@dataclass(frozen=True, slots=True)
class TradeStatus:
    """A verified notification or a query's answer."""

    out_trade_no: str
    state: TradeState
    amount: int | None = None  # fen, what the holder paid
    trade_no: str | None = None  # the provider's transaction id
    paid_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProviderOrder:
    """What the provider answers to a new order: where the holder confirms the payment."""

    pay_url: str
    prepay_id: str


@dataclass(frozen=True, slots=True)
class NotifyReply:
    """The HTTP answer the provider expects to a notification (it retries until ``ok``)."""

    status: int
    media_type: str
    body: bytes


class ForgedNotification(OnecardError):
    """A notification whose signature (or merchant) does not verify: refused, never credited."""

    code = ErrorCode.AUTH_FAILED


class ProviderUnavailable(OnecardError):
    code = ErrorCode.UNAVAILABLE


class PaymentProvider(Protocol):
    """A payment provider adapter (WeChat Pay / Alipay style). Every method that talks to the
    provider may raise :class:`ProviderUnavailable`."""

    #: Short name: ``sandbox``, ``wechat``, ``alipay`` (the clearing account and the notify URL
    #: are named after it).
    name: str

    async def create_order(
        self, *, out_trade_no: str, amount: int, description: str, expires_at: datetime
    ) -> ProviderOrder: ...

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> TradeStatus:
        """Verify the signature and read the notification; :class:`ForgedNotification` if the
        signature, the merchant or the format is wrong."""
        ...

    def notify_reply(self, ok: bool) -> NotifyReply: ...

    async def query_order(self, out_trade_no: str) -> TradeStatus: ...

    async def close_order(self, out_trade_no: str) -> TradeStatus:
        """Close an unpaid order so it can no longer be paid; the order's final state (``PAID``
        if the holder paid first)."""
        ...


def clearing_account(provider: str) -> str:
    """The external clearing account of a provider: money comes in from there."""
    return external(f"app-{provider}")


# --- rules and views ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopupRules:
    """TOP-1 limits of the app channel (``[payments]`` in the TOML, gateway/config.py)."""

    min_amount: int = 100  # 1 yuan
    max_amount: int = 50_000  # 500 yuan per top-up
    max_daily: int = 100_000  # 1,000 yuan per holder per campus day
    order_ttl: timedelta = timedelta(minutes=30)
    #: A pending order older than this is queried by the sweep (the callback may never come).
    query_after: timedelta = timedelta(minutes=1)

    def __post_init__(self) -> None:
        if not 0 < self.min_amount <= self.max_amount <= min(self.max_daily, MAX_AMOUNT):
            msg = "need 0 < min_amount <= max_amount <= max_daily"
            raise ValueError(msg)


class OrderState(StrEnum):
    PENDING = "pending"
    PAID = "paid"  # credited
    EXPIRED = "expired"
    FAILED = "failed"  # the provider refused or could not be reached at creation


STATE_NAMES: dict[str, tuple[str, str]] = {
    OrderState.PENDING: ("待支付", "waiting for payment"),
    OrderState.PAID: ("已到账", "credited"),
    OrderState.EXPIRED: ("已过期", "expired"),
    OrderState.FAILED: ("下单失败", "could not be created"),
}


@dataclass(frozen=True, slots=True)
class TopupOrder:
    out_trade_no: str
    amount: int
    state: OrderState
    created_at: datetime
    expires_at: datetime
    pay_url: str | None = None  # only right after creation
    paid_at: datetime | None = None
    credited_at: datetime | None = None
    late: bool = False
    balance: int | None = None  # the purse after the credit, when known

    @property
    def state_zh(self) -> str:
        return STATE_NAMES[self.state][0]

    @property
    def state_en(self) -> str:
        return STATE_NAMES[self.state][1]


@dataclass(frozen=True, slots=True)
class NotifyOutcome:
    """What a notification did: ``credited`` once per trade; ``reply`` goes back over HTTP."""

    accepted: bool
    credited: bool
    code: str  # credited, duplicate, not_paid, forged, amount_mismatch, unknown_order, ...
    reply: NotifyReply
    out_trade_no: str | None = None

    @property
    def status(self) -> int:
        return self.reply.status

    @property
    def media_type(self) -> str:
        return self.reply.media_type

    @property
    def body(self) -> bytes:
        return self.reply.body


@dataclass
class SweepResult:
    credited: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the provider could not be asked


def _order(row: Row, **extra: Any) -> TopupOrder:
    return TopupOrder(
        out_trade_no=str(row["out_trade_no"]),
        amount=int(row["amount"]),
        state=OrderState(str(row["state"])),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        paid_at=row["paid_at"],
        credited_at=row["credited_at"],
        late=bool(row["late"]),
        **extra,
    )


def new_out_trade_no(now: datetime) -> str:
    """``OC`` + campus date + 16 random hex digits: unique, not guessable, no personal data."""
    return f"OC{local(now):%Y%m%d}{secrets.token_hex(8)}"


def _campus_day(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), CAMPUS_TZ)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


# --- the service -------------------------------------------------------------------------------


class PaymentService:
    """Online top-up orders of one provider (see the module docstring)."""

    def __init__(
        self, ctx: Context, provider: PaymentProvider, rules: TopupRules | None = None
    ) -> None:
        self.ctx = ctx
        self.provider = provider
        self.rules = rules or TopupRules()

    @property
    def _system(self) -> str:
        return f"provider:{self.provider.name}"

    @staticmethod
    def _holder_of(actor: Actor) -> int:
        if actor.holder_id is None:
            raise AccessDenied(
                "网上充值须由持卡人本人登录办理",
                "online top-up is for the logged-in holder",
                code=ErrorCode.PERMISSION_DENIED,
                rule="TOP-1",
            )
        return actor.holder_id

    async def _audit(self, tx: Tx, actor: str, action: str, order: str, **after: object) -> None:
        await tx.audit(
            self.ctx.clock.now(),
            actor,
            action,
            "payment_order",
            order,
            after={"channel": CHANNEL, "provider": self.provider.name, **after},
        )

    async def _audit_alone(self, actor: str, action: str, order: str, **after: object) -> None:
        async with self.ctx.registry.transaction() as tx:
            await self._audit(tx, actor, action, order, **after)

    # --- the holder -------------------------------------------------------------------------
    async def create_topup(self, actor: Actor, amount: int) -> TopupOrder:
        """TOP-1: a new order of ``amount`` fen for the holder's purse; the holder then confirms
        at ``pay_url`` (the provider's page). Limits: per top-up and per campus day."""
        holder_id = self._holder_of(actor)
        check_amount(amount)
        rules = self.rules
        if not rules.min_amount <= amount <= rules.max_amount:
            raise RuleViolation(
                f"单笔充值金额须在 {yuan(rules.min_amount)} 至 {yuan(rules.max_amount)} 元之间",
                f"one top-up must be {yuan(rules.min_amount)}..{yuan(rules.max_amount)} yuan",
                code=ErrorCode.INVALID_AMOUNT,
                rule="TOP-1",
            )
        now = self.ctx.clock.now()
        start, end = _campus_day(local(now).date())
        out_trade_no = new_out_trade_no(now)
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            require_active_holder(holder)
            card = live_card(await tx.cards_of_holder(holder_id))
            today = sum(
                int(r["amount"])
                for r in await tx.find("payment_orders", holder_id=holder_id)
                if start <= r["created_at"] < end
                and r["state"] in (OrderState.PENDING, OrderState.PAID)
            )
            if today + amount > rules.max_daily:
                raise RuleViolation(
                    f"今日网上充值已达 {yuan(today)} 元，每日限额 {yuan(rules.max_daily)} 元",
                    f"online top-ups today: {yuan(today)} yuan; the daily limit is"
                    f" {yuan(rules.max_daily)} yuan",
                    code=ErrorCode.INVALID_AMOUNT,
                    rule="TOP-1",
                )
            await tx.insert(
                "payment_orders",
                {
                    "out_trade_no": out_trade_no,
                    "provider": self.provider.name,
                    "holder_id": holder_id,
                    "card_id": card.id if card else None,
                    "amount": amount,
                    "state": OrderState.PENDING.value,
                    "channel": CHANNEL,
                    "created_at": now,
                    "expires_at": now + rules.order_ttl,
                    "updated_at": now,
                },
            )
            await self._audit(tx, actor.name, "topup.order_created", out_trade_no, amount=amount)
        # the order exists before the provider hears of it: no notification can be unknown
        try:
            made = await self.provider.create_order(
                out_trade_no=out_trade_no,
                amount=amount,
                description="校园卡充值 / campus card top-up",
                expires_at=now + rules.order_ttl,
            )
        except OnecardError as exc:
            async with self.ctx.registry.transaction() as tx:
                order = await self._row(tx, out_trade_no)
                await tx.update_where(
                    "payment_orders",
                    order["id"],
                    {"state": OrderState.FAILED.value, "updated_at": now},
                    state=OrderState.PENDING.value,
                )
                await self._audit(
                    tx, actor.name, "topup.provider_failed", out_trade_no, error=exc.code.value
                )
            log.warning("top-up order %s: provider failed (%s)", out_trade_no, exc.code.value)
            raise ProviderUnavailable(
                "支付平台暂不可用，请稍后再试", "the payment provider is unavailable: try later"
            ) from exc
        async with self.ctx.registry.read() as tx:
            return _order(await self._row(tx, out_trade_no), pay_url=made.pay_url)

    async def order_status(self, actor: Actor, out_trade_no: str) -> TopupOrder:
        """The holder's order; a pending one is first asked of the provider (the callback may
        be late or never come), so the return page shows the truth."""
        holder_id = self._holder_of(actor)
        async with self.ctx.registry.read() as tx:
            row = await self._row(tx, out_trade_no)
        if int(row["holder_id"]) != holder_id:
            raise NotFound("无此充值订单", "no such top-up order")  # never tell it exists
        if row["state"] == OrderState.PENDING:
            await self.resolve(out_trade_no)
        async with self.ctx.registry.read() as tx:
            row = await self._row(tx, out_trade_no)
            balance = await tx.balance(purse(holder_id))
        return _order(row, balance=balance)

    async def orders_of(self, actor: Actor, *, limit: int = 20) -> list[TopupOrder]:
        """The holder's most recent online top-up orders, newest first."""
        holder_id = self._holder_of(actor)
        async with self.ctx.registry.read() as tx:
            rows = await tx.find("payment_orders", holder_id=holder_id, order_by="id")
        return [_order(r) for r in reversed(rows[-limit:])]

    # --- the provider -----------------------------------------------------------------------
    async def handle_notification(
        self, body: bytes, headers: Mapping[str, str] | None = None, *, audit_forged: bool = True
    ) -> NotifyOutcome:
        """The provider's callback (``POST /pay/notify/<provider>``): verified, then applied
        once. Never raises for what a caller sends: the outcome says what happened.
        ``audit_forged=False``: a forged one is only logged (the caller's flood limit)."""
        try:
            status = self.provider.parse_notification(body, headers or {})
        except ForgedNotification as exc:
            if audit_forged:
                await self._audit_alone(self._system, "topup.forged", "-", reason=exc.message_en)
            log.warning("payment notification refused: %s", exc.message_en)
            return NotifyOutcome(False, False, "forged", self.provider.notify_reply(False))
        code = await self._apply(status, via="notify")
        accepted = code in {"credited", "duplicate", "not_paid"}
        return NotifyOutcome(
            accepted,
            code == "credited",
            code,
            self.provider.notify_reply(accepted),
            status.out_trade_no,
        )

    async def resolve(self, out_trade_no: str) -> str:
        """Ask the provider about one order and act: credit it if paid; expire (after closing it
        at the provider) if unpaid past its time. Returns what happened (see :meth:`_apply`,
        plus ``expired`` and ``pending``)."""
        async with self.ctx.registry.read() as tx:
            row = await self._row(tx, out_trade_no)
        if row["state"] != OrderState.PENDING:
            return str(row["state"])
        status = await self.provider.query_order(out_trade_no)
        if status.state is TradeState.PAID:
            return await self._apply(status, via="query")
        now = self.ctx.clock.now()
        if now < row["expires_at"]:
            return "pending"
        final = await self.provider.close_order(out_trade_no)
        if final.state is TradeState.PAID:  # paid in the instant before the close
            return await self._apply(final, via="close")
        async with self.ctx.registry.transaction() as tx:
            if await tx.update_where(
                "payment_orders",
                row["id"],
                {"state": OrderState.EXPIRED.value, "updated_at": now},
                state=OrderState.PENDING.value,
            ):
                await self._audit(tx, self._system, "topup.expired", out_trade_no)
                return "expired"
        return "duplicate"

    async def sweep(self) -> SweepResult:
        """Resolve pending orders that are past their time or whose callback is overdue (run by
        the web process every few seconds, or the scheduler)."""
        now = self.ctx.clock.now()
        async with self.ctx.registry.read() as tx:
            rows = await tx.find(
                "payment_orders", state=OrderState.PENDING.value, provider=self.provider.name
            )
        result = SweepResult()
        for row in rows:
            if row["expires_at"] > now and row["created_at"] > now - self.rules.query_after:
                continue
            number = str(row["out_trade_no"])
            try:
                outcome = await self.resolve(number)
            except OnecardError as exc:  # the provider is down or answers nonsense: next round
                log.warning("top-up order %s: not resolved (%s)", number, exc.code.value)
                result.failed.append(number)
                continue
            if outcome == "credited":
                result.credited.append(number)
            elif outcome == "expired":
                result.expired.append(number)
            elif outcome == "pending":
                result.pending.append(number)
        return result

    async def _row(self, tx: Tx, out_trade_no: str) -> Row:
        rows = await tx.find(
            "payment_orders", out_trade_no=out_trade_no, provider=self.provider.name
        )
        if not rows:
            raise NotFound("无此充值订单", "no such top-up order")
        return rows[0]

    async def _apply(self, status: TradeStatus, *, via: str) -> str:
        """One verified trade status. Returns ``credited`` (this call credited the purse),
        ``duplicate`` (credited before), ``not_paid``, ``amount_mismatch``, ``unknown_order``,
        ``trade_mismatch`` (the order was credited by another trade of the provider)."""
        number = status.out_trade_no
        try:
            async with self.ctx.registry.transaction() as tx:
                return await self._apply_in(tx, status, via=via)
        except NotFound:
            await self._audit_alone(self._system, "topup.unknown_order", number[:64], via=via)
            log.warning("payment %s for an unknown order", via)
            return "unknown_order"
        except Duplicate:  # the provider's trade id credited another order already
            await self._audit_alone(
                self._system, "topup.trade_mismatch", number, trade_no=status.trade_no, via=via
            )
            log.warning("top-up order %s: trade already credited to another order", number)
            return "trade_mismatch"

    async def _apply_in(self, tx: Tx, status: TradeStatus, *, via: str) -> str:
        number = status.out_trade_no
        row = await self._row(tx, number)
        if status.state is not TradeState.PAID:
            await self._audit(
                tx, self._system, "topup.notified", number, state=status.state, via=via
            )
            return "not_paid"
        if status.amount != int(row["amount"]) or not status.trade_no:
            await self._audit(
                tx,
                self._system,
                "topup.amount_mismatch",
                number,
                ordered=int(row["amount"]),
                paid=status.amount,
                trade_no=status.trade_no,
                via=via,
            )
            log.error(
                "top-up order %s: provider reports %s fen, ordered %s",
                number,
                status.amount,
                row["amount"],
            )
            return "amount_mismatch"
        if row["credited_at"] is not None:
            if row["provider_trade_no"] != status.trade_no:
                await self._audit(
                    tx,
                    self._system,
                    "topup.trade_mismatch",
                    number,
                    trade_no=status.trade_no,
                    credited_trade_no=row["provider_trade_no"],
                    via=via,
                )
                return "trade_mismatch"
            await self._audit(tx, self._system, "topup.duplicate", number, via=via)
            return "duplicate"
        now = self.ctx.clock.now()
        paid_at = status.paid_at or now
        late = row["state"] == OrderState.EXPIRED or paid_at > row["expires_at"]
        claimed = await tx.update_where(
            "payment_orders",
            row["id"],
            {
                "state": OrderState.PAID.value,
                "provider_trade_no": status.trade_no,
                "paid_at": paid_at,
                "credited_at": now,
                "late": late,
                "updated_at": now,
            },
            credited_at=None,
        )
        if not claimed:  # another callback won the race and committed first
            await self._audit(tx, self._system, "topup.duplicate", number, via=via)
            return "duplicate"
        holder_id = int(row["holder_id"])
        spec = topup(holder_id, int(row["amount"]), clearing_account(self.provider.name))
        spec = TransferSpec(spec.kind, spec.source, spec.dest, spec.amount, memo=number)
        transfer_id = await tx.post(
            spec,
            at=now,
            actor=self._system,
            card_id=row["card_id"],
            request_id=number,
            holder_id=holder_id,
        )
        await tx.update("payment_orders", row["id"], {"transfer_id": transfer_id})
        balance = await tx.balance(purse(holder_id))
        await record_topup(
            tx,
            holder_id=holder_id,
            amount=int(row["amount"]),
            channel=CHANNEL,
            at=now,
            balance=balance,
            card_id=row["card_id"],
        )
        await self._audit(
            tx,
            self._system,
            "topup.credited",
            number,
            amount=int(row["amount"]),
            trade_no=status.trade_no,
            transfer_id=transfer_id,
            late=late,
            via=via,
        )
        log.info("top-up order %s credited (%s%s)", number, via, ", late" if late else "")
        return "credited"


# --- reconciliation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One trade of the provider's daily statement."""

    out_trade_no: str
    trade_no: str
    amount: int  # fen
    state: str  # SUCCESS for a paid trade
    at: datetime | None = None


#: The statement CSV's columns (the sandbox writes it; a real provider's bill is converted by its
#: adapter): trade time (campus), merchant, out_trade_no, trade_no, state, amount in yuan.
STATEMENT_HEADERS = [
    "交易时间/trade_time",
    "商户号/mch_id",
    "商户订单号/out_trade_no",
    "支付平台交易号/trade_no",
    "交易状态/state",
    "金额(元)/amount_yuan",
]


def parse_statement(text: str) -> list[StatementLine]:
    """The provider's statement CSV (header row first; WeChat-style leading backticks and a
    trailing summary after an empty line are tolerated). Bad lines raise ``InvalidInput``."""
    lines: list[StatementLine] = []
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or len(header) < len(STATEMENT_HEADERS):
        raise InvalidInput("对账单格式无效", "not a statement file: header row missing")
    for number, raw in enumerate(reader, start=2):
        cells = [c.strip().lstrip("`") for c in raw]
        if not any(cells):
            break  # the summary block follows
        if len(cells) < len(STATEMENT_HEADERS):
            raise InvalidInput(f"对账单第 {number} 行列数不足", f"statement line {number}: columns")
        when, _mch, out_trade_no, trade_no, state, amount = cells[:6]
        try:
            fen = parse_yuan(amount)
            at = datetime.fromisoformat(when).replace(tzinfo=CAMPUS_TZ) if when else None
        except ValueError as exc:
            raise InvalidInput(
                f"对账单第 {number} 行无效", f"statement line {number}: {exc}"
            ) from None
        lines.append(StatementLine(out_trade_no, trade_no, fen, state.upper(), at))
    return lines


RECONCILE_HEADERS = [
    "差异 / difference",
    "商户订单号 / out_trade_no",
    "支付平台交易号 / trade_no",
    "我方金额（元） / ours (yuan)",
    "对方金额（元） / theirs (yuan)",
    "我方状态 / our state",
    "支付时间 / paid at",
    "入账时间 / credited at",
]
MISSING_OURS = "我方未入账 / missing on our side"
MISSING_THEIRS = "对方无此交易 / missing on the provider's side"
AMOUNT_MISMATCH = "金额不符 / amount mismatch"
TRADE_MISMATCH = "交易号不符 / trade id mismatch"


async def reconcile(
    ctx: Context, actor: Actor, day: date, statement: list[StatementLine], *, provider: str
) -> Table:
    """The daily top-up reconciliation (``onecard report topup-reconcile``): our credits of
    ``provider`` paid on the campus ``day`` against the provider's statement of that day. Lists
    every difference — a trade the provider has and we did not credit, a credit the provider
    does not list, an amount or trade id that differs — then one totals row."""
    actor.require(Permission.REPORTS)
    start, end = _campus_day(day)
    paid = [line for line in statement if line.state == "SUCCESS"]
    async with ctx.registry.read() as tx:
        ours = {
            str(r["out_trade_no"]): r
            for r in await tx.find("payment_orders", provider=provider)
            if r["credited_at"] is not None and start <= (r["paid_at"] or r["credited_at"]) < end
        }
        theirs = {line.out_trade_no: line for line in paid}
        # a trade near midnight may be on the other side's day: look those up by number
        extra = [n for n in theirs if n not in ours]
        others = {
            str(r["out_trade_no"]): r
            for r in await tx.find_in("payment_orders", "out_trade_no", extra, provider=provider)
        }
    rows: list[list[object]] = []
    matched = 0
    for number, line in sorted(theirs.items()):
        row = ours.get(number) or others.get(number)
        if row is None or row["credited_at"] is None:
            state = "无此订单 / no such order" if row is None else str(row["state"])
            rows.append(_diff(MISSING_OURS, number, line, row, state))
        elif int(row["amount"]) != line.amount:
            rows.append(_diff(AMOUNT_MISMATCH, number, line, row, str(row["state"])))
        elif row["provider_trade_no"] != line.trade_no:
            rows.append(_diff(TRADE_MISMATCH, number, line, row, str(row["state"])))
        else:
            matched += 1
    for number, row in sorted(ours.items()):
        if number not in theirs:
            rows.append(_diff(MISSING_THEIRS, number, None, row, str(row["state"])))
    ours_total = sum(int(r["amount"]) for r in ours.values())
    theirs_total = sum(line.amount for line in paid)
    total: list[object] = [
        TOTAL,
        f"相符 {matched} 笔 / {matched} matched",
        f"差异 {len(rows)} 笔 / {len(rows)} differences",
        yuan(ours_total),
        yuan(theirs_total),
        None,
        None,
        None,
    ]
    return Table(
        f"网上充值对账（{day.isoformat()}，{provider}）",
        f"online top-up reconciliation ({day.isoformat()}, {provider})",
        RECONCILE_HEADERS,
        [*rows, total],
    )


def _diff(
    kind: str, number: str, line: StatementLine | None, row: Row | None, state: str
) -> list[object]:
    credited = row["credited_at"] if row is not None else None
    paid_at = line.at if line is not None else (row["paid_at"] if row is not None else None)
    return [
        kind,
        number,
        line.trade_no if line is not None else (row["provider_trade_no"] if row else None),
        yuan(int(row["amount"])) if row is not None and credited is not None else None,
        yuan(line.amount) if line is not None else None,
        state,
        fmt_local(paid_at) if paid_at is not None else None,
        fmt_local(credited) if credited is not None else None,
    ]
