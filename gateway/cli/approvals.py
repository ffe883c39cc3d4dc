"""``onecard approvals ...``: the mass-block guard-rail at the command line (issue 11).

``onecard graduate`` or ``onecard batch exchange`` that would put more than N cards on the deny
list at once is refused (exit 2) and filed as a request; a second operator lists and approves (or
rejects) it here. The rule itself is in the service layer (:mod:`gateway.services.massblock`).
"""

from __future__ import annotations

from typing import NoReturn

import click

from gateway.cli.common import pass_opts
from gateway.cli.runtime import Options, emit, emit_table, refuse, run_as
from gateway.services.approvals import Pending
from gateway.services.batches import BatchReport
from gateway.services.cards_base import GraduationReport
from protocol.cards.clock import fmt_local
from protocol.errors import ErrorCode

ACTION_TEXT = {
    "graduate_class": "班级毕业离校 TERM-5 / class graduation",
    "batch_exchange": "班级临时卡换智能卡 ISS-4 / class exchange",
}


def refuse_pending(opts: Options, pending: Pending) -> NoReturn:
    """The guard-rail refused the change and filed it: exit 2 with the request id a second
    operator approves (``onecard approvals approve ID``)."""
    refuse(
        opts,
        f"将有 {pending.cards} 张卡同时进入黑名单，须另一名操作员审批；已提交审批申请 {pending.id}"
        f"（onecard approvals approve {pending.id}）",
        f"{pending.cards} cards would be deny-listed at once: a second operator must approve; "
        f"request {pending.id} filed (onecard approvals approve {pending.id})",
        code=ErrorCode.PERMISSION_DENIED,
        data={"pending": pending},
    )


def emit_graduation(opts: Options, report: GraduationReport) -> None:
    """TERM-5's report: a certificate per student cleared, the reason per student blocked."""
    if opts.json:
        emit(opts, report)
        return
    emit_table(
        opts,
        f"离校清卡 / clearance {report.college} {report.class_name}",
        ["学号 / number", "离校证明 / certificate"],
        report.cleared,
    )
    if report.blocked:
        emit_table(opts, "未能办理 / blocked", ["学号 / number", "原因 / reason"], report.blocked)
    click.echo(f"交回 returned {report.returned}，缴费 paid for missing {report.missing_paid}")


@click.group()
def approvals() -> None:
    """批量拉黑审批：超过 N 张卡同时进入黑名单须另一名操作员审批 / the mass-block guard-rail:
    more than N cards onto the deny list at once need a second operator."""


@approvals.command("list")
@pass_opts
def approvals_list(opts: Options) -> None:
    """待审批的申请 / requests waiting for a second operator.

    \b
    例 example:
      onecard approvals list
    """
    pending = run_as(opts, lambda c, a: c.approvals.pending(a))
    if opts.json:
        emit(opts, pending)
        return
    emit_table(
        opts,
        "待审批 / pending approvals",
        ["申请号 / id", "事项 / change", "卡数 / cards", "申请人 / by", "时间 / at"],
        [
            (
                p.id,
                f"{ACTION_TEXT.get(p.action, p.action)} "
                f"{p.params.get('college', '')} {p.params.get('class_name', '')}",
                p.cards,
                p.requested_by,
                fmt_local(p.requested_at),
            )
            for p in pending
        ],
    )


@approvals.command("approve")
@click.argument("request_id")
@pass_opts
def approvals_approve(opts: Options, request_id: str) -> None:
    """审批并办理（须非申请人） / approve and apply a request (not the requester's own).

    \b
    例 example:
      onecard approvals approve 5f0c2e7f91a4d3c6
    """
    from gateway.cli.batch import emit_batch  # batch imports refuse_pending from here

    report = run_as(opts, lambda c, a: c.approvals.approve(a, request_id))
    if isinstance(report, BatchReport):
        emit_batch(opts, report)
    else:
        emit_graduation(opts, report)


@approvals.command("reject")
@click.argument("request_id")
@pass_opts
def approvals_reject(opts: Options, request_id: str) -> None:
    """驳回申请（须非申请人） / reject a request (not the requester's own).

    \b
    例 example:
      onecard approvals reject 5f0c2e7f91a4d3c6
    """
    run_as(opts, lambda c, a: c.approvals.reject(a, request_id))
    emit(opts, {"rejected": request_id}, f"已驳回 rejected {request_id}")
