"""Staff meal subsidy (MEAL-1..4): HR quotas, enabling into group 1, disabling by suspension."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.services.base import Actor, Context
from gateway.services.common import apply_event, live_card
from protocol.cards.lifecycle import CardEvent
from protocol.errors import ErrorCode, InvalidInput, OnecardError, RuleViolation
from protocol.types import CardState, HolderKind, Permission
from storage.records import Card

#: MEAL-3: the card-type group that carries the meal subsidy ("1 电子工作证").
MEAL_GROUP = 1
DEFAULT_GROUP = 0


class QuotaRowLike(Protocol):
    @property
    def row_number(self) -> int: ...
    @property
    def staff_number(self) -> str | None: ...
    @property
    def meal_quota(self) -> int | None: ...


@dataclass
class QuotaReport:
    updated: int = 0
    unknown: list[tuple[int, str]] = field(default_factory=list)


class MealService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def import_quotas(
        self, actor: Actor, rows: Sequence[QuotaRowLike], *, source: str
    ) -> QuotaReport:
        """MEAL-1/2: HR's eligible list with the subsidised swipes per month, kept as a register.

        All rows or none: an unknown staff number refuses the whole list.
        """
        actor.require(Permission.MEAL_SUBSIDY)
        now = self.ctx.clock.now()
        report = QuotaReport()
        async with self.ctx.registry.transaction() as tx:
            for row in rows:
                staff = [
                    h
                    for h in await tx.holders_by_number(row.staff_number or "")
                    if h.kind is HolderKind.STAFF and h.status == "active"
                ]
                if not staff or row.meal_quota is None:
                    report.unknown.append((row.row_number, row.staff_number or ""))
                    continue
                holder = staff[0]
                existing = await tx.get("meal_quotas", holder.id)
                values = {"meals_per_month": row.meal_quota, "source": source, "updated_at": now}
                if existing is None:
                    await tx.insert(
                        "meal_quotas", {"holder_id": holder.id, "enabled": False, **values}
                    )
                else:
                    await tx.update("meal_quotas", holder.id, values)
                await tx.audit(now, actor.name, "meal.quota", "holder", holder.id, existing, values)
                report.updated += 1
            if report.unknown:
                rows_text = ", ".join(f"{r}:{n}" for r, n in report.unknown)
                raise OnecardError(
                    f"以下行的职工号不存在或次数为空：{rows_text}",
                    f"unknown staff numbers or empty quota in rows: {rows_text}",
                    code=ErrorCode.NOT_FOUND,
                    rule="MEAL-2",
                )
        return report

    async def enable(self, actor: Actor, staff_number: str) -> Card:
        """MEAL-3: the card moves into group 1 and the type is written back onto the card."""
        actor.require(Permission.MEAL_SUBSIDY)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holders = [
                h
                for h in await tx.holders_by_number(staff_number)
                if h.kind is HolderKind.STAFF and h.status == "active"
            ]
            if not holders:
                raise OnecardError(
                    f"无此职工号 {staff_number}",
                    f"no staff number {staff_number}",
                    code=ErrorCode.NOT_FOUND,
                    rule="MEAL-2",
                )
            holder = holders[0]
            quota = await tx.get("meal_quotas", holder.id)
            if quota is None:
                raise RuleViolation(
                    "不在人事处提供的补贴名单中",
                    "not on HR's meal-subsidy list",
                    code=ErrorCode.NOT_ELIGIBLE,
                    rule="MEAL-2",
                )
            card = live_card(await tx.cards_of_holder(holder.id))
            if card is None or card.state is not CardState.ACTIVE:
                raise RuleViolation(
                    "没有正常状态的卡片",
                    "no active card",
                    code=ErrorCode.TRANSITION_NOT_ALLOWED,
                    rule="MEAL-3",
                )
            await tx.update(
                "cards",
                card.id,
                {"type_group": MEAL_GROUP, "card_write_pending": True, "updated_at": now},
            )
            await tx.update("meal_quotas", holder.id, {"enabled": True, "updated_at": now})
            await tx.audit(
                now,
                actor.name,
                "meal.enable",
                "card",
                card.id,
                {"type_group": card.type_group},
                {"type_group": MEAL_GROUP},
            )
            return await tx.get_card(card.id)

    async def disable(self, actor: Actor, staff_number: str) -> Card:
        """MEAL-4 step 1: the card is suspended until the holder brings it in."""
        actor.require(Permission.MEAL_SUBSIDY)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holders = [
                h for h in await tx.holders_by_number(staff_number) if h.kind is HolderKind.STAFF
            ]
            if not holders:
                raise OnecardError(
                    f"无此职工号 {staff_number}",
                    f"no staff number {staff_number}",
                    code=ErrorCode.NOT_FOUND,
                    rule="MEAL-4",
                )
            card = live_card(await tx.cards_of_holder(holders[0].id))
            if card is None or card.type_group != MEAL_GROUP:
                raise RuleViolation(
                    "该卡不在补贴组",
                    "the card is not in the subsidy group",
                    code=ErrorCode.NOT_ELIGIBLE,
                    rule="MEAL-4",
                )
            await tx.update("meal_quotas", holders[0].id, {"enabled": False, "updated_at": now})
            return await apply_event(
                tx, card, CardEvent.SUSPEND, now=now, actor=actor, detail="meal subsidy disabled"
            )

    async def card_brought_in(self, actor: Actor, serial: str) -> Card:
        """MEAL-4 step 2: re-enabled, moved out of the group, type written back onto the card."""
        actor.require(Permission.MEAL_SUBSIDY)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            return await apply_event(
                tx,
                card,
                CardEvent.RESUME,
                now=now,
                actor=actor,
                rule="MEAL-4",
                extra={"type_group": DEFAULT_GROUP, "card_write_pending": True},
            )

    async def card_written(self, actor: Actor, serial: str, group: int) -> Card:
        """The reader bridge confirms the type group is on the card (MEAL-3/4 write-back)."""
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            if card.type_group != group:
                raise InvalidInput(
                    f"写卡类型 {group} 与登记的 {card.type_group} 不符",
                    f"written group {group} differs from the registry's {card.type_group}",
                    rule="MEAL-3",
                )
            await tx.update("cards", card.id, {"card_write_pending": False, "updated_at": now})
            await tx.audit(
                now, actor.name, "card.written", "card", card.id, None, {"type_group": group}
            )
            return await tx.get_card(card.id)
