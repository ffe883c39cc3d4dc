"""``onecard report ...``: registers and reports, on screen or as XLSX/CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from gateway.cli.common import (
    OutFile,
    parse_day,
    pass_opts,
)
from gateway.cli.runtime import (
    Options,
    emit,
    emit_table,
    fail,
    run_as,
)
from gateway.services.reports import Table
from protocol.cards.clock import end_of_validity
from protocol.errors import OnecardError


@click.group()
def report() -> None:
    """登记表和报表，显示在屏幕上或写出 XLSX/CSV（--out 文件） / registers and reports, on screen
    or as XLSX/CSV (--out FILE).
    """


OUT = click.option(
    "--out", "out", type=OutFile(), help="写出 .xlsx 或 .csv 文件 / write .xlsx or .csv"
)


def _show(opts: Options, table: Table, out: Path | None) -> None:
    if out is not None:
        from gateway.reportfile import write_report

        n = write_report(out, table)
        emit(
            opts,
            {"file": str(out), "rows": n, "sheet": table.sheet_name},
            f"已导出 wrote {n} 行 rows to {out}",
        )
        return
    emit_table(opts, table.title, table.headers, table.rows)


def _period(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    start = (
        end_of_validity(parse_day(since)) - timedelta(days=1)
        if since
        else datetime(2000, 1, 1, tzinfo=UTC)
    )
    end = end_of_validity(parse_day(until)) if until else datetime(2100, 1, 1, tzinfo=UTC)
    return start, end


@report.command("print-batch")
@click.option("--college", help="学院 / college")
@click.option("--class", "class_name", help="班级 / class")
@OUT
@pass_opts
def report_print_batch(
    opts: Options, college: str | None, class_name: str | None, out: Path | None
) -> None:
    """ISS-2: 制卡批次（交制卡公司） / smart cards to print, for the vendor.

    \b
    例 example:
      onecard report print-batch --college 计算机科学与技术学院 --class 计科2026-1班 \\
          --out 制卡.xlsx
    """
    _show(
        opts,
        run_as(opts, lambda c, a: c.reports.print_batch(a, college=college, class_name=class_name)),
        out,
    )


@report.command("issuance")
@click.option("--since", help="起始日期 YYYY-MM-DD（校园日） / first campus day")
@click.option("--until", help="截止日期 YYYY-MM-DD（含） / last campus day (inclusive)")
@OUT
@pass_opts
def report_issuance(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """ISS-5/7: 发放的智能卡与收回的临时卡（校园日期，含首尾） / smart cards handed over and temp
    cards recovered (campus dates, inclusive).

    \b
    例 example:
      onecard report issuance --since 2026-09-01 --until 2026-09-30 --out \\
          发卡-9月.xlsx
    """
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.issuance(a, start, end)), out)


@report.command("temp-monthly")
@click.argument("year", type=int)
@click.argument("month", type=int)
@OUT
@pass_opts
def report_temp_monthly(opts: Options, year: int, month: int, out: Path | None) -> None:
    """ISS-12: 某月发出的临时卡 / temp cards issued in a month.

    \b
    例 example:
      onecard report temp-monthly 2026 11
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.temp_monthly(a, year, month)), out)


@report.command("receipts")
@click.option("--since", help="起始日期 YYYY-MM-DD（校园日） / first campus day")
@click.option("--until", help="截止日期 YYYY-MM-DD（含） / last campus day (inclusive)")
@OUT
@pass_opts
def report_receipts(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """FEE-3: 电子收费台账 / the electronic receipt ledger.

    \b
    例 example:
      onecard report receipts --since 2026-11-01 --out 收费台账-11月.xlsx
    """
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.receipts(a, start, end)), out)


@report.command("books")
@OUT
@pass_opts
def report_books(opts: Options, out: Path | None) -> None:
    """FEE-4: 收费票据本、已用号码和核对情况 / receipt books, used numbers and reconciliation.

    \b
    例 example:
      onecard report books
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.receipt_books(a)), out)


@report.command("scrap")
@click.option("--year", type=int, help="报废年份 / year of scrapping")
@OUT
@pass_opts
def report_scrap(opts: Options, year: int | None, out: Path | None) -> None:
    """SCR-2: 报废卡登记表，一卡一行 / the scrap register, one row per card.

    \b
    例 example:
      onecard report scrap --year 2026 --out 报废-2026.xlsx
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.scrap_register(a, year=year)), out)


