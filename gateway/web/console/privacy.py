"""The console's audited reads of personal data (issue 15, PIPL arts. 5-6, 28; docs/privacy.md).

The holder page is masked and needs no purpose. A full ID number, the photo reference or the
holder's transaction history is read with a purpose the clerk picks (or writes) in the page's
small form: a POST (CSRF-checked, never a link a browser prefetches or a URL a log keeps) that
calls :class:`PrivacyService` -- which checks the operator's rights, refuses a missing purpose
and writes the audit entry (``pii.read_id`` / ``pii.read_photo`` / ``pii.read_history``, channel
``console``) -- and shows the result on a page of its own, never stored in the session. The
reads-per-operator report is one of the console's registers (``/reports?name=pii-reads``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from gateway.services.privacy import PrivacyService, clean_purpose
from gateway.services.reports import Table
from gateway.web.console.forms import BadRequest, form_text
from protocol.cards.clock import fmt_local
from protocol.types import Permission

if TYPE_CHECKING:
    from gateway.services.base import Actor
    from gateway.web.console.app import Console

CHANNEL = "console"
#: The purposes a clerk picks from (value, zh, en); "other" needs the clerk's own words.
PURPOSES = (
    ("identity", "核验持卡人身份", "identity check (LOSS-1/3, REP-3)"),
    ("dispute", "消费争议核查", "transaction dispute (TOP-2)"),
    ("data", "资料核对或变更", "data check or change (EXC-4, REP-3)"),
    ("photo", "制卡照片核对", "card photo check (ISS-2, ISS-3)"),
    ("settlement", "退卡、离校结算", "refund or leaving settlement (REF-2, TERM-4)"),
    ("request", "本人申请查询", "the holder's own request (PIPL art. 45)"),
    ("other", "其他（请填写说明）", "other (write it below)"),
)
#: What may be read: (form value, zh, en, audit action).
READS = {
    "history": ("交易记录", "transaction history", "pii.read_history"),
    "photo": ("照片", "photo", "pii.read_photo"),
    "id": ("完整证件号码", "full ID number", "pii.read_id"),
}
#: Transfers a console history read shows at most (newest first).
HISTORY_LIMIT = 200


def purpose_of(form: FormData) -> str:
    """The purpose of a read from the form: a listed one (with an optional note) or the clerk's
    own words for "other". A missing or unknown one is refused before anything is read."""
    choice = form_text(form, "purpose")
    note = " ".join(form_text(form, "note").split())[:160]
    listed = {value: f"{zh} / {en}" for value, zh, en in PURPOSES}
    if choice not in listed:
        raise BadRequest("请选择查阅目的", "pick the purpose of this read")
    text = note if choice == "other" else f"{listed[choice]}{f'：{note}' if note else ''}"
    return clean_purpose(text)  # refuses an empty "other", masks a long number typed in


class PrivacyPages:
    def __init__(self, console: Console) -> None:
        self.c = console

    def service(self) -> PrivacyService:
        return PrivacyService(self.c.services.center.ctx)

    async def read(self, request: Request, form: FormData) -> Response:
        """POST /holders/{id}/read: one audited read, shown once."""
        actor = dataclasses.replace(self.c.me(request), channel=CHANNEL)
        holder_id = int(request.path_params["holder_id"])
        what = form_text(form, "what")
        if what not in READS:
            raise BadRequest("请选择要查阅的内容", "pick what to read")
        purpose = purpose_of(form)
        service = self.service()
        history: list[dict[str, object]] = []
        value: str | None = None
        if what == "history":
            history = await service.history(actor, holder_id, purpose, HISTORY_LIMIT)
        elif what == "photo":
            value = await service.read_photo(actor, holder_id, purpose)
        else:
            value = await service.read_id(actor, holder_id, purpose)
        async with self.c.services.center.ctx.registry.read() as tx:
            holder = await tx.get_holder(holder_id)
        return self.c.render(
            request,
            "console_holder_read.html",
            holder=holder,
            what=what,
            label=READS[what],
            purpose=purpose,
            value=value,
            history=history,
            limit=HISTORY_LIMIT,
        )

    async def reads_table(self, actor: Actor, now: datetime) -> Table:
        """The reads-per-operator report of the last 31 days (``onecard privacy reads``)."""
        actor.require(Permission.REPORTS)
        rows = await self.service().reads_report(now - timedelta(days=31), now + timedelta(days=1))
        return Table(
            "个人信息查阅（近31天）",
            "reads of personal data, last 31 days",
            [
                "操作员 / operator",
                "类型 / action",
                "次数 / reads",
                "人数 / holders",
                "最近 / last",
            ],
            [
                [
                    r.operator,
                    r.action,
                    r.reads,
                    r.holders,
                    fmt_local(r.last_at) if r.last_at else None,
                ]
                for r in rows
            ],
        )
