"""Top-up, consumption correction and cash-out (TOP-1, TOP-2, REF-2, TERM-4)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.services.alerts import record_topup, topup_row
from gateway.services.base import Actor, Context
from gateway.services.common import require_active_holder
from protocol.cards.lifecycle import topup_refusal
from protocol.errors import ErrorCode, OnecardError, RuleViolation
from protocol.ledger import (
    TransferKind,
    cash,
    cash_out,
    correction,
    purse,
    topup,
)
from protocol.ledger.postings import TransferSpec
from protocol.types import Permission
from storage.records import Card, Holder, Transfer


@dataclass(frozen=True, slots=True)
class MoneyResult:
    transfer_id: int
    balance: int


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
            return MoneyResult(tid, balance)

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
            return MoneyResult(tid, await tx.balance(purse(holder_id)))

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
            return MoneyResult(tid, 0)

    async def statement(
        self, actor: Actor, holder: Holder, limit: int = 20
    ) -> tuple[int, list[Transfer]]:
        """Balance and recent transfers of a holder's purse."""
        if actor.holder_id != holder.id:
            actor.require(Permission.REPORTS)
        async with self.ctx.registry.read() as tx:
            account = purse(holder.id)
            return await tx.balance(account), await tx.transfers_of(account, limit)
