"""The mass-block guard-rail's request and approval flow (issue 11): a change that would put more
than N cards on the deny list at once (a class graduation, TERM-5; a class exchange, ISS-4)
waits for a second operator's approval.

The rule itself is enforced below every channel, in the operations' own transactions
(:mod:`gateway.services.massblock`): run without an approval they refuse, and nothing is written.
This service turns that refusal into a request, and runs the approved change as the approver.

Requests and decisions are rows of the append-only audit log (entity ``approval``): the request
(``approval.requested``, with the parameters and the count), then exactly one decision
(``approval.approved``, written in the change's own transaction, or ``approval.rejected``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.services.base import Actor, Context
from gateway.services.batches import BatchReport, ClassBatchService
from gateway.services.cards import CardService
from gateway.services.cards_base import GraduationReport
from gateway.services.massblock import (
    APPROVED,
    CLASS_EXCHANGE,
    ENTITY,
    GRADUATION,
    REJECTED,
    REQUESTED,
    ApprovalRequired,
)
from protocol.errors import AccessDenied, ErrorCode, InvalidInput, NotFound, RuleViolation
from protocol.types import Permission

__all__ = ["APPROVED", "REJECTED", "REQUESTED", "ApprovalService", "Outcome", "Pending"]

Report = GraduationReport | BatchReport


@dataclass(frozen=True, slots=True)
class Pending:
    """A request waiting for the second operator."""

    id: str
    action: str
    params: dict[str, Any]
    cards: int
    requested_by: str
    requested_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """Either done at once (``report``) or waiting (``pending``)."""

    report: Report | None = None
    pending: Pending | None = None


class ApprovalService:
    def __init__(self, ctx: Context, cards: CardService, batches: ClassBatchService) -> None:
        self.ctx = ctx
        self.cards = cards
        self.batches = batches

    @property
    def threshold(self) -> int:
        return self.ctx.mass_block_threshold

    async def graduate_class(
        self,
        actor: Actor,
        *,
        college: str,
        class_name: str,
        returned_serials: list[str],
        missing_paid: list[str],
    ) -> Outcome:
        """TERM-5 through the guard-rail: done at once, or filed for a second operator."""
        try:
            return Outcome(
                report=await self.cards.graduate_class(
                    actor,
                    college=college,
                    class_name=class_name,
                    returned_serials=returned_serials,
                    missing_paid=missing_paid,
                )
            )
        except ApprovalRequired as need:
            return Outcome(pending=await self.request(actor, need))

    async def batch_exchange(
        self,
        actor: Actor,
        *,
        college: str,
        class_name: str,
        returned: list[str],
        temp_lost: list[str],
        collected_by: str,
        partial: bool = False,
    ) -> Outcome:
        """ISS-4 class exchange through the guard-rail."""
        try:
            return Outcome(
                report=await self.batches.exchange(
                    actor,
                    college=college,
                    class_name=class_name,
                    returned=returned,
                    temp_lost=temp_lost,
                    collected_by=collected_by,
                    partial=partial,
                )
            )
        except ApprovalRequired as need:
            return Outcome(pending=await self.request(actor, need))

    async def request(self, actor: Actor, need: ApprovalRequired) -> Pending:
        """File the refused change for a second operator (audited as the requester)."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.wall_now()
        request_id = secrets.token_hex(8)
        async with self.ctx.registry.transaction() as tx:
            await tx.audit(
                now,
                actor.name,
                REQUESTED,
                ENTITY,
                request_id,
                None,
                {"action": need.action, "params": need.params, "cards": need.cards},
            )
        return Pending(request_id, need.action, need.params, need.cards, actor.name, now)

    async def _run(self, actor: Actor, request: Pending) -> Report:
        p = request.params
        if request.action == GRADUATION:
            return await self.cards.graduate_class(
                actor,
                college=str(p["college"]),
                class_name=str(p["class_name"]),
                returned_serials=[str(s) for s in p["returned_serials"]],
                missing_paid=[str(s) for s in p["missing_paid"]],
                approval=request.id,
            )
        if request.action == CLASS_EXCHANGE:
            return await self.batches.exchange(
                actor,
                college=str(p["college"]),
                class_name=str(p["class_name"]),
                returned=[str(s) for s in p["returned"]],
                temp_lost=[str(s) for s in p["temp_lost"]],
                collected_by=str(p["collected_by"]),
                partial=bool(p["partial"]),
                approval=request.id,
            )
        raise InvalidInput("未知的审批事项", "unknown approval action")

    async def pending(self, actor: Actor) -> list[Pending]:
        actor.require(Permission.CARD_HANDLING)
        async with self.ctx.registry.read() as tx:
            rows = await tx.find("audit_log", entity=ENTITY, order_by="id")
        decided = {r["entity_id"] for r in rows if r["action"] != REQUESTED}
        return [
            _pending(r) for r in rows if r["action"] == REQUESTED and r["entity_id"] not in decided
        ]

    async def approve(self, actor: Actor, request_id: str) -> Report:
        """The second operator approves: never the requester; the change runs as the approver,
        its approval written in the change's own transaction; both names are in the audit log.
        A change that is refused now (the class changed meanwhile) leaves the request pending."""
        actor.require(Permission.CARD_HANDLING)
        request = await self._request(request_id)
        _not_the_requester(actor, request)
        return await self._run(actor, request)

    async def reject(self, actor: Actor, request_id: str) -> None:
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.wall_now()
        async with self.ctx.registry.transaction() as tx:
            rows = await tx.find("audit_log", entity=ENTITY, entity_id=request_id, order_by="id")
            request = _only_request(rows, request_id)
            _not_the_requester(actor, request)
            await tx.audit(
                now,
                actor.name,
                REJECTED,
                ENTITY,
                request_id,
                None,
                {"requested_by": request.requested_by, "cards": request.cards},
            )

    async def _request(self, request_id: str) -> Pending:
        async with self.ctx.registry.read() as tx:
            rows = await tx.find("audit_log", entity=ENTITY, entity_id=request_id, order_by="id")
        return _only_request(rows, request_id)


def _only_request(rows: list[dict[str, Any]], request_id: str) -> Pending:
    if not rows or rows[0]["action"] != REQUESTED:
        raise NotFound(f"无此审批申请 {request_id}", f"no approval request {request_id}")
    if len(rows) > 1:
        raise RuleViolation(
            "该申请已处理", "this request was already decided", code=ErrorCode.DUPLICATE
        )
    return _pending(rows[0])


def _not_the_requester(actor: Actor, request: Pending) -> None:
    if request.requested_by == actor.name:
        raise AccessDenied(
            "须由另一名操作员审批",
            "a second operator must approve",
            code=ErrorCode.PERMISSION_DENIED,
        )


def _pending(row: dict[str, Any]) -> Pending:
    after = json.loads(row["after"] or "{}")
    return Pending(
        id=str(row["entity_id"]),
        action=str(after.get("action", "")),
        params=dict(after.get("params", {})),
        cards=int(after.get("cards", 0)),
        requested_by=str(row["actor"]),
        requested_at=row["at"],
    )
