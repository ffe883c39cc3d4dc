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
    """Registers and reports, on screen or as XLSX/CSV (--out FILE)."""


OUT = click.option(
    "--out", "out", type=OutFile(), help="写出 .xlsx 或 .csv 文件 / write .xlsx or .csv"
)


def _show(opts: Options, table: Table, out: Path | None) -> None:
    if out is not None:
        from gateway.rosterio import write_table

        n = write_table(out, table.headers, table.rows)
        emit(opts, {"file": str(out), "rows": n}, f"已导出 wrote {n} rows to {out}")
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
@click.option("--college")
@click.option("--class", "class_name")
@OUT
@pass_opts
def report_print_batch(
    opts: Options, college: str | None, class_name: str | None, out: Path | None
) -> None:
    """ISS-2: smart cards to print, for the vendor."""
    _show(
        opts,
        run_as(opts, lambda c, a: c.reports.print_batch(a, college=college, class_name=class_name)),
        out,
    )


@report.command("issuance")
@click.option("--since")
@click.option("--until")
@OUT
@pass_opts
def report_issuance(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """ISS-5/7: smart cards handed over and temp cards recovered (campus dates, inclusive)."""
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.issuance(a, start, end)), out)


@report.command("temp-monthly")
@click.argument("year", type=int)
@click.argument("month", type=int)
@OUT
@pass_opts
def report_temp_monthly(opts: Options, year: int, month: int, out: Path | None) -> None:
    """ISS-12: temp cards issued in a month."""
    _show(opts, run_as(opts, lambda c, a: c.reports.temp_monthly(a, year, month)), out)


@report.command("receipts")
@click.option("--since")
@click.option("--until")
@OUT
@pass_opts
def report_receipts(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """FEE-3: the electronic receipt ledger."""
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.receipts(a, start, end)), out)


@report.command("books")
@OUT
@pass_opts
def report_books(opts: Options, out: Path | None) -> None:
    """FEE-4: receipt books, used numbers and reconciliation."""
    _show(opts, run_as(opts, lambda c, a: c.reports.receipt_books(a)), out)


@report.command("scrap")
@click.option("--year", type=int)
@OUT
@pass_opts
def report_scrap(opts: Options, year: int | None, out: Path | None) -> None:
    """SCR-2: the scrap register, one row per card."""
    _show(opts, run_as(opts, lambda c, a: c.reports.scrap_register(a, year=year)), out)


@report.command("hand-overs")
@click.option("--year", type=int)
@OUT
@pass_opts
def report_hand_overs(opts: Options, year: int | None, out: Path | None) -> None:
    """REP-4/EXC-5: 领卡登记表 / the hand-over register: who collected each card, signed."""
    _show(opts, run_as(opts, lambda c, a: c.reports.hand_overs(a, year=year)), out)


@report.command("clearances")
@click.option("--college", required=True)
@click.option("--class", "class_name", required=True)
@OUT
@pass_opts
def report_clearances(opts: Options, college: str, class_name: str, out: Path | None) -> None:
    """TERM-5: clearance certificates of a class."""
    _show(opts, run_as(opts, lambda c, a: c.reports.clearances(a, college, class_name)), out)


@report.command("settlement")
@click.argument("day")
@OUT
@pass_opts
def report_settlement(opts: Options, day: str, out: Path | None) -> None:
    """Daily settlement per merchant (campus day)."""
    _show(opts, run_as(opts, lambda c, a: c.reports.daily_settlement(a, parse_day(day))), out)


@report.command("offline")
@click.option("--since")
@click.option("--until")
@OUT
@pass_opts
def report_offline(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """Refused and disputed offline sales, by upload date (terminal contract §8.3)."""
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.offline_disputes(a, start, end)), out)


@report.command("stock")
@OUT
@pass_opts
def report_stock(opts: Options, out: Path | None) -> None:
    """INV-1/2: card stock."""
    _show(opts, run_as(opts, lambda c, a: c.reports.stock(a)), out)


@report.command("requisitions")
@OUT
@pass_opts
def report_requisitions(opts: Options, out: Path | None) -> None:
    """INV-2: the requisition register (新卡领用登记表)."""
    _show(opts, run_as(opts, lambda c, a: c.reports.requisitions(a)), out)


@report.command("warranty")
@OUT
@pass_opts
def report_warranty(opts: Options, out: Path | None) -> None:
    """EXC-6: faulty cards in lots of 100 for the vendor."""
    _show(opts, run_as(opts, lambda c, a: c.reports.warranty_lots(a)), out)


@report.command("audit")
@click.option("--entity")
@click.option("--limit", type=int, default=100, show_default=True)
@OUT
@pass_opts
def report_audit(opts: Options, entity: str | None, limit: int, out: Path | None) -> None:
    """The audit log (who, what, when, before/after), newest first."""
    _show(opts, run_as(opts, lambda c, a: c.reports.audit(a, entity=entity, limit=limit)), out)


@report.command("topup-reconcile")
@click.option("--date", "day", required=True, help="campus day YYYY-MM-DD")
@click.option(
    "--statement",
    "statement",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the provider's statement CSV of that day",
)
@click.option("--provider", default="sandbox", show_default=True)
@OUT
@pass_opts
def report_topup_reconcile(
    opts: Options, day: str, statement: Path, provider: str, out: Path | None
) -> None:
    """TOP-1: online top-ups credited on a day against the provider's statement; lists every
    difference (missing on our side, missing on theirs, amount or trade id mismatch)."""
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
