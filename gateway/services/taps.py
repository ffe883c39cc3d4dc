"""What terminals ask of the card center: taps (purchase, void, meal, access, water) and the
kiosk's self-service (login, balance, loss report, password, top-up), per the terminal contract.

Every decision, the ledger rows it causes and the idempotency record commit in ONE transaction
(ARCHITECTURE.md §5): :meth:`TerminalService.handle` replays the stored reply for a retried
``request_id`` and refuses the same id with other content. The router publishes only after this
returns.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.services.alerts import (
    PRESENTED_STATES,
    AlertRules,
    crossed_low,
    low_balance_row,
    topup_row,
)
from gateway.services.base import Actor, Context
from gateway.services.cards import CardService
from gateway.services.common import apply_event, live_card
from gateway.services.holders import HolderService, check_holder_password, uses_default_password
from gateway.services.meal import MEAL_GROUP
from gateway.services.offline import (
    Bearer,
    SettlementRules,
    Verdict,
    amount_verdict,
    card_state_verdict,
    clock_verdict,
    daily_verdict,
    day_total,
    deny_entry,
    merchant_verdict,
    sale_time,
)
from gateway.services.passwords import hash_password, new_token, token_hash
from protocol.cards.clock import local
from protocol.cards.identity import mask_name
from protocol.cards.lifecycle import TAP_RULES, CardEvent, tap_refusal
from protocol.errors import ErrorCode, InsufficientFunds, OnecardError, RuleViolation
from protocol.ledger import (
    TransferKind,
    TransferSpec,
    external,
    hold,
    merchant,
    purchase,
    purse,
    reversal,
    subsidy_grant,
    topup,
)
from protocol.types import CardState
from protocol.wire import (
    AccessRequest,
    AccessResponse,
    BalanceRequest,
    BalanceResponse,
    ChangePasswordRequest,
    ChangePasswordResponse,
    Direction,
    HeartbeatRequest,
    HeartbeatResponse,
    HelloRequest,
    HelloResponse,
    LoginRequest,
    LoginResponse,
    MealPaidBy,
    MealRequest,
    MealResponse,
    OfflineRejection,
    OfflineSale,
    OfflineUploadRequest,
    OfflineUploadResponse,
    PurchaseRequest,
    PurchaseResponse,
    RecentTransaction,
    ReportLossRequest,
    ReportLossResponse,
    Request,
    SeqRange,
    TerminalConfig,
    TopupRequest,
    TopupResponse,
    TransactionKind,
    WaterHoldRequest,
    WaterHoldResponse,
    WaterReleaseRequest,
    WaterReleaseResponse,
    WaterSettleRequest,
    WaterSettleResponse,
    encode_error,
    encode_reply,
    fingerprint,
)
from protocol.wire.messages import VoidRequest, VoidResponse
from storage.ports import TapExecutor, TapTx, Tx
from storage.records import Holder, Row, TapCard

KIOSK_SESSION_TTL = timedelta(minutes=5)
_NOT_ISSUED = frozenset({CardState.PRINTING, CardState.READY})
#: Presence ops: not idempotency-recorded, never expired (they move nothing).
_PRESENCE_OPS = frozenset({"hello", "heartbeat"})
#: Ops whose handler may write before it refuses: their writes are undone on refusal.
_UNDO_OPS = frozenset({"water_hold"})


@dataclass(slots=True)  # built per request: not frozen (cheaper to build); never mutated
class Terminal:
    id: str
    kind: str
    merchant_id: str | None
    enabled: bool

    @property
    def actor(self) -> Actor:
        return Actor(name=f"terminal:{self.id}", channel="terminal")


@dataclass(slots=True)  # built per request: not frozen (cheaper to build); never mutated
class Outcome:
    """The reply to publish and what the router needs for metrics and propagation."""

    payload: bytes
    ok: bool
    code: str  # "approved" or the error code
    replayed: bool = False
    denylist_version: int | None = None  # a kiosk loss report: wait for terminals to apply it


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Refused(OnecardError):
    """A tap refusal (card state, funds) that is a normal, recorded decision."""


class PresentedRefused(Refused):
    """A lost or frozen card refused: the decision also tells the holder (a ``card_presented``
    alert, :meth:`TerminalService._alert_presented`)."""

    def __init__(self, card: TapCard, *, code: ErrorCode, rule: str | None) -> None:
        super().__init__(code=code, rule=rule)
        self.card = card


Handler = Callable[[TapTx, Terminal, Any, datetime], Any]


class TerminalService:
    def __init__(
        self,
        ctx: Context,
        config: TerminalConfig,
        executor: TapExecutor,
        deny_lookup: Callable[[str], ErrorCode | None] = lambda _uid: None,
        settlement: SettlementRules | None = None,
        alerts: AlertRules | None = None,
    ) -> None:
        self.ctx = ctx
        #: Low-balance threshold and the rate limit of "lost card presented" alerts.
        self.alerts = alerts or AlertRules()
        self.executor = executor
        #: The gateway's in-memory deny set: a card on it is refused even if the registry row was
        #: read a moment before the change (the registry is checked too, in the same job).
        self.deny_lookup = deny_lookup
        self.config = config
        #: How uploaded offline sales settle (contract §8.3): the limits of ``config`` plus the
        #: gateway's clock window.
        self.settlement = settlement or SettlementRules.from_config(config)
        self.cards = CardService(ctx)
        self.holders = HolderService(ctx)
        self._handlers: dict[str, Handler] = {
            "hello": self._hello,
            "heartbeat": self._heartbeat,
            "purchase": self._purchase,
            "void": self._void,
            "meal": self._meal,
            "access": self._access,
            "water_hold": self._water_hold,
            "water_settle": self._water_settle,
            "water_release": self._water_release,
            "offline_upload": self._offline_upload,
            "balance": self._balance,
            "topup": self._topup,
        }

    # --- the one entry point ---------------------------------------------------------------
    async def handle(
        self, terminal_id: str, op: str, request: Request[Any], deadline: float | None = None
    ) -> Outcome:
        """Decide ``request`` durably and idempotently; returns the reply to publish.

        Taps run as jobs of the batching writer (one transaction per batch, committed before
        this returns); the kiosk's login, loss report and password change (scrypt, lifecycle
        events) run on the registry's own transactions.
        """
        if op == "login":
            return await self._login(terminal_id, request)
        if op == "report_loss":
            return await self._report_loss(terminal_id, request)
        if op == "change_password":
            return await self._change_password(terminal_id, request)
        now = self.ctx.clock.now()
        key = fingerprint(op, request)
        return await self.executor.run(
            lambda tx: self._decide(tx, terminal_id, op, request, key, now, deadline)
        )

    async def handle_many(
        self,
        requests: list[tuple[str, str, Request[Any], float | None]],
        *,
        give_up: float | None = None,
    ) -> list[Outcome | BaseException]:
        """Many taps, one writer wake-up: each decided in its own savepoint, all committed
        together before this returns (group commit). The last item of each request is its
        deadline on ``time.monotonic()`` (from MQTT v5 Message Expiry), if it has one."""
        now = self.ctx.clock.now()
        jobs = [
            functools.partial(
                self._decide,
                terminal_id=tid,
                op=op,
                request=request,
                key=fingerprint(op, request),
                now=now,
                deadline=deadline,
            )
            for tid, op, request, deadline in requests
        ]
        # past ``give_up`` (time.monotonic()) the caller answers `unavailable`: none may commit
        # several gateways (PostgreSQL): each batch locks purses in card order (no deadlock)
        order = [str(getattr(request.data, "card", "")) for _, _, request, _ in requests]
        replies = [(tid, request.request_id) for tid, _, request, _ in requests]
        return await self.executor.run_many(jobs, deadline=give_up, order=order, replies=replies)

    def _decide(
        self,
        tx: TapTx,
        terminal_id: str,
        op: str,
        request: Request[Any],
        key: str,
        now: datetime,
        deadline: float | None = None,
    ) -> Outcome:
        stored = tx.idempotent(terminal_id, request.request_id)
        if stored is not None:  # a retry gets the first decision, however late it comes
            return _replayed(request.request_id, key, stored[0], stored[1])
        terminal = _checked_terminal(terminal_id, tx.terminal(terminal_id))
        late = None if op in _PRESENCE_OPS else self._late(request, deadline)
        if late is not None:
            # decided once and for all: a later retry of this id replays the same refusal
            outcome = Outcome(
                encode_error(request.request_id, late), ok=False, code=late.code.value
            )
            tx.record_reply(terminal_id, request.request_id, op, key, outcome.payload.decode(), now)
            return outcome
        try:
            if op in _UNDO_OPS:
                with tx.undo_on(Refused):
                    data = self._handlers[op](tx, terminal, request.data, now)
            else:
                data = self._handlers[op](tx, terminal, request.data, now)
        except Refused as exc:
            self._alert_presented(tx, terminal, exc, now)  # after any undo: the alert stays
            outcome = Outcome(encode_error(request.request_id, exc), ok=False, code=exc.code.value)
        else:
            outcome = Outcome(encode_reply(op, request.request_id, data), ok=True, code="approved")
        if op not in _PRESENCE_OPS:
            tx.record_reply(terminal_id, request.request_id, op, key, outcome.payload.decode(), now)
        return outcome

    def _late(self, request: Request[Any], deadline: float | None) -> OnecardError | None:
        """``expired`` past the request's deadline (MQTT Message Expiry or ``sent_ms`` +
        ``request_ttl_ms``), ``clock_skew`` for a ``sent_ms`` ahead of the gateway's clock."""
        if deadline is not None and time.monotonic() > deadline:
            return OnecardError(code=ErrorCode.EXPIRED)
        if request.sent_ms is None:
            return None
        now_ms = _ms(self.ctx.clock.now())
        if request.sent_ms > now_ms + self.config.clock_tolerance_ms:
            return OnecardError(
                "请求时间晚于网关时间，请先同步时钟",
                f"sent_ms is {request.sent_ms - now_ms} ms ahead of the gateway's clock"
                f" (tolerance {self.config.clock_tolerance_ms} ms): synchronise with hello",
                code=ErrorCode.CLOCK_SKEW,
            )
        if now_ms > request.sent_ms + self.config.request_ttl_ms:
            return OnecardError(
                "请求已过期，未执行",
                f"request sent {now_ms - request.sent_ms} ms ago, past request_ttl_ms"
                f" {self.config.request_ttl_ms}: nothing done",
                code=ErrorCode.EXPIRED,
            )
        return None

    async def _replay(self, tx: Tx, terminal_id: str, request_id: str, key: str) -> Outcome | None:
        row = await tx.idempotency_record(terminal_id, request_id)
        if row is None:
            return None
        return _replayed(request_id, key, str(row["fingerprint"]), str(row["reply"]))

    async def _terminal(self, tx: Tx, terminal_id: str) -> Terminal:
        row = await tx.terminal_record(terminal_id)
        found = None if row is None else (row["kind"], row["merchant_id"], bool(row["enabled"]))
        return _checked_terminal(terminal_id, found)

    # --- terminal presence ------------------------------------------------------------------
    def _hello(self, tx: TapTx, t: Terminal, data: HelloRequest, now: datetime) -> HelloResponse:
        if data.kind.value != t.kind:
            raise OnecardError(
                f"终端类型不符：登记为 {t.kind}",
                f"terminal registered as {t.kind}, not {data.kind}",
                code=ErrorCode.PERMISSION_DENIED,
            )
        current = self._deny_version(tx)
        tx.terminal_hello(
            t.id,
            firmware=data.firmware,
            # a terminal cannot claim a version that does not exist yet (issue 8, item 13)
            denylist_version=min(data.denylist_version, current),
            at=now,
        )
        return HelloResponse(server_time_ms=_ms(now), denylist_version=current, config=self.config)

    def _heartbeat(
        self, tx: TapTx, t: Terminal, data: HeartbeatRequest, now: datetime
    ) -> HeartbeatResponse:
        current = self._deny_version(tx)
        held = min(data.denylist_version, current)
        tx.terminal_heartbeat(t.id, denylist_version=held, at=now)
        return HeartbeatResponse(server_time_ms=_ms(now), denylist_version=current)

    def _deny_version(self, tx: TapTx) -> int:
        return tx.deny_version()

    # --- card checks ------------------------------------------------------------------------
    def _usable_card(self, tx: TapTx, uid: str, now: datetime) -> TapCard:
        """The registry decides: unknown, lost, frozen, expired (TERM-2 at once), ... refused;
        the in-memory deny set may refuse too (LOSS-2: refused everywhere at once)."""
        card = tx.tap_card(uid)
        if card is None:
            raise Refused(code=ErrorCode.CARD_UNKNOWN)
        if card.state in _NOT_ISSUED:
            refusal: ErrorCode | None = ErrorCode.CARD_NOT_ISSUED
        else:
            refusal = tap_refusal(card.state, card.valid_until, now) or self.deny_lookup(uid)
        if refusal is not None:
            if card.state in PRESENTED_STATES:
                raise PresentedRefused(card, code=refusal, rule=TAP_RULES.get(refusal))
            raise Refused(code=refusal, rule=TAP_RULES.get(refusal))
        if card.holder_status != "active":
            raise Refused(code=ErrorCode.CARD_TERMINATED, rule="TERM-6")
        return card

    def _alert_presented(self, tx: TapTx, t: Terminal, exc: Refused, now: datetime) -> None:
        """The holder's alert for a lost/frozen card refused here: one INSERT, at most one per
        card per terminal per window (gateway/services/alerts.py)."""
        if isinstance(exc, PresentedRefused):
            tx.card_alert(
                holder_id=exc.card.holder_id,
                card_id=exc.card.id,
                terminal_id=t.id,
                detail=exc.card.state.value,
                at=now,
                since=now - self.alerts.presented_window,
            )

    def _merchant(self, t: Terminal, given: str | None) -> str:
        """The terminal's registered merchant; a sale may name only that one. A terminal with
        none registered sells for its own account and may name no merchant (a stolen POS must
        not credit, or create, a merchant of its choosing)."""
        if given is not None and given != t.merchant_id:
            raise Refused(
                "商户号与终端登记不符",
                "merchant differs from the terminal's registration",
                code=ErrorCode.PERMISSION_DENIED,
            )
        return t.merchant_id or t.id

    def _debit(
        self, tx: TapTx, spec: TransferSpec, *, now: datetime, t: Terminal, card: TapCard
    ) -> tuple[int, int]:
        """``(transfer id, purse balance after)``; insufficient funds is a recorded refusal.
        A debit that takes the purse below the low-balance mark tells the holder (once)."""
        try:
            tid, balance = tx.post_returning(
                spec,
                at=now,
                actor=t.actor.name,
                card_id=card.id,
                terminal_id=t.id,
                holder_id=card.holder_id,
            )
        except OnecardError as exc:
            if exc.code is ErrorCode.INSUFFICIENT_FUNDS:
                raise Refused(exc.message_zh, exc.message_en, code=exc.code) from None
            raise
        if crossed_low(balance, spec.amount, self.alerts):
            tx.add_holder_alert(
                low_balance_row(
                    holder_id=card.holder_id,
                    balance=balance,
                    at=now,
                    card_id=card.id,
                    terminal_id=t.id,
                ),
            )
        return tid, balance

    # --- POS --------------------------------------------------------------------------------
    def _purchase(
        self, tx: TapTx, t: Terminal, data: PurchaseRequest, now: datetime
    ) -> PurchaseResponse:
        card = self._usable_card(tx, data.card, now)
        mid = self._merchant(t, data.merchant_id)
        tid, balance = self._debit(
            tx, purchase(card.holder_id, mid, data.amount_fen), now=now, t=t, card=card
        )
        return PurchaseResponse(balance_after_fen=balance, transfer_id=str(tid))

    def _void(self, tx: TapTx, t: Terminal, data: VoidRequest, now: datetime) -> VoidResponse:
        """Reverse this terminal's own LAST sale, named by its request id."""
        row = tx.idempotency_record(t.id, data.original_request_id)
        if row is None or row["op"] != "purchase" or b'"ok":true' not in str(row["reply"]).encode():
            raise Refused(
                "原交易不存在或未成功",
                "no approved sale with that request id",
                code=ErrorCode.NOT_FOUND,
            )
        transfer_id = int(json.loads(row["reply"])["data"]["transfer_id"])
        if tx.last_purchase_id(t.id) != transfer_id:
            raise Refused(
                "只能撤销本终端最后一笔交易",
                "only this terminal's last sale can be voided",
                code=ErrorCode.TRANSITION_NOT_ALLOWED,
            )
        if tx.referencing_total(transfer_id):
            raise Refused(
                "该交易已撤销或已纠错",
                "that sale was already voided or corrected",
                code=ErrorCode.DUPLICATE,
            )
        original = tx.get_transfer(transfer_id)
        spec = reversal(
            TransferSpec(TransferKind.PURCHASE, original.source, original.dest, original.amount),
            transfer_id,
        )
        holder_id = int(original.source.split(":", 1)[1])
        rid = tx.post(
            spec,
            at=now,
            actor=t.actor.name,
            card_id=original.card_id,
            terminal_id=t.id,
            holder_id=holder_id,
        )
        return VoidResponse(
            refunded_fen=original.amount,
            balance_after_fen=tx.balance(purse(holder_id)),
            transfer_id=str(rid),
        )

    def _meal(self, tx: TapTx, t: Terminal, data: MealRequest, now: datetime) -> MealResponse:
        """MEAL-1: a subsidised swipe while the month's count lasts, then the purse."""
        card = self._usable_card(tx, data.card, now)
        mid = self._merchant(t, None)
        month = local(now).strftime("%Y-%m")
        allowance = tx.meal_allowance(card.holder_id, month)
        if allowance is not None and card.type_group == MEAL_GROUP:
            left = allowance.left
            if left > 0:
                tid = tx.post(
                    subsidy_grant(mid, data.amount_fen),
                    at=now,
                    actor=t.actor.name,
                    card_id=card.id,
                    terminal_id=t.id,
                )
                tx.count_meal(card.holder_id, month)
                return MealResponse(
                    paid_by=MealPaidBy.SUBSIDY,
                    subsidy_left=left - 1,
                    balance_after_fen=tx.balance(purse(card.holder_id)),
                    transfer_id=str(tid),
                )
            subsidy_left: int | None = 0
        else:
            subsidy_left = None
        tid, _ = self._debit(
            tx, purchase(card.holder_id, mid, data.amount_fen, memo="meal"), now=now, t=t, card=card
        )
        return MealResponse(
            paid_by=MealPaidBy.PURSE,
            subsidy_left=subsidy_left,
            balance_after_fen=tx.balance(purse(card.holder_id)),
            transfer_id=str(tid),
        )

    # --- door ---------------------------------------------------------------------------------
    def _access(self, tx: TapTx, t: Terminal, data: AccessRequest, now: datetime) -> AccessResponse:
        try:
            self._usable_card(tx, data.card, now)
        except Refused as exc:
            self._alert_presented(tx, t, exc, now)
            return AccessResponse(allowed=False, reason=exc.code)
        return AccessResponse(allowed=True)

    # --- water (two-phase) ---------------------------------------------------------------------
    def _water_hold(
        self, tx: TapTx, t: Terminal, data: WaterHoldRequest, now: datetime
    ) -> WaterHoldResponse:
        card = self._usable_card(tx, data.card, now)
        hold_id = tx.open_water_hold(
            terminal_id=t.id,
            card_id=card.id,
            holder_id=card.holder_id,
            amount=data.amount_fen,
            at=now,
        )
        account = f"{hold(card.holder_id)}:w{hold_id}"
        self._debit(
            tx,
            TransferSpec(
                TransferKind.FREEZE,
                purse(card.holder_id),
                account,
                data.amount_fen,
                memo="water hold",
            ),
            now=now,
            t=t,
            card=card,
        )
        return WaterHoldResponse(
            hold_id=str(hold_id),
            held_fen=data.amount_fen,
            available_fen=tx.balance(purse(card.holder_id)),
        )

    def _open_hold(self, tx: TapTx, t: Terminal, hold_id: str) -> Row:
        # a hold id is a row id: ASCII digits within SQL's 64-bit integers (a 64-digit id from
        # the fuzzer used to overflow into `internal`)
        number = int(hold_id) if hold_id.isascii() and hold_id.isdigit() else None
        row = tx.water_hold(number) if number is not None and number < 2**63 else None
        if row is None or row["terminal_id"] != t.id:
            raise Refused("无此预授权", "no such hold at this terminal", code=ErrorCode.NOT_FOUND)
        if row["state"] != "held":
            raise Refused(
                "预授权已结算或释放",
                "the hold was settled or released already",
                code=ErrorCode.DUPLICATE,
            )
        return row

    def _water_settle(
        self, tx: TapTx, t: Terminal, data: WaterSettleRequest, now: datetime
    ) -> WaterSettleResponse:
        row = self._open_hold(tx, t, data.hold_id)
        if data.used_fen > int(row["amount"]):
            raise Refused(
                "用量超过预授权金额", "used more than held", code=ErrorCode.INVALID_AMOUNT
            )
        holder_id = int(row["holder_id"])
        account = f"{hold(holder_id)}:w{row['id']}"
        mid = self._merchant(t, None)
        transfer_id = 0
        if data.used_fen:
            transfer_id = tx.post(
                TransferSpec(
                    TransferKind.PURCHASE, account, merchant(mid), data.used_fen, memo="water"
                ),
                at=now,
                actor=t.actor.name,
                card_id=row["card_id"],
                terminal_id=t.id,
            )
        rest = int(row["amount"]) - data.used_fen
        if rest:
            tx.post(
                TransferSpec(
                    TransferKind.RELEASE, account, purse(holder_id), rest, memo="water hold rest"
                ),
                at=now,
                actor=t.actor.name,
                card_id=row["card_id"],
                terminal_id=t.id,
                holder_id=holder_id,
            )
        tx.close_water_hold(row["id"], state="settled", used=data.used_fen, at=now)
        return WaterSettleResponse(
            charged_fen=data.used_fen,
            released_fen=rest,
            balance_after_fen=tx.balance(purse(holder_id)),
            transfer_id=str(transfer_id) if transfer_id else None,
        )

    def _water_release(
        self, tx: TapTx, t: Terminal, data: WaterReleaseRequest, now: datetime
    ) -> WaterReleaseResponse:
        row = self._open_hold(tx, t, data.hold_id)
        holder_id = int(row["holder_id"])
        tx.post(
            TransferSpec(
                TransferKind.RELEASE,
                f"{hold(holder_id)}:w{row['id']}",
                purse(holder_id),
                int(row["amount"]),
                memo="water release",
            ),
            at=now,
            actor=t.actor.name,
            card_id=row["card_id"],
            terminal_id=t.id,
            holder_id=holder_id,
        )
        tx.close_water_hold(row["id"], state="released", used=0, at=now)
        return WaterReleaseResponse(
            released_fen=int(row["amount"]), balance_after_fen=tx.balance(purse(holder_id))
        )

    # --- store and forward ------------------------------------------------------------------
    def _offline_upload(
        self, tx: TapTx, t: Terminal, data: OfflineUploadRequest, now: datetime
    ) -> OfflineUploadResponse:
        """Exactly once per (terminal, seq); each sale settled by the rules of contract §8.3
        (:mod:`gateway.services.offline`): an accepted sale debits the purse, any other is
        recorded with its reason and who bears it and moves no money; gaps are reported."""
        accepted: list[int] = []
        duplicates: list[int] = []
        rejected: list[OfflineRejection] = []
        current = tx.deny_version()
        for sale in data.sales:
            if tx.offline_sale_seen(t.id, sale.seq):
                duplicates.append(sale.seq)
                continue
            verdict, transfer_id = self._settle_offline(tx, t, sale, now, current)
            tx.record_offline_sale(
                {
                    "terminal_id": t.id,
                    "seq": sale.seq,
                    "card_uid": sale.card,
                    "amount": sale.amount_fen,
                    "sold_at": sale_time(sale.at_ms),
                    "uploaded_at": now,
                    "result": verdict.result,
                    "transfer_id": transfer_id,
                    "at_ms": sale.at_ms,
                    "merchant_id": sale.merchant_id,
                    "denylist_version": sale.denylist_version,
                    "bearer": verdict.bearer.value,
                    "detail": verdict.detail,
                },
            )
            if verdict.code is None:
                accepted.append(sale.seq)
            else:
                rejected.append(OfflineRejection(seq=sale.seq, code=verdict.code))
        seqs = tx.offline_seqs(t.id)
        return OfflineUploadResponse(
            accepted=accepted, duplicates=duplicates, rejected=rejected, gaps=_gaps(seqs)
        )

    def _settle_offline(
        self, tx: TapTx, t: Terminal, sale: OfflineSale, now: datetime, current: int
    ) -> tuple[Verdict, int | None]:
        """One offline sale: the checks of :mod:`gateway.services.offline` in order, then the
        debit; ``(verdict, transfer id)``. Never raises for what a terminal sends."""
        rules = self.settlement
        refusal = merchant_verdict(sale.merchant_id, t.merchant_id) or clock_verdict(
            sale.at_ms, now, rules
        )
        sold_at = sale_time(sale.at_ms)
        if refusal is not None or sold_at is None:
            return refusal or Verdict(ErrorCode.CLOCK_SKEW, Bearer.MERCHANT), None
        card = tx.card_by_uid(sale.card)
        if card is None:
            return Verdict(ErrorCode.CARD_UNKNOWN, Bearer.MERCHANT), None
        if card.state in _NOT_ISSUED:
            return Verdict(ErrorCode.CARD_NOT_ISSUED, Bearer.MERCHANT), None
        refusal = amount_verdict(sale.amount_fen, rules)
        if refusal is not None:
            return refusal, None
        history = [deny_entry(r) for r in tx.deny_changes_of_card(card.id)]
        held = sale.denylist_version
        if held is not None and held > current:
            held = None  # a version that does not exist yet proves nothing
        outdated = tx.deny_change(held + 1) if held is not None else None
        verdict = card_state_verdict(
            history, sold_at, held, outdated["at"] if outdated else None, rules
        )
        if verdict.code is not None:
            return verdict, None
        same_card = tx.offline_sales_of_card(t.id, sale.card)
        refusal = daily_verdict(sale.amount_fen, day_total(same_card, sold_at), rules)
        if refusal is not None:
            return refusal, None
        spec = purchase(
            card.holder_id,
            self._merchant(t, sale.merchant_id),
            sale.amount_fen,
            memo=f"offline #{sale.seq}",
        )
        try:
            transfer_id = tx.post(
                spec,
                at=now,
                actor=t.actor.name,
                card_id=card.id,
                terminal_id=t.id,
                request_id=f"offline:{sale.seq}",
                holder_id=card.holder_id,
            )
        except InsufficientFunds as exc:
            detail = f"{exc.message_zh} / {exc.message_en}"
            return Verdict(exc.code, Bearer.CARD_CENTER, detail), None
        return verdict, transfer_id

    # --- kiosk --------------------------------------------------------------------------------
    async def _session(self, tx: Tx, t: Terminal, token: str, now: datetime) -> Holder:
        row = await tx.holder_session(token_hash(token))
        return await tx.get_holder(_session_holder(row, t, now))

    def _session_sync(self, tx: TapTx, t: Terminal, token: str, now: datetime) -> Holder:
        return tx.get_holder(_session_holder(tx.holder_session(token_hash(token)), t, now))

    async def _login(self, terminal_id: str, request: Request[Any]) -> Outcome:
        """LOSS-1: number + password (default: last 6 of the national ID), with lockout.
        Not idempotency-recorded: the reply carries a secret session token."""
        data: LoginRequest = request.data
        now = self.ctx.clock.now()
        async with self.ctx.registry.read() as tx:
            await self._terminal(tx, terminal_id)
        try:
            actor = await self.holders.authenticate(data.number, data.password, channel="kiosk")
        except OnecardError as exc:
            return Outcome(encode_error(request.request_id, exc), ok=False, code=exc.code.value)
        assert actor.holder_id is not None
        token, digest = new_token()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(actor.holder_id)
            await tx.put(
                "holder_sessions",
                {
                    "token_hash": digest,
                    "holder_id": holder.id,
                    "terminal_id": terminal_id,
                    "created_at": now,
                    "expires_at": now + KIOSK_SESSION_TTL,
                },
            )
        initial = uses_default_password(holder)
        reply = LoginResponse(
            session=token,
            session_expires_ms=_ms(now + KIOSK_SESSION_TTL),
            holder_name_masked=mask_name(holder.name),
            must_change_password=initial,
        )
        return Outcome(encode_reply("login", request.request_id, reply), ok=True, code="approved")

    def _balance(
        self, tx: TapTx, t: Terminal, data: BalanceRequest, now: datetime
    ) -> BalanceResponse:
        holder = self._session_sync(tx, t, data.session, now)
        account = purse(holder.id)
        recent = [
            RecentTransaction(
                at_ms=_ms(tr.at),
                kind=_kind(tr.kind),
                direction=Direction.CREDIT if tr.dest == account else Direction.DEBIT,
                amount_fen=tr.amount,
                place=tr.terminal_id,
            )
            for tr in tx.transfers_of(account, 20)
        ]
        return BalanceResponse(balance_fen=tx.balance(account), recent=recent)

    async def _report_loss(self, terminal_id: str, request: Request[Any]) -> Outcome:
        """LOSS-1/2 at a kiosk: the holder's own card is refused everywhere from this version."""
        data: ReportLossRequest = request.data
        op = "report_loss"
        key = fingerprint(op, request)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            stored = await self._replay(tx, terminal_id, request.request_id, key)
            if stored is not None:
                return stored
            t = await self._terminal(tx, terminal_id)
            version: int | None = None
            try:
                holder = await self._session(tx, t, data.session, now)
                actor = Actor(name=f"holder:{holder.id}", channel="kiosk", holder_id=holder.id)
                cards = await tx.cards_of_holder(holder.id)
                card = (
                    next((c for c in cards if c.serial == data.card_serial), None)
                    if data.card_serial
                    else live_card(cards)
                )
                if card is None:
                    raise Refused(  # noqa: TRY301
                        "没有可挂失的卡片",
                        "no card to report lost",
                        code=ErrorCode.NOT_FOUND,
                        rule="LOSS-1",
                    )
                try:
                    await apply_event(tx, card, CardEvent.REPORT_LOSS, now=now, actor=actor)
                except RuleViolation as exc:
                    raise Refused(
                        exc.message_zh, exc.message_en, code=exc.code, rule=exc.rule
                    ) from None
                rows = await tx.rows("SELECT max(version) AS v FROM deny_changes")
                version = int(rows[0]["v"] or 0)
                payload = encode_reply(
                    op,
                    request.request_id,
                    ReportLossResponse(denylist_version=version, terminals_applied=0),
                )
                outcome = Outcome(payload, ok=True, code="approved", denylist_version=version)
            except Refused as exc:
                outcome = Outcome(
                    encode_error(request.request_id, exc), ok=False, code=exc.code.value
                )
            await tx.put(
                "idempotency",
                {
                    "terminal_id": terminal_id,
                    "request_id": request.request_id,
                    "op": op,
                    "fingerprint": key,
                    "reply": outcome.payload.decode(),
                    "at": now,
                },
            )
            return outcome

    async def _change_password(self, terminal_id: str, request: Request[Any]) -> Outcome:
        """LOSS-1: the holder changes the self-service password. The scrypt work happens outside
        any transaction, so it never holds the registry's write lock."""
        data: ChangePasswordRequest = request.data
        op = "change_password"
        key = fingerprint(op, request)
        now = self.ctx.clock.now()
        async with self.ctx.registry.read() as tx:
            stored = await self._replay(tx, terminal_id, request.request_id, key)
            if stored is not None:
                return stored
            t = await self._terminal(tx, terminal_id)
            try:
                holder = await self._session(tx, t, data.session, now)
            except Refused as exc:
                return Outcome(encode_error(request.request_id, exc), ok=False, code=exc.code.value)
        new_hash = await asyncio.to_thread(_rehash, holder, data.old_password, data.new_password)
        if new_hash is not None:
            outcome = Outcome(
                encode_reply(op, request.request_id, ChangePasswordResponse()),
                ok=True,
                code="approved",
            )
        else:
            wrong = Refused(
                "原密码错误", "wrong current password", code=ErrorCode.AUTH_FAILED, rule="LOSS-1"
            )
            outcome = Outcome(
                encode_error(request.request_id, wrong), ok=False, code=wrong.code.value
            )
        async with self.ctx.registry.transaction() as tx:
            if new_hash is not None:
                await tx.update("holders", holder.id, {"password_hash": new_hash})
                await tx.audit(
                    now, f"holder:{holder.id}", "holder.password_changed", "holder", holder.id
                )
            await tx.put(
                "idempotency",
                {
                    "terminal_id": terminal_id,
                    "request_id": request.request_id,
                    "op": op,
                    "fingerprint": key,
                    "reply": outcome.payload.decode(),
                    "at": now,
                },
            )
        return outcome

    def _topup(self, tx: TapTx, t: Terminal, data: TopupRequest, now: datetime) -> TopupResponse:
        """TOP-1 at a kiosk: the holder's purse (by session or card) from the kiosk's channel."""
        card_id: int | None = None
        if data.session is not None:
            holder_id = self._session_sync(tx, t, data.session, now).id
        elif data.card is not None:
            card = self._usable_card(tx, data.card, now)
            holder_id, card_id = card.holder_id, card.id
        else:
            raise Refused(
                "须指定会话或卡片", "give a session or a card", code=ErrorCode.INVALID_INPUT
            )
        spec = topup(holder_id, data.amount_fen, external(f"kiosk-{t.id}"))
        spec = TransferSpec(spec.kind, spec.source, spec.dest, spec.amount, memo=data.payment_ref)
        tid = tx.post(
            spec, at=now, actor=t.actor.name, card_id=card_id, terminal_id=t.id, holder_id=holder_id
        )
        balance = tx.balance(purse(holder_id))
        tx.add_holder_alert(
            topup_row(
                holder_id=holder_id,
                amount=data.amount_fen,
                channel="kiosk",
                at=now,
                balance=balance,
                card_id=card_id,
                terminal_id=t.id,
            ),
        )
        return TopupResponse(balance_after_fen=balance, transfer_id=str(tid))


