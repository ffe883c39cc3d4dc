"""Exchange of faulty cards and of cards whose holder data changed (EXC-1..6)."""

from __future__ import annotations

from datetime import datetime

from gateway.services.base import Actor
from gateway.services.cards_base import CardProcedures, CardResult
from gateway.services.common import apply_event, collect_fee, require_active_holder, verify_identity
from protocol.cards.fees import FeeItem
from protocol.cards.lifecycle import CardEvent, ExchangeReason
from protocol.cards.policy import require_complete
from protocol.errors import ErrorCode, InvalidInput, RuleViolation
from protocol.ledger import freeze, hold, purse, release
from protocol.types import CardKind, HolderKind, Permission
from storage.ports import Tx
from storage.records import Card, Holder, Receipt


class ExchangeProcedures(CardProcedures):
    # --- exchange (EXC) ---------------------------------------------------------------------
    async def report_fault(
        self,
        actor: Actor,
        serial: str,
        *,
        presented_id: str | None,
        finding: str,
        holder_damaged: bool = False,
        repairable: bool = False,
    ) -> Card:
        """EXC-3: the clerk checks the card and records the finding; only a fault the holder did
        not cause and that cannot be repaired is accepted: its balance is frozen for 48 hours.
        A repairable card is repaired; a card the holder damaged goes the paid route (loss
        report, then replacement with the fee, REP-1/2). The inspection is recorded (audited)
        whatever the outcome."""
        actor.require(Permission.CARD_HANDLING)
        if not finding.strip():
            raise RuleViolation(
                "须登记卡片检查结果（故障现象、是否人为损坏、能否修复）",
                "record the finding of the card check (the fault, whether the holder damaged it, "
                "whether it can be repaired)",
                code=ErrorCode.INVALID_INPUT,
                rule="EXC-3",
            )
        now = self.ctx.clock.now()
        refusal: RuleViolation | None = None
        if repairable:
            refusal = RuleViolation(
                "卡片故障可以修复：修复后交还持卡人，不办理换卡",
                "the fault can be repaired: repair the card and give it back; no exchange",
                code=ErrorCode.NOT_ELIGIBLE,
                rule="EXC-3",
            )
        elif holder_damaged:
            refusal = RuleViolation(
                "人为损坏的卡不按故障换卡办理：请按补卡流程挂失，满48小时后缴纳补卡费补卡",
                "a card damaged by the holder is not a faulty-card exchange: it goes the paid "
                "route: report it lost, then replace it after 48 hours with the fee (REP-1/2)",
                code=ErrorCode.NOT_ELIGIBLE,
                rule="EXC-3",
            )
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            verify_identity(holder, presented_id, "EXC-3")
            await tx.audit(
                now,
                actor.name,
                "card.fault_inspection",
                "card",
                card.id,
                None,
                {
                    "finding": finding.strip(),
                    "holder_damaged": holder_damaged,
                    "repairable": repairable,
                    "accepted": refusal is None,
                },
            )
            if refusal is None:
                card = await apply_event(
                    tx,
                    card,
                    CardEvent.REPORT_FAULT,
                    now=now,
                    actor=actor,
                    detail=f"finding: {finding.strip()}"[:500],
                )
                balance = await tx.balance(purse(holder.id))
                if balance > 0:
                    await tx.post(
                        freeze(holder.id, balance),
                        at=now,
                        actor=actor.name,
                        card_id=card.id,
                        holder_id=holder.id,
                    )
        if refusal is not None:
            raise refusal  # after the commit: the inspection stays recorded
        return card

    async def complete_faulty_exchange(
        self,
        actor: Actor,
        serial: str,
        *,
        kind: CardKind | None = None,
        uid: str | None = None,
        old_card_returned: bool = False,
    ) -> CardResult:
        """EXC-3/5: after the 48 h freeze the exchange is done and the frozen balance moves to
        the new card. The faulty card comes back to the center (for the vendor, EXC-6): at once
        for a new temp card, else now (``old_card_returned``) or when the smart card is
        collected."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            old = await tx.card_by_serial(serial)
            holder = await tx.get_holder(old.holder_id)
            require_active_holder(holder)
            new_kind = kind or old.kind
            old = await apply_event(
                tx,
                old,
                CardEvent.EXCHANGE,
                now=now,
                actor=actor,
                card_returned=new_kind is CardKind.TEMP or old_card_returned,
            )
            require_complete(holder.data, "EXC-5")
            receipts = await self._exchange_fee(tx, holder, now, actor)
            held = await tx.balance(hold(holder.id))
            if held > 0:
                await tx.post(
                    release(holder.id, held),
                    at=now,
                    actor=actor.name,
                    card_id=old.id,
                    holder_id=holder.id,
                )
            card = await self._successor(
                tx, holder, old, new_kind, now=now, actor=actor, rule="EXC-5", uid=uid
            )
            return CardResult(card=card, receipts=receipts, old_card=old)

    async def _exchange_fee(
        self, tx: Tx, holder: Holder, now: datetime, actor: Actor
    ) -> list[Receipt]:
        """EXC-2 and the Chinese text's step (6): a student pays the exchange fee."""
        if holder.kind is not HolderKind.STUDENT:
            return []
        receipt = await collect_fee(tx, self.ctx, holder, FeeItem.EXCHANGE, now=now, actor=actor)
        return [receipt] if receipt else []

    async def exchange_for_changed_data(
        self,
        actor: Actor,
        serial: str,
        *,
        presented_id: str | None,
        document_ref: str,
        changes: dict[str, str],
        kind: CardKind | None = None,
        uid: str | None = None,
        old_card_returned: bool = False,
    ) -> CardResult:
        """EXC-4: the operator checks the official documents, updates the holder record and
        exchanges at once; EXC-5: the old card is handed back first (at once for a new temp
        card; for a smart card now, ``old_card_returned``, or when the new card is collected)."""
        actor.require(Permission.CARD_HANDLING)
        allowed = {"name", "college", "class_name", "department", "photo_ref", "number"}
        if not document_ref.strip():
            raise RuleViolation(
                "须核对人事处、组织部或教务处的变更文件",
                "the official change document is required",
                code=ErrorCode.INVALID_INPUT,
                rule="EXC-4",
            )
        unknown = set(changes) - allowed
        if unknown or not changes:
            raise InvalidInput(
                f"可变更的信息：{', '.join(sorted(allowed))}",
                f"changes must be some of: {', '.join(sorted(allowed))}",
                rule="EXC-4",
            )
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            old = await tx.card_by_serial(serial)
            holder = await tx.get_holder(old.holder_id)
            require_active_holder(holder)
            verify_identity(holder, presented_id, "EXC-4")
            before = {k: getattr(holder, k) for k in changes}
            await tx.update("holders", holder.id, changes)
            await tx.audit(
                now,
                actor.name,
                "holder.update",
                "holder",
                holder.id,
                before,
                {**changes, "document": document_ref},
            )
            holder = await tx.get_holder(holder.id)
            new_kind = kind or old.kind
            old = await apply_event(
                tx,
                old,
                CardEvent.EXCHANGE,
                now=now,
                actor=actor,
                exchange_reason=ExchangeReason.DATA_CHANGE,
                card_returned=new_kind is CardKind.TEMP or old_card_returned,
            )
            require_complete(holder.data, "EXC-4")
            receipts = await self._exchange_fee(tx, holder, now, actor)
            card = await self._successor(
                tx, holder, old, new_kind, now=now, actor=actor, rule="EXC-4", uid=uid
            )
            return CardResult(card=card, receipts=receipts, old_card=old)
