"""What the card procedures share: their results, the service's context and the successor card
(REP-4 / EXC-5); the procedure families are in cards_issue, cards_loss, cards_exchange and
cards_end, joined in :class:`gateway.services.cards.CardService`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from gateway.services.base import Actor, Context
from gateway.services.common import new_card
from protocol.cards.clock import SMART_CARD_WORKING_DAYS, add_working_days, local
from protocol.carduid import canonical_card_uid
from protocol.errors import ErrorCode, OnecardError
from protocol.types import CardKind, CardState
from storage.ports import Tx
from storage.records import Card, Holder, Receipt


@dataclass(frozen=True, slots=True)
class CardResult:
    card: Card
    receipts: list[Receipt] = field(default_factory=list)
    old_card: Card | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class RefundSlip:
    """REF-3: the deposit refund slip handed to finance."""

    card: Card
    slip_no: int  # the deposit_out transfer id
    amount: int
    holder_name: str
    deposit_receipt_no: int | None = None  # REF-3: the original receipt, to finance with the slip


@dataclass
class GraduationReport:
    college: str
    class_name: str
    cleared: list[tuple[str, str]] = field(default_factory=list)  # (number, certificate)
    blocked: list[tuple[str, str]] = field(default_factory=list)  # (number, reason)
    receipts: list[Receipt] = field(default_factory=list)
    returned: int = 0
    missing_paid: int = 0


class CardProcedures:
    """The base of every procedure family: the context and the helpers they share."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- helpers ---------------------------------------------------------------------------
    def _smart_ready_on(self, now: datetime) -> date:
        """REP-4 / EXC-5: a smart card is handed over after two working days."""
        return add_working_days(local(now).date(), SMART_CARD_WORKING_DAYS, self.ctx.holidays)

    async def _holder_by_ref(self, tx: Tx, ref: str | int) -> Holder:
        if isinstance(ref, int):
            return await tx.get_holder(ref)
        holders = [h for h in await tx.holders_by_number(ref) if h.status == "active"]
        if len(holders) != 1:
            if not holders:
                raise OnecardError(
                    f"无此学号/工号 {ref}", f"no holder with number {ref}", code=ErrorCode.NOT_FOUND
                )
            raise OnecardError(
                f"工号 {ref} 对应多人，请用持卡人编号",
                f"number {ref} is ambiguous: use the holder id",
                code=ErrorCode.INVALID_INPUT,
            )
        return holders[0]

    async def holder(self, ref: str | int) -> Holder:
        async with self.ctx.registry.read() as tx:
            return await self._holder_by_ref(tx, ref)

    async def _successor(
        self,
        tx: Tx,
        holder: Holder,
        old: Card,
        kind: CardKind,
        *,
        now: datetime,
        actor: Actor,
        rule: str,
        uid: str | None,
    ) -> Card:
        if kind is CardKind.TEMP:
            return await new_card(
                tx,
                holder,
                kind,
                CardState.ACTIVE,
                now=now,
                actor=actor,
                rule=rule,
                valid_until=old.valid_until or holder.valid_until,
                uid=uid,
                replaces=old,
                type_group=old.type_group,
            )
        return await new_card(
            tx,
            holder,
            kind,
            CardState.READY,
            now=now,
            actor=actor,
            rule=rule,
            valid_until=holder.valid_until,
            uid=uid,
            replaces=old,
            ready_on=self._smart_ready_on(now),
            type_group=old.type_group,
        )


def _names_card(typed: str, card: Card) -> bool:
    """Whether what the clerk typed (serial, or UID in any case/with separators) is ``card``."""
    value = typed.strip()
    return value == card.serial or (card.uid is not None and canonical_card_uid(value) == card.uid)
