"""The mass-block guard-rail (issue 11): a change that would put more than N cards on the deny
list at once (a class graduation, TERM-5) waits for a second operator's approval.

Requests and decisions are rows of the append-only audit log (entity ``approval``): the request
(``approval.requested``, with the parameters and the count), then exactly one decision
(``approval.approved`` + the change, or ``approval.rejected``). The decision is written in the
same transaction that checks no decision exists yet, so two approvers cannot both apply it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.services.base import Actor, Context
from gateway.services.cards import CardService
from gateway.services.cards_base import GraduationReport
from gateway.services.common import live_card
from protocol.errors import AccessDenied, ErrorCode, InvalidInput, NotFound, RuleViolation
from protocol.types import CardState, HolderKind, Permission

ENTITY = "approval"
REQUESTED = "approval.requested"
APPROVED = "approval.approved"
REJECTED = "approval.rejected"
GRADUATION = "graduate_class"
#: States whose card a termination newly puts on the deny list.
_NOT_YET_DENIED = frozenset({CardState.ACTIVE, CardState.SUSPENDED, CardState.EXPIRED})


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

    report: GraduationReport | None = None
    pending: Pending | None = None


class ApprovalService:
    def __init__(self, ctx: Context, cards: CardService, *, threshold: int) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        self.ctx = ctx
        self.cards = cards
        self.threshold = threshold

    async def cards_blocked_by_graduation(self, college: str, class_name: str) -> int:
        """How many cards a graduation of the class would newly put on the deny list."""
        async with self.ctx.registry.read() as tx:
            students = await tx.holders_where(
                college=college, class_name=class_name, kind=HolderKind.STUDENT.value
            )
            count = 0
            for student in students:
                if student.status != "active":
                    continue
                card = live_card(await tx.cards_of_holder(student.id))
                if card is not None and card.state in _NOT_YET_DENIED:
                    count += 1
        return count

    async def graduate_class(
        self,
        actor: Actor,
        *,
        college: str,
        class_name: str,
        returned_serials: list[str],
        missing_paid: list[str],
    ) -> Outcome:
        """TERM-5 through the guard-rail: at most N cards go at once; more wait for approval."""
        actor.require(Permission.CARD_HANDLING)
        params = {
            "college": college,
            "class_name": class_name,
            "returned_serials": sorted(returned_serials),
            "missing_paid": sorted(missing_paid),
        }
        count = await self.cards_blocked_by_graduation(college, class_name)
        if count <= self.threshold:
            return Outcome(report=await self._run(actor, GRADUATION, params))
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
                {"action": GRADUATION, "params": params, "cards": count},
            )
        return Outcome(
            pending=Pending(request_id, GRADUATION, params, count, actor.name, now),
        )

    async def _run(self, actor: Actor, action: str, params: dict[str, Any]) -> GraduationReport:
        if action != GRADUATION:
            raise InvalidInput("未知的审批事项", "unknown approval action")
        return await self.cards.graduate_class(
            actor,
            college=str(params["college"]),
            class_name=str(params["class_name"]),
            returned_serials=[str(s) for s in params["returned_serials"]],
            missing_paid=[str(s) for s in params["missing_paid"]],
        )

    async def pending(self, actor: Actor) -> list[Pending]:
        actor.require(Permission.CARD_HANDLING)
        async with self.ctx.registry.read() as tx:
            rows = await tx.find("audit_log", entity=ENTITY, order_by="id")
        decided = {r["entity_id"] for r in rows if r["action"] != REQUESTED}
        return [
            _pending(r) for r in rows if r["action"] == REQUESTED and r["entity_id"] not in decided
        ]

    async def approve(self, actor: Actor, request_id: str) -> GraduationReport:
        """The second operator approves: never the requester; the change runs as the approver
        and both names are in the audit log."""
        request = await self._decide(actor, request_id, APPROVED)
        return await self._run(actor, request.action, request.params)

    async def reject(self, actor: Actor, request_id: str) -> None:
        await self._decide(actor, request_id, REJECTED)

    async def _decide(self, actor: Actor, request_id: str, action: str) -> Pending:
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.wall_now()
        async with self.ctx.registry.transaction() as tx:
            rows = await tx.find("audit_log", entity=ENTITY, entity_id=request_id, order_by="id")
            if not rows or rows[0]["action"] != REQUESTED:
                raise NotFound(f"无此审批申请 {request_id}", f"no approval request {request_id}")
            if len(rows) > 1:
                raise RuleViolation(
                    "该申请已处理", "this request was already decided", code=ErrorCode.DUPLICATE
                )
            request = _pending(rows[0])
            if request.requested_by == actor.name:
                raise AccessDenied(
                    "须由另一名操作员审批",
                    "a second operator must approve",
                    code=ErrorCode.PERMISSION_DENIED,
                )
            await tx.audit(
                now,
                actor.name,
                action,
                ENTITY,
                request_id,
                None,
                {"requested_by": request.requested_by, "cards": request.cards},
            )
        return request


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
