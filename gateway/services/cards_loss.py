"""Loss reports, unlocking and replacement (LOSS-1..4, REP-1..5)."""

from __future__ import annotations

from gateway.services.base import Actor
from gateway.services.cards_base import CardProcedures, CardResult
from gateway.services.common import (
    apply_event,
    collect_fee,
    live_card,
    require_active_holder,
    verify_identity,
)
from protocol.cards.lifecycle import CardEvent
from protocol.cards.policy import require_complete
from protocol.errors import ErrorCode, OnecardError, RuleViolation
from protocol.types import CardKind, HolderKind, Permission
from storage.records import Card, Holder


class LossProcedures(CardProcedures):
    # --- loss and unlock (LOSS) -------------------------------------------------------------
    async def report_loss(
        self, actor: Actor, serial: str, *, presented_id: str | None = None
    ) -> Card:
        """LOSS-1/2: at the counter the operator verifies identity; kiosk/web actors are the
        holder (authenticated by number + password) and may report only their own card."""
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            self._check_holder_or_counter(actor, holder, presented_id, "LOSS-1")
            return await apply_event(tx, card, CardEvent.REPORT_LOSS, now=now, actor=actor)

    async def report_loss_of_holder(self, actor: Actor, holder_id: int) -> Card:
        """LOSS-1 self-service: the holder's card in use, whatever its serial."""
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            self._check_holder_or_counter(actor, holder, None, "LOSS-1")
            card = live_card(await tx.cards_of_holder(holder.id))
            if card is None:
                raise OnecardError(
                    "没有在用的卡片", "no card in use", code=ErrorCode.NOT_FOUND, rule="LOSS-1"
                )
            return await apply_event(tx, card, CardEvent.REPORT_LOSS, now=now, actor=actor)

    def _check_holder_or_counter(
        self, actor: Actor, holder: Holder, presented_id: str | None, rule: str
    ) -> None:
        if actor.channel == "counter":
            actor.require(Permission.CARD_HANDLING)
            verify_identity(holder, presented_id, rule)
        elif actor.holder_id != holder.id:
            raise RuleViolation(
                "只能挂失本人的卡",
                "only the holder's own card",
                code=ErrorCode.PERMISSION_DENIED,
                rule=rule,
            )

    async def unlock(self, actor: Actor, serial: str, *, presented_id: str | None) -> Card:
        """LOSS-3: only at the counter, with a valid ID; LOSS-4: never after a replacement."""
        if actor.channel != "counter":
            raise RuleViolation(
                "解挂只能持本人有效证件到智能卡中心办理，不接受网站或自助终端解挂",
                "unlock only at the counter with a valid ID; never on the web or at a kiosk",
                code=ErrorCode.PERMISSION_DENIED,
                rule="LOSS-3",
            )
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            verify_identity(holder, presented_id, "LOSS-3")
            return await apply_event(tx, card, CardEvent.UNLOCK, now=now, actor=actor)

    # --- replacement (REP) ------------------------------------------------------------------
    async def replace(
        self,
        actor: Actor,
        lost_serial: str,
        *,
        presented_id: str | None,
        kind: CardKind | None = None,
        uid: str | None = None,
    ) -> CardResult:
        """REP-1..5: 48 h after the loss report, fee with receipt, complete data, new card
        (temp at once, smart after two working days); the balance stays with the holder."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            old = await tx.card_by_serial(lost_serial)
            holder = await tx.get_holder(old.holder_id)
            require_active_holder(holder)
            verify_identity(holder, presented_id, "REP-1")
            new_kind = kind or old.kind
            if new_kind is CardKind.SMART and holder.kind is HolderKind.TEMPORARY:
                raise RuleViolation(
                    "其他人员只办理临时卡", "other people get temp cards only", rule="ISS-8"
                )
            old = await apply_event(tx, old, CardEvent.REPLACE, now=now, actor=actor)
            require_complete(holder.data, "REP-3")
            receipt = await collect_fee(
                tx, self.ctx, holder, self.ctx.fees.replacement(new_kind), now=now, actor=actor
            )
            card = await self._successor(
                tx, holder, old, new_kind, now=now, actor=actor, rule="REP-4", uid=uid
            )
            return CardResult(card=card, receipts=[receipt] if receipt else [], old_card=old)
