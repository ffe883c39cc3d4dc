"""The mass-block guard-rail in the service layer (issue 11): a change that puts more than N cards
on the deny list in one transaction is refused unless a second operator approves it.

Every state change goes through :func:`gateway.services.common.apply_event`, which tells
:func:`note_denied` of each card it newly puts on the deny list. An operation that can deny-list a
class at once (TERM-5 graduation, the ISS-4 class exchange) runs its transaction inside
:func:`guard`: when the count is over ``Context.mass_block_threshold`` the transaction is rolled
back with :class:`ApprovalRequired` (nothing written) — whichever channel called it, console, CLI
or a script. The same operation run again with the id of a request that another operator filed
(:mod:`gateway.services.approvals`) records the approval in the same transaction as the change, so
the change and its approval commit together or not at all, and a request is applied once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from gateway.services.base import Actor, Context
from protocol.errors import AccessDenied, ErrorCode, NotFound, RuleViolation
from storage.ports import Tx

ENTITY = "approval"
REQUESTED = "approval.requested"
APPROVED = "approval.approved"
REJECTED = "approval.rejected"
#: The guarded operations (the request's ``action``).
GRADUATION = "graduate_class"
CLASS_EXCHANGE = "batch_exchange"

#: Cards newly deny-listed in the running guarded transaction (None outside one).
_denied: ContextVar[list[int] | None] = ContextVar("onecard_mass_block_denied", default=None)


def note_denied() -> None:
    """One more card on the deny list in this transaction (called by ``apply_event``)."""
    counter = _denied.get()
    if counter is not None:
        counter[0] += 1


class ApprovalRequired(AccessDenied):
    """Too many cards onto the deny list at once: a second operator must approve."""

    def __init__(self, action: str, params: dict[str, Any], cards: int, threshold: int) -> None:
        super().__init__(
            f"将有 {cards} 张卡同时进入黑名单，超过 {threshold} 张，须另一名操作员审批",
            f"{cards} cards would be deny-listed at once (more than {threshold}): "
            "a second operator must approve",
            code=ErrorCode.PERMISSION_DENIED,
        )
        self.action = action
        self.params = params
        self.cards = cards
        self.threshold = threshold


def graduation_params(
    college: str, class_name: str, returned_serials: list[str], missing_paid: list[str]
) -> dict[str, Any]:
    """TERM-5's request parameters: what a request and its approved run must agree on."""
    return {
        "college": college,
        "class_name": class_name,
        "returned_serials": sorted(returned_serials),
        "missing_paid": sorted(missing_paid),
    }


def exchange_params(
    college: str,
    class_name: str,
    returned: list[str],
    temp_lost: list[str],
    collected_by: str,
    partial: bool,
) -> dict[str, Any]:
    """ISS-4 class exchange's request parameters."""
    return {
        "college": college,
        "class_name": class_name,
        "returned": sorted(returned),
        "temp_lost": sorted(temp_lost),
        "collected_by": collected_by.strip(),
        "partial": partial,
    }


@asynccontextmanager
async def guard(
    tx: Tx,
    ctx: Context,
    actor: Actor,
    *,
    action: str,
    params: dict[str, Any],
    approval: str | None,
) -> AsyncIterator[None]:
    """Count the cards the body deny-lists; over the threshold, refuse (the transaction rolls
    back) unless ``approval`` names a pending request for exactly this action and these
    parameters, filed by another operator — then the approval is written in ``tx``."""
    counter = [0]
    token = _denied.set(counter)
    try:
        yield
    finally:
        _denied.reset(token)
    cards = counter[0]
    if approval is None:
        if cards > ctx.mass_block_threshold:
            raise ApprovalRequired(action, params, cards, ctx.mass_block_threshold)
        return
    rows = await tx.find("audit_log", entity=ENTITY, entity_id=approval, order_by="id")
    if not rows or rows[0]["action"] != REQUESTED:
        raise NotFound(f"无此审批申请 {approval}", f"no approval request {approval}")
    if len(rows) > 1:
        raise RuleViolation(
            "该申请已处理", "this request was already decided", code=ErrorCode.DUPLICATE
        )
    request = json.loads(rows[0]["after"] or "{}")
    if request.get("action") != action or request.get("params") != params:
        raise RuleViolation("审批申请与本次办理的内容不符", "the request is for another change")
    requested_by = str(rows[0]["actor"])
    if requested_by == actor.name:
        raise AccessDenied(
            "须由另一名操作员审批",
            "a second operator must approve",
            code=ErrorCode.PERMISSION_DENIED,
        )
    await tx.audit(
        ctx.wall_now(),
        actor.name,
        APPROVED,
        ENTITY,
        approval,
        None,
        {"requested_by": requested_by, "cards": cards, "action": action},
    )