@report.command("hand-overs")
@click.option("--year", type=int, help="领卡年份 / year of collection")
@OUT
@pass_opts
def report_hand_overs(opts: Options, year: int | None, out: Path | None) -> None:
    """REP-4/EXC-5: 领卡登记表：每张卡由谁领取、是否签字 / the hand-over register: who collected
    each card, signed.

    \b
    例 example:
      onecard report hand-overs --year 2026
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.hand_overs(a, year=year)), out)


@report.command("clearances")
@click.option("--college", required=True, help="学院 / college")
@click.option("--class", "class_name", required=True, help="班级 / class")
@OUT
@pass_opts
def report_clearances(opts: Options, college: str, class_name: str, out: Path | None) -> None:
    """TERM-5: 某班的离校证明 / clearance certificates of a class.

    \b
    例 example:
      onecard report clearances --college 计算机科学与技术学院 --class 计科2026-2班
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.clearances(a, college, class_name)), out)


@report.command("settlement")
@click.argument("day")
@OUT
@pass_opts
def report_settlement(opts: Options, day: str, out: Path | None) -> None:
    """商户日结算（校园日） / daily settlement per merchant (campus day).

    \b
    例 example:
      onecard report settlement 2026-11-26 --out 结算-1126.xlsx
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.daily_settlement(a, parse_day(day))), out)


@report.command("offline")
@click.option("--since", help="起始上传日期 YYYY-MM-DD / first upload day")
@click.option("--until", help="截止上传日期 YYYY-MM-DD（含） / last upload day (inclusive)")
@OUT
@pass_opts
def report_offline(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """被拒绝和有争议的脱机交易，按上传日期（终端协议 §8.3） / refused and disputed offline sales,
    by upload date (terminal contract §8.3).

    \b
    例 example:
      onecard report offline --since 2026-11-01
    """
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.offline_disputes(a, start, end)), out)


@report.command("stock")
@OUT
@pass_opts
def report_stock(opts: Options, out: Path | None) -> None:
    """INV-1/2: 卡片库存 / card stock.

    \b
    例 example:
      onecard report stock --out 库存.xlsx
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.stock(a)), out)


@report.command("requisitions")
@OUT
@pass_opts
def report_requisitions(opts: Options, out: Path | None) -> None:
    """INV-2: 新卡领用登记表 / the requisition register.

    \b
    例 example:
      onecard report requisitions
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.requisitions(a)), out)


@report.command("warranty")
@OUT
@pass_opts
def report_warranty(opts: Options, out: Path | None) -> None:
    """EXC-6: 故障卡每满 100 张一批退制卡公司 / faulty cards in lots of 100 for the vendor.

    \b
    例 example:
      onecard report warranty --out 保修.xlsx
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.warranty_lots(a)), out)


@report.command("audit")
@click.option("--entity", help="对象类型，如 card、holder、operator、transfer / entity type")
@click.option(
    "--limit",
    type=int,
    default=100,
    show_default=True,
    help="最多显示的行数 / at most this many rows",
)
@OUT
@pass_opts
def report_audit(opts: Options, entity: str | None, limit: int, out: Path | None) -> None:
    """审计日志（谁、做了什么、何时、前后），最新的在前 / the audit log (who, what, when,
    before/after), newest first.

    \b
    例 example:
      onecard report audit --entity transfer --limit 20
    """
    _show(opts, run_as(opts, lambda c, a: c.reports.audit(a, entity=entity, limit=limit)), out)


@report.command("topup-reconcile")
@click.option("--date", "day", required=True, help="校园日 YYYY-MM-DD / campus day YYYY-MM-DD")
@click.option(
    "--statement",
    "statement",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="支付平台当日对账单 CSV / the provider's statement CSV of that day",
)
@click.option(
    "--provider", default="sandbox", show_default=True, help="支付平台 / payment provider"
)
@OUT
@pass_opts
def report_topup_reconcile(
    opts: Options, day: str, statement: Path, provider: str, out: Path | None
) -> None:
    """TOP-1: 某日网上充值与支付平台对账单核对，列出每一处差异 / online top-ups credited on a day
    against the provider's statement; lists every difference.

    \b
    例 example:
      onecard report topup-reconcile --date 2026-11-26 --statement 对账单-1126.csv \\
          --out 对账-1126.xlsx
    """
    from gateway.services.payments import parse_statement, reconcile

    raw = statement.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("gb18030")
    try:
        lines = parse_statement(text)
    except OnecardError as exc:
        fail(opts, exc)
    when = parse_day(day)
    _show(opts, run_as(opts, lambda c, a: reconcile(c.ctx, a, when, lines, provider=provider)), out)


@report.command("meal-list")
@OUT
@pass_opts
def report_meal_list(opts: Options, out: Path | None) -> None:
    """MEAL-2: 用餐补贴名单（人事处提供，以电子表格保存）：每人每月补贴次数、是否开通、
    卡号、卡类型组、是否待写卡 / the meal subsidy list HR provides, kept as a spreadsheet.

    \b
    例 example:
      onecard report meal-list --out 用餐补贴名单-2026-12.xlsx
    """
    from gateway.services.reports import meal_list

    _show(opts, run_as(opts, lambda c, a: meal_list(c.ctx, a)), out)