def _rehash(holder: Holder, old: str, new: str) -> str | None:
    """The new password's hash if ``old`` is right (scrypt: run in a thread)."""
    return hash_password(new) if check_holder_password(holder, old) else None


def _checked_terminal(terminal_id: str, found: tuple[str, str | None, bool] | None) -> Terminal:
    """Revocation is checked on every request (ARCHITECTURE.md §3)."""
    if found is None:
        raise OnecardError(code=ErrorCode.TERMINAL_UNKNOWN)
    kind, merchant_id, enabled = found
    if not enabled:
        raise OnecardError(code=ErrorCode.TERMINAL_DISABLED)
    return Terminal(terminal_id, kind, merchant_id, enabled)


def _session_holder(row: Row | None, t: Terminal, now: datetime) -> int:
    """The holder of a live kiosk session opened at this terminal (LOSS-1)."""
    if row is None or row["expires_at"] <= now or row["terminal_id"] != t.id:
        raise Refused("请重新登录", "session expired: log in again", code=ErrorCode.AUTH_FAILED)
    return int(row["holder_id"])


def _replayed(request_id: str, key: str, fingerprint_stored: str, reply: str) -> Outcome:
    """The stored reply for a retry, or ``idempotency_conflict`` for other content (§6)."""
    if fingerprint_stored != key:
        exc = OnecardError(code=ErrorCode.IDEMPOTENCY_CONFLICT)
        return Outcome(encode_error(request_id, exc), ok=False, code=exc.code.value)
    payload = reply.encode()
    ok = b'"ok":true' in payload
    code = "approved" if ok else str(json.loads(payload)["error"]["code"])
    return Outcome(payload, ok=ok, code=code, replayed=True)


def _kind(kind: str) -> TransactionKind:
    try:
        return TransactionKind(kind)
    except ValueError:
        return TransactionKind.OTHER


def _gaps(seqs: list[int]) -> list[SeqRange]:
    gaps: list[SeqRange] = []
    expected = 1
    for seq in seqs:
        if seq > expected:
            gaps.append(SeqRange(first=expected, last=seq - 1))
        expected = seq + 1
    return gaps
