"""Top-up, its same-day reversal at the counter, consumption correction and cash-out (TOP-1,
TOP-2, REF-2, TERM-4). Each result names whose purse it was (name masked) and the amount."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.services.alerts import record_topup, topup_row
from gateway.services.base import Actor, Context
from gateway.services.common import require_active_holder
from gateway.services.search import HolderBrief, owner_brief
from protocol.cards.clock import local
from protocol.cards.lifecycle import topup_refusal
from protocol.errors import (
    Duplicate,
    ErrorCode,
    InsufficientFunds,
    InvalidInput,
    OnecardError,
    RuleViolation,
)
from protocol.ledger import (
    AccountKind,
    TransferKind,
    account_kind,
    cash,
    cash_out,
    correction,
    purse,
    reversal,
    topup,
)
from protocol.ledger.postings import TransferSpec
from protocol.types import Permission
from storage.records import Card, Holder, Transfer


@dataclass(frozen=True, slots=True)
class MoneyResult:
    transfer_id: int
    balance: int
    #: the fen this movement moved (a cash-out: the cash to pay out)
    amount: int = 0
    #: whose purse it was
    holder: HolderBrief | None = None


#: the longest reason kept with a reversal or correction
MAX_REASON = 200


class MoneyService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def topup(
        self, actor: Actor, serial: str, amount: int, *, point: str = "counter"
    ) -> MoneyResult:
        """TOP-1: a cash point tops up the holder's purse (the balance follows the holder)."""
        actor.require(Permission.TOPUP_CENTER)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            require_active_holder(holder)
            refusal = topup_refusal(card.facts)  # LOSS-4: a replaced card is void, and its kin
            if refusal is not None:
                raise refusal
            tid = await tx.post(
                topup(holder.id, amount, cash(point)),
                at=now,
                actor=actor.name,
                card_id=card.id,
                holder_id=holder.id,
            )
            balance = await tx.balance(purse(holder.id))
            await record_topup(
                tx,
                holder_id=holder.id,
                amount=amount,
                channel="counter" if point == "counter" else "cash_point",
                at=now,
                balance=balance,
                card_id=card.id,
            )
            return MoneyResult(tid, balance, amount, owner_brief(holder))

    async def owner(self, actor: Actor, serial: str) -> tuple[Card, HolderBrief, int]:
        """Whose card ``serial`` is, and the purse balance: what the counter shows before a
        movement it asks the clerk to confirm."""
        if not {Permission.TOPUP_CENTER, Permission.REPORTS} & actor.permissions:
            actor.require(Permission.TOPUP_CENTER)
        async with self.ctx.registry.read() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            return card, owner_brief(holder), await tx.balance(purse(holder.id))

    async def reverse_topup(self, actor: Actor, transfer_id: int, *, reason: str) -> MoneyResult:
        """A cash top-up made in error (wrong card, wrong amount) is reversed at the counter on
        the same campus day, with a reason: its own recorded movement (kind ``reversal``,
        referring to the top-up; the ledger is append-only), audited. Online top-ups are
        refunded through their provider, not here; what the holder already spent stays spent."""
        actor.require(Permission.TOPUP_CENTER)
        why = reason.strip()
        if not why:
            raise InvalidInput("须写明撤销原因", "give the reason for the reversal", rule="TOP-1")
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            original = await tx.get_transfer(transfer_id)
            if original.kind != TransferKind.TOPUP.value or account_kind(original.source) not in (
                AccountKind.CASH,
            ):
                raise RuleViolation(
                    f"交易 {transfer_id} 不是柜台或现金充值点的充值，不能在柜台撤销",
                    f"transfer {transfer_id} is not a cash top-up: it cannot be reversed at the"
                    " counter",
                    code=ErrorCode.INVALID_INPUT,
                    rule="TOP-1",
                )
            if local(original.at).date() != local(now).date():
                raise RuleViolation(
                    f"只能撤销当天的充值（该笔充值于 {local(original.at):%Y-%m-%d %H:%M}）",
                    f"only a top-up of today can be reversed (this one was made"
                    f" {local(original.at):%Y-%m-%d %H:%M})",
                    code=ErrorCode.TOO_LATE,
                    rule="TOP-1",
                )
            if await tx.referencing_total(transfer_id) > 0:
                raise Duplicate(
                    f"交易 {transfer_id} 已撤销", f"transfer {transfer_id} was reversed already"
                )
            holder_id = int(original.dest.split(":", 1)[1])
            holder = await tx.get_holder(holder_id)
            spec = reversal(
                TransferSpec(TransferKind.TOPUP, original.source, original.dest, original.amount),
                transfer_id,
            )
            spec = TransferSpec(
                spec.kind, spec.source, spec.dest, spec.amount, ref=spec.ref, memo=why[:MAX_REASON]
            )
            try:
                tid = await tx.post(
                    spec, at=now, actor=actor.name, card_id=original.card_id, holder_id=holder_id
                )
            except InsufficientFunds:
                raise InsufficientFunds(
                    "余额已少于该笔充值（已消费），不能撤销",
                    "the balance is below the top-up (some was spent): it cannot be reversed",
                    rule="TOP-1",
                ) from None
            await tx.audit(
                now,
                actor.name,
                "money.topup_reversed",
                "transfer",
                transfer_id,
                {"amount": original.amount, "at": original.at.isoformat()},
                {"reversal_transfer_id": tid, "reason": why[:MAX_REASON]},
            )
            balance = await tx.balance(purse(holder_id))
            return MoneyResult(tid, balance, original.amount, owner_brief(holder))

    async def topup_batch(
        self, actor: Actor, amounts: list[tuple[str, int]], *, point: str = "counter"
    ) -> int:
        """TOP-1 for many cards in one transaction (a cash point's batch, the demo's seeding)."""
        actor.require(Permission.TOPUP_CENTER)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            serials = [serial for serial, _ in amounts]
            cards = {r["serial"]: r for r in await tx.find_in("cards", "serial", serials)}
            missing = [x for x in serials if x not in cards]
            if missing:
                raise OnecardError(
                    f"无此卡号 {missing[0]}", f"no card {missing[0]}", code=ErrorCode.CARD_UNKNOWN
                )
            for serial in serials:
                refusal = topup_refusal(Card.from_row(cards[serial]).facts)
                if refusal is not None:
                    raise refusal
            specs = [
                topup(int(cards[serial]["holder_id"]), amount, cash(point))
                for serial, amount in amounts
            ]
            await tx.post_many(
                specs, at=now, actor=actor.name, card_ids=[int(cards[x]["id"]) for x in serials]
            )
            await tx.insert_many(
                "holder_alerts",
                [
                    topup_row(
                        holder_id=int(cards[serial]["holder_id"]),
                        amount=amount,
                        channel="counter" if point == "counter" else "cash_point",
                        at=now,
                        card_id=int(cards[serial]["id"]),
                    )
                    for serial, amount in amounts
                ],
            )
        return len(amounts)

    async def correct(
        self, actor: Actor, transfer_id: int, amount: int, *, reason: str
    ) -> MoneyResult:
        """TOP-2: the logistics department gives back an over-deduction at its POS; the
        correction refers to the original sale and never exceeds it."""
        actor.require(Permission.CONSUMPTION_CORRECTION)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            original = await tx.get_transfer(transfer_id)
            spec = TransferSpec(
                TransferKind(original.kind), original.source, original.dest, original.amount
            )
            if spec.kind is not TransferKind.PURCHASE:
                raise RuleViolation(
                    "只能对消费交易纠错",
                    "only a purchase can be corrected",
                    code=ErrorCode.INVALID_INPUT,
                    rule="TOP-2",
                )
            merchant = await tx.get("merchants", original.dest.split(":", 1)[1])
            if merchant is not None and merchant["operator_dept"] != "后勤管理处":
                raise RuleViolation(
                    "只纠正后勤管理处管辖POS的多扣款",
                    "only POS run by the logistics department are corrected here",
                    code=ErrorCode.NOT_ELIGIBLE,
                    rule="TOP-2",
                )
            already = await tx.referencing_total(transfer_id)
            fix = correction(spec, transfer_id, amount, already)
            fix = TransferSpec(
                fix.kind, fix.source, fix.dest, fix.amount, ref=fix.ref, memo=reason[:200]
            )
            holder_id = int(original.source.split(":", 1)[1])
            tid = await tx.post(
                fix, at=now, actor=actor.name, card_id=original.card_id, holder_id=holder_id
            )
            holder = await tx.get_holder(holder_id)
            balance = await tx.balance(purse(holder_id))
            return MoneyResult(tid, balance, amount, owner_brief(holder))

    async def cash_out(self, actor: Actor, serial: str, *, point: str = "counter") -> MoneyResult:
        """REF-2 / TERM-4: the holder settles (cashes out) the whole balance at a cash point."""
        actor.require(Permission.TOPUP_CENTER)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            balance = await tx.balance(purse(holder.id))
            if balance == 0:
                raise RuleViolation(
                    "余额为零，无需结清",
                    "the balance is zero already",
                    code=ErrorCode.INVALID_AMOUNT,
                    rule="REF-2",
                )
            tid = await tx.post(
                cash_out(holder.id, balance, point),
                at=now,
                actor=actor.name,
                card_id=card.id,
                holder_id=holder.id,
            )
            return MoneyResult(tid, 0, balance, owner_brief(holder))

    async def statement(
        self, actor: Actor, holder: Holder, limit: int = 20
    ) -> tuple[int, list[Transfer]]:
        """Balance and recent transfers of a holder's purse."""
        if actor.holder_id != holder.id:
            actor.require(Permission.REPORTS)
        async with self.ctx.registry.read() as tx:
            account = purse(holder.id)
            return await tx.balance(account), await tx.transfers_of(account, limit)
