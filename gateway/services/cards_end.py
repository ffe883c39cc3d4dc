"""Validity, refund, termination, graduation and scrapping (TERM-1..6, REF-1..4, SCR-1..2)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from gateway.services.base import Actor
from gateway.services.cards_base import CardProcedures, GraduationReport, RefundSlip
from gateway.services.common import (
    PENDING_STATES,
    apply_event,
    archive_and_deregister,
    collect_fee,
    live_card,
    record_hand_in,
    require_active_holder,
    verify_identity,
)
from gateway.services.massblock import GRADUATION, graduation_params, guard
from protocol.cards.clock import end_of_validity, local
from protocol.cards.fees import FeeItem, yuan
from protocol.cards.lifecycle import CardEvent, auto_termination_at
from protocol.cards.policy import require_refund_eligible, require_settled
from protocol.errors import ErrorCode, OnecardError, RuleViolation
from protocol.ledger import (
    TransferKind,
    TransferSpec,
    deposit,
    deposit_out,
    fee_income,
    hold,
    purse,
)
from protocol.types import CardKind, CardState, HolderKind, Permission
from storage.ports import Tx
from storage.records import Card, Holder


class EndProcedures(CardProcedures):
    # --- validity (TERM-2/3) -----------------------------------------------------------------
    async def extend(self, actor: Actor, serial: str, *, valid_through: date) -> Card:
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            new_until = end_of_validity(valid_through)
            card = await apply_event(
                tx, card, CardEvent.EXTEND, now=now, actor=actor, new_valid_until=new_until
            )
            await tx.update("holders", card.holder_id, {"valid_until": new_until})
            return card

    async def run_due(self, actor: Actor) -> list[Card]:
        """The scheduler's pass: expire temp cards whose validity ended (TERM-2) and terminate
        those expired more than 3 months ago (TERM-3). Returns the cards changed.

        Candidates come from an indexed range query in a read transaction; the write
        transaction (which holds the registry's write lock) opens only when something is due.
        """
        now = self.ctx.clock.now()
        temp = CardKind.TEMP.value
        async with self.ctx.registry.read() as tx:
            expiring = await tx.cards_valid_until_before(
                temp, [CardState.ACTIVE.value, CardState.SUSPENDED.value], now
            )
            # 3 calendar months are at least 89 days: narrow by date, decide exactly below
            ending = await tx.cards_valid_until_before(
                temp, [CardState.EXPIRED.value], now - timedelta(days=89)
            )
        ending = [
            c for c in ending if (due := auto_termination_at(c.facts)) is not None and due <= now
        ]
        if not expiring and not ending:
            return []
        changed: list[Card] = []
        async with self.ctx.registry.transaction() as tx:
            for event, cards in ((CardEvent.EXPIRE, expiring), (CardEvent.AUTO_TERMINATE, ending)):
                for candidate in cards:
                    card = await tx.get_card(candidate.id)  # re-read under the write lock
                    if card.state is not candidate.state:
                        continue
                    changed.append(await apply_event(tx, card, event, now=now, actor=actor))
        return changed

    # --- refund (REF) ------------------------------------------------------------------------
    async def refund(
        self,
        actor: Actor,
        serial: str,
        *,
        card_ok: bool,
        presented_id: str | None,
        receipt_no: int | None = None,
    ) -> RefundSlip:
        """REF-1..4: temp cards of other people; balance settled first; the card and the
        original deposit receipt (``receipt_no``) come back; if the card passes the check the
        deposit is refunded (a damaged card forfeits it); the holder's data is archived and the
        holder deregistered."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            verify_identity(holder, presented_id, "REF-3")
            require_refund_eligible(holder.kind)
            if card.kind is not CardKind.TEMP:
                raise RuleViolation(
                    "只有临时卡可以退卡", "only temp cards are refunded", rule="REF-1"
                )
            require_settled(await tx.balance(purse(holder.id)), "REF-2")
            await _check_deposit_receipt(tx, holder, receipt_no)
            card = await apply_event(
                tx,
                card,
                CardEvent.REFUND,
                now=now,
                actor=actor,
                detail="card ok" if card_ok else "card damaged",
            )
            held = await tx.balance(deposit(holder.id))
            slip_no, refunded = 0, 0
            if held > 0 and card_ok:
                slip_no = await tx.post(
                    deposit_out(holder.id, held),
                    at=now,
                    actor=actor.name,
                    card_id=card.id,
                    holder_id=holder.id,
                )
                refunded = held
            elif held > 0:
                await tx.post(
                    TransferSpec(
                        TransferKind.FEE,
                        deposit(holder.id),
                        fee_income(),
                        held,
                        memo="deposit forfeited: damaged card",
                    ),
                    at=now,
                    actor=actor.name,
                    card_id=card.id,
                    holder_id=holder.id,
                )
            if not [
                c
                for c in await tx.cards_of_holder(holder.id)
                if c.state in PENDING_STATES or c.state in {CardState.ACTIVE, CardState.LOST}
            ]:
                await archive_and_deregister(tx, holder, reason="refund", now=now, actor=actor)
            return RefundSlip(
                card=card,
                slip_no=slip_no,
                amount=refunded,
                holder_name=holder.name,
                deposit_receipt_no=receipt_no,
            )

    # --- termination (TERM) -------------------------------------------------------------------
    async def terminate(
        self, actor: Actor, serial: str, *, reason: str, presented_id: str | None
    ) -> Card:
        """TERM-1/4/6: the card comes back, card function ends everywhere, the holder's data is
        archived and the holder deregistered. The balance is settled first; a lost card goes
        through replacement first."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            require_active_holder(holder)
            verify_identity(holder, presented_id, "TERM-1")
            if card.state is CardState.LOST:
                raise RuleViolation(
                    "挂失的卡须先办理补卡，再退回卡片",
                    "a lost card goes through replacement first, then comes back",
                    code=ErrorCode.TRANSITION_NOT_ALLOWED,
                    rule="TERM-4",
                )
            require_settled(
                await tx.balance(purse(holder.id)) + await tx.balance(hold(holder.id)), "TERM-4"
            )
            card = await apply_event(
                tx,
                card,
                CardEvent.TERMINATE,
                now=now,
                actor=actor,
                detail=reason,
                card_returned=True,  # TERM-1: the holder hands the card back
            )
            await self._end_holder(tx, holder, reason=reason, now=now, actor=actor)
            return card

    async def _end_holder(
        self, tx: Tx, holder: Holder, *, reason: str, now: datetime, actor: Actor
    ) -> None:
        for other in await tx.cards_of_holder(holder.id):
            if other.state in PENDING_STATES or other.state in {
                CardState.ACTIVE,
                CardState.SUSPENDED,
                CardState.EXPIRED,
                CardState.FROZEN,
            }:
                await apply_event(
                    tx, other, CardEvent.TERMINATE, now=now, actor=actor, detail=reason
                )
        held = await tx.balance(deposit(holder.id))
        if held > 0:
            await tx.post(
                deposit_out(holder.id, held), at=now, actor=actor.name, holder_id=holder.id
            )
        await archive_and_deregister(tx, holder, reason=reason, now=now, actor=actor)

    async def graduate_class(
        self,
        actor: Actor,
        *,
        college: str,
        class_name: str,
        returned_serials: list[str],
        missing_paid: list[str],
        approval: str | None = None,
    ) -> GraduationReport:
        """TERM-5: per class: balances settled, the monitor returns the cards, a missing card costs
        the fee; the center checks roster, returned count and receipts, then issues a clearance
        certificate per student. Students who cannot be cleared are listed with the reason.

        More cards than the mass-block threshold need ``approval``, the id of another operator's
        request for the same class and lists (:mod:`gateway.services.massblock`)."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        report = GraduationReport(college=college, class_name=class_name)
        returned = set(returned_serials)
        paid = set(missing_paid)
        params = graduation_params(college, class_name, returned_serials, missing_paid)
        async with (
            self.ctx.registry.transaction() as tx,
            guard(tx, self.ctx, actor, action=GRADUATION, params=params, approval=approval),
        ):
            students = [
                h
                for h in await tx.holders_where(
                    college=college, class_name=class_name, kind=HolderKind.STUDENT.value
                )
                if h.status == "active"
            ]
            if not students:
                raise OnecardError(
                    f"{college} {class_name} 无在册学生",
                    f"no active students in {college} {class_name}",
                    code=ErrorCode.NOT_FOUND,
                    rule="TERM-5",
                )
            roster_serials: set[str] = set()
            for student in students:
                number = student.number or str(student.id)
                cards = await tx.cards_of_holder(student.id)
                roster_serials.update(c.serial for c in cards)
                card = live_card(cards)
                balance = await tx.balance(purse(student.id)) + await tx.balance(hold(student.id))
                if balance:
                    report.blocked.append(
                        (
                            number,
                            f"余额未结清 {yuan(balance)} 元 / balance not settled"
                            f" ({yuan(balance)} yuan)",
                        )
                    )
                    continue
                receipt_no: int | None = None
                if card is not None and card.serial in returned:
                    report.returned += 1
                    card_back = True
                elif number in paid or (card is not None and card.serial in paid):
                    receipt = await collect_fee(
                        tx, self.ctx, student, FeeItem.MISSING_CARD, now=now, actor=actor
                    )
                    if receipt:
                        report.receipts.append(receipt)
                        receipt_no = receipt.receipt_no
                    report.missing_paid += 1
                    card_back = False
                else:
                    report.blocked.append(
                        (number, "未交卡也未缴纳工本费 / card neither returned nor paid for")
                    )
                    continue
                if card is not None:
                    await apply_event(
                        tx,
                        card,
                        CardEvent.TERMINATE,
                        now=now,
                        actor=actor,
                        rule="TERM-5",
                        detail="graduation",
                        card_returned=card_back,
                    )
                await self._end_holder(tx, student, reason="graduation", now=now, actor=actor)
                certificate = f"GC{local(now):%Y}-{student.id:06d}"
                await tx.insert(
                    "clearances",
                    {
                        "holder_id": student.id,
                        "college": college,
                        "class_name": class_name,
                        "certificate_no": certificate,
                        "card_returned": card_back,
                        "receipt_no": receipt_no,
                        "at": now,
                        "actor": actor.name,
                    },
                )
                report.cleared.append((number, certificate))
            stray = returned - roster_serials
            if stray:
                raise RuleViolation(
                    f"交回的卡不属于本班：{', '.join(sorted(stray))}",
                    f"returned cards not on this class's roster: {', '.join(sorted(stray))}",
                    code=ErrorCode.INVALID_INPUT,
                    rule="TERM-5",
                )
        return report

    # --- scrapping (SCR) ----------------------------------------------------------------------
    async def scrap(self, actor: Actor, serial: str) -> Card:
        """SCR-1/2: cards the center has back, recovered by refund, termination or data-change
        exchange (and temp cards handed in, ISS-4; lost cards found and handed in), enter the
        scrap register one to one; a card still out (lost, or ended while the holder keeps it)
        is refused. Faulty cards go back to the vendor under warranty instead (EXC-6)."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            reason = card.state.value
            card = await apply_event(tx, card, CardEvent.SCRAP, now=now, actor=actor)
            await tx.insert(
                "scrap_register",
                {
                    "card_id": card.id,
                    "serial": card.serial,
                    "card_kind": card.kind.value,
                    "reason": reason,
                    "at": now,
                    "actor": actor.name,
                },
            )
            return card

    async def hand_in(self, actor: Actor, serial: str) -> Card:
        """SCR-1: a card still out after its procedure is brought to the counter (a lost card
        found after the replacement, an auto-terminated temp card, an exchanged card): the center
        has it now, and it may go to the scrap register."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            return await record_hand_in(tx, card, now=now, actor=actor, rule="SCR-1")

    async def dispose(self, actor: Actor, year: int) -> int:
        """SCR-2: the yearly disposal of everything on the scrap register not yet disposed."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            if await tx.find("disposals", year=year):
                raise RuleViolation(
                    f"{year} 年已处置",
                    f"the {year} disposal was done already",
                    code=ErrorCode.DUPLICATE,
                    rule="SCR-2",
                )
            previous = await tx.find("disposals", order_by="id")
            after_id = max((int(d["last_scrap_id"]) for d in previous), default=0)
            rows = [
                r for r in await tx.find("scrap_register", order_by="id") if int(r["id"]) > after_id
            ]
            if not rows:
                raise RuleViolation(
                    "报废登记表中没有待处置的卡",
                    "nothing on the scrap register to dispose of",
                    code=ErrorCode.NOT_FOUND,
                    rule="SCR-2",
                )
            await tx.insert(
                "disposals",
                {
                    "year": year,
                    "at": now,
                    "actor": actor.name,
                    "first_scrap_id": rows[0]["id"],
                    "last_scrap_id": rows[-1]["id"],
                    "count": len(rows),
                },
            )
            await tx.audit(
                now, actor.name, "scrap.dispose", "disposal", year, None, {"count": len(rows)}
            )
            return len(rows)


async def _check_deposit_receipt(tx: Tx, holder: Holder, receipt_no: int | None) -> None:
    """REF-3 "检查收费原始凭证": the receipt shown is the holder's deposit receipt (ISS-10)."""
    deposits = {
        int(r["receipt_no"])
        for r in await tx.find("receipts", holder_id=holder.id)
        if str(r["item"]).endswith(f"/ {FeeItem.DEPOSIT.value}")
    }
    if not deposits:
        return  # no deposit was taken (a waived deposit): nothing to show
    if receipt_no is None:
        raise RuleViolation(
            "退卡须交回押金收费票据（原始凭证），请输入票据号",
            "a refund needs the original deposit receipt: give its number",
            code=ErrorCode.INVALID_INPUT,
            rule="REF-3",
        )
    if receipt_no not in deposits:
        raise RuleViolation(
            f"票据号 {receipt_no} 不是该持卡人的押金收费票据",
            f"receipt No. {receipt_no} is not this holder's deposit receipt",
            code=ErrorCode.INVALID_INPUT,
            rule="REF-3",
        )
