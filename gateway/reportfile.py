"""A report (:class:`gateway.services.reports.Table`) written as a file a clerk opens in Excel or
WPS: ``.xlsx`` with a named sheet, Chinese headers (a second sheet, 说明, gives each column's
English name and the report's title), amounts as numbers in a yuan money format, dates as dates,
column widths from the content and the header row frozen; or ``.csv`` (bilingual headers,
``utf-8-sig``) as :func:`gateway.rosterio.write_table` writes it.

Every text cell is stored as text: an ID keeps all its digits and ``=...`` never becomes a
formula. The file is written next to its destination and moved into place, so a failed write
never leaves half a report.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from rich.cells import cell_len

from gateway.services.reports import TOTAL, Table
from protocol.errors import InvalidInput

logger = logging.getLogger("onecard.reports")

MONEY_FORMAT = "#,##0.00"
DATE_FORMAT = "yyyy-mm-dd"
MIN_WIDTH = 6
MAX_WIDTH = 48
#: widths are measured on this many rows (a long report need not be read twice in full)
WIDTH_SAMPLE = 2000


def header_zh(header: str) -> str:
    return header.split(" / ", maxsplit=1)[0].strip()


def header_en(header: str) -> str:
    return header.rsplit(" / ", maxsplit=1)[-1].strip()


YUAN_TEXT = re.compile(r"^-?\d{1,12}\.\d\d$")


def _money(value: object) -> object:
    """A yuan text (``"12.50"``, as :func:`protocol.cards.fees.yuan` writes it) as a number;
    anything else unchanged."""
    if isinstance(value, str) and YUAN_TEXT.match(value):
        return Decimal(value)
    return value


def _width(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, date):
        return 10
    return cell_len(str(value))


def column_widths(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[int]:
    """Spreadsheet widths (characters; a Chinese character counts 2) from the header and the
    cells, within :data:`MIN_WIDTH`..:data:`MAX_WIDTH`."""
    widths = [cell_len(h) for h in headers]
    for row in rows[:WIDTH_SAMPLE]:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], _width(value))
    return [min(MAX_WIDTH, max(MIN_WIDTH, w + 2)) for w in widths]


def write_report(path: Path, table: Table) -> int:
    """Write ``table`` to ``path`` (``.xlsx`` or ``.csv``); returns the data rows written."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        from gateway.rosterio import write_table

        return write_table(path, table.headers, table.rows)
    if suffix != ".xlsx":
        raise InvalidInput(
            f"不支持的文件类型 {suffix or '(无)'}，请使用 .xlsx 或 .csv",
            f"unsupported file type {suffix or '(none)'}; use .xlsx or .csv",
        )
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_xlsx(tmp, table)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("report written: file=%s rows=%d", path.name, len(table.rows))
    return len(table.rows)


def _write_xlsx(tmp: Path, table: Table) -> None:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import Cell
    from openpyxl.styles import Alignment, Font
    from openpyxl.utils import get_column_letter

    money = set(table.money_columns)
    headers = [header_zh(h) for h in table.headers]
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(table.sheet_name)
    for index, width in enumerate(column_widths(headers, table.rows), 1):
        ws.column_dimensions[get_column_letter(index)].width = width
    ws.freeze_panes = "A2"
    bold = Font(bold=True)

    def cell(value: object, column: int, *, strong: bool = False) -> Cell:
        if column in money:
            value = _money(value)
        c = WriteOnlyCell(ws, value=None)
        if value is None or isinstance(value, bool | int | float | Decimal | date):
            c.value = value.replace(tzinfo=None) if isinstance(value, datetime) else value
            if column in money and isinstance(value, int | float | Decimal):
                c.number_format = MONEY_FORMAT
            elif isinstance(value, date) and not isinstance(value, datetime):
                c.number_format = DATE_FORMAT
        else:
            c.value = str(value)
            c.data_type = "s"  # text, never a formula
        if strong:
            c.font = bold
        return c

    header_cells = [cell(h, i, strong=True) for i, h in enumerate(headers)]
    for c in header_cells:
        c.alignment = Alignment(wrap_text=True, vertical="center")
    ws.append(header_cells)
    for row in table.rows:
        total = bool(row) and row[0] == TOTAL
        ws.append([cell(v, i, strong=total) for i, v in enumerate(row)])

    about = wb.create_sheet("说明")
    about.column_dimensions["A"].width = 24
    about.column_dimensions["B"].width = 40

    def text(value: str, *, strong: bool = False) -> Cell:
        c = WriteOnlyCell(about, value=value)
        c.data_type = "s"
        if strong:
            c.font = bold
        return c

    about.append([text("报表", strong=True), text(table.title_zh)])
    about.append([text("report", strong=True), text(table.title_en)])
    about.append([])
    about.append([text("列（中文）", strong=True), text("column (English)", strong=True)])
    for full in table.headers:
        about.append([text(header_zh(full)), text(header_en(full))])
    wb.save(tmp)
