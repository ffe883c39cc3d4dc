"""``onecard batch ...``: a whole class at once (ISS-1, ISS-2, ISS-4; one module per command
group, ARCHITECTURE.md §10). Each command lists every holder's result; nothing is done if any
line is refused, unless ``--skip-bad``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.approvals import refuse_pending
from gateway.cli.common import OutFile
from gateway.cli.runtime import EXIT_REFUSED, Options, emit, emit_table, refuse, run_as, to_jsonable
from gateway.services.base import Actor
from gateway.services.batches import NOT_HANDED_IN, OK, BatchReport
from gateway.services.center import CardCenter
from gateway.services.reports import Table
from protocol.cards.fees import yuan
from protocol.cards.identity import mask_name
from protocol.errors import ErrorCode

pass_opts = click.make_pass_decorator(Options)

STATUS_TEXT = {
    OK: "完成 done",
    "refused": "拒绝 refused",
    NOT_HANDED_IN: "未交回 not handed in",
}
COLLEGE = click.option("--college", required=True, help="学院 college")
CLASS = click.option("--class", "class_name", required=True, help="班级 class")
SKIP_BAD = click.option(
    "--skip-bad", is_flag=True, help="只办理无误的，列出其余 do the good lines, list the others"
)


@click.group()
def batch() -> None:
    """班级批量办理 class batches: 临时卡 issue-temp (ISS-1), 制卡批次 order-smart (ISS-2),
    临时卡换智能卡 exchange (ISS-4)."""


def _report(opts: Options, report: BatchReport, out: Path | None = None) -> None:
    """Print the per-holder list (names masked on screen); refuse with the list when nothing
    was done."""
    if opts.json:
        body = to_jsonable(report)
        if report.applied:
            emit(opts, body)
        else:
            refuse(
                opts,
                "有不符合条件的学生，未办理",
                "some lines are refused: nothing done",
                code=ErrorCode.NOT_ELIGIBLE,
                rule=report.refused[0].rule,
                data=body,
            )
        return
    verdict = "" if report.applied else "（未办理 nothing done）"
    emit_table(
        opts,
        f"{report.college} {report.class_name} {report.operation}{verdict}",
        ["学号 / number", "姓名 / name", "卡号 / card", "交回 / returned", "结果 / result"],
        [
            (
                line.number,
                mask_name(line.name) if line.name else None,
                line.serial,
                line.returned,
                f"{STATUS_TEXT[line.status]} {line.rule or ''} {line.detail}".strip(),
            )
            for line in report.lines
        ],
    )
    for receipt in report.receipts:
        click.echo(
            f"收据 receipt No.{receipt.receipt_no}: {receipt.item} {yuan(receipt.amount)} 元"
        )
    if not report.applied:
        click.echo(
            f"错误 / error: {len(report.refused)} 行不符合条件，未办理任何一人；核对后重试，或用"
            " --skip-bad 只办理其余 / refused lines: nothing done; fix them or use --skip-bad",
            err=True,
        )
        sys.exit(EXIT_REFUSED)
    click.echo(f"完成 done {report.done}，拒绝 refused {len(report.refused)}")
    if out is not None:
        click.echo(f"已写出 written: {out}")


@batch.command("issue-temp")
@COLLEGE
@CLASS
@SKIP_BAD
@click.option(
    "--out",
    type=OutFile(),
    help="发卡清单（.xlsx/.csv）交学院发放 the hand-out list for the college",
)
@pass_opts
def batch_issue_temp(
    opts: Options, college: str, class_name: str, skip_bad: bool, out: Path | None
) -> None:
    """为全班制作临时卡 ISS-1: a temp CPU card for every student of the class without a card.

    \b
    例 example: onecard batch issue-temp --college 计算机科学与技术学院 --class 计科2026-1班
    --out 计科2026-1班-临时卡.xlsx
    """
    report = run_as(
        opts,
        lambda c, a: c.batches.issue_temp(
            a, college=college, class_name=class_name, partial=skip_bad
        ),
    )
    if out is not None and report.applied:
        from gateway.reportfile import write_report

        write_report(
            out,
            Table(
                f"临时卡发放清单 {class_name}",
                f"temp cards for {class_name}",
                ["学号 / number", "姓名 / name", "学院 / college", "班级 / class", "卡号 / card"],
                [
                    [line.number, line.name, college, class_name, line.serial]
                    for line in report.lines
                    if line.status == OK
                ],
            ),
        )
    _report(opts, report, out)


@batch.command("order-smart")
@COLLEGE
@CLASS
@SKIP_BAD
@click.option(
    "--out",
    type=OutFile(),
    help="制卡批次（.xlsx/.csv）交制卡公司 the print batch for the vendor (ISS-2)",
)
@pass_opts
def batch_order_smart(
    opts: Options, college: str, class_name: str, skip_bad: bool, out: Path | None
) -> None:
    """为全班订制智能卡并导出制卡批次 ISS-2: every student of the class into the vendor's print
    batch (photo and data complete); --out writes the class's print batch.

    \b
    例 example: onecard batch order-smart --college 计算机科学与技术学院 --class 计科2026-1班
    --out 制卡-计科2026-1班.xlsx
    """

    async def body(c: CardCenter, a: Actor) -> tuple[BatchReport, Table | None]:
        report = await c.batches.order_smart(
            a, college=college, class_name=class_name, partial=skip_bad
        )
        table = None
        if report.applied and out is not None:
            table = await c.reports.print_batch(a, college=college, class_name=class_name)
        return report, table

    report, table = run_as(opts, body)
    if table is not None and out is not None:
        from gateway.reportfile import write_report

        write_report(out, table)
    _report(opts, report, out)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for text in values for v in text.replace("，", ",").split(",") if v.strip()]


@batch.command("exchange")
@COLLEGE
@CLASS
@click.option(
    "--returned",
    multiple=True,
    help="交回的临时卡（卡号或UID，逗号分隔）temp cards handed in (serials or UIDs, comma list)",
)
@click.option(
    "--temp-lost",
    multiple=True,
    help="临时卡丢失、缴纳工本费的学号 students who lost the temp card and pay the fee",
)
@click.option("--collected-by", required=True, help="领卡班长姓名 the class monitor collecting")
@SKIP_BAD
@pass_opts
def batch_exchange(
    opts: Options,
    college: str,
    class_name: str,
    returned: tuple[str, ...],
    temp_lost: tuple[str, ...],
    collected_by: str,
    skip_bad: bool,
) -> None:
    """班长统一以临时卡换领智能卡 ISS-4: the temp cards handed in are recovered and each student's
    ready smart card handed over; a lost temp card is paid for (30 yuan, receipt).

    \b
    例 example: onecard batch exchange --college 计算机科学与技术学院 --class 计科2026-1班
    --returned 2000000000,2000000001 --temp-lost 2026000003 --collected-by 张班长
    """
    outcome = run_as(
        opts,
        lambda c, a: c.approvals.batch_exchange(
            a,
            college=college,
            class_name=class_name,
            returned=_split(returned),
            temp_lost=_split(temp_lost),
            collected_by=collected_by,
            partial=skip_bad,
        ),
    )
    if outcome.pending is not None:
        refuse_pending(opts, outcome.pending)
    assert isinstance(outcome.report, BatchReport)
    emit_batch(opts, outcome.report)


def emit_batch(opts: Options, report: BatchReport) -> None:
    """A class batch's per-holder list (also an approved ISS-4 exchange's)."""
    _report(opts, report)
