"""Reading holder rosters (XLSX / CSV) for the card center's imports, and writing export tables.

Rosters come from the admissions office (ISS-1, students), HR or a department (ISS-6, new staff)
and HR's meal-subsidy list (MEAL-1, MEAL-2). :func:`read_roster` never raises on a bad row: it
returns the good rows and a list of :class:`RowError`; the caller chooses all-or-nothing
(``result.ok``) or importing the good rows (``--skip-bad``). Only operating-system errors (missing
file, no permission) propagate.

File layout: the first row of the first worksheet (or the first CSV record) is the header; data
starts on row 2. Row numbers in results are the ones a spreadsheet program shows. Headers are
Chinese, English aliases are accepted (see :data:`HEADER_ALIASES`); unknown columns are ignored.

Identity documents (ISS-8/11): an optional 证件类型 column names the document the 身份证号 /
证件号码 column holds (居民身份证 when blank; 护照, 港澳居民来往内地通行证, 台湾居民来往大陆通行证,
外国人永久居留身份证 and their short names, see :func:`protocol.cards.identity.parse_id_doc_type`);
each number is validated by its own document's format.

Cell values are read as text. Number cells are a hazard: Excel keeps 15 significant digits, so an
18-digit national ID stored as a number is already damaged (``110105194912310020`` becomes
``110105194912310000``) and is refused with
"身份证号须为文本格式 / national ID must be a text cell".
Whole-number student/staff numbers are converted exactly; leading zeros lost by Excel cannot be
detected, so numbers with leading zeros must be text cells in the source file.

CSV: decoded as ``utf-8-sig`` first and ``gb18030`` (a superset of GBK, what Chinese Excel writes)
when that fails; comma or tab delimited (sniffed from the header line).

:func:`write_table` writes exports (ISS-2 print batches, reports) as ``.xlsx`` (write-only workbook,
every string a text cell so IDs survive and nothing turns into a formula) or ``.csv`` (``utf-8-sig``
so Chinese Excel detects the encoding). Prefer ``.xlsx`` for anything holding national IDs: Excel
opening a CSV turns long digit strings into numbers.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Final, Literal

from openpyxl import Workbook, load_workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.utils.exceptions import InvalidFileException

from protocol.cards.identity import IdDocType, parse_id_doc_type, validate_id_doc
from protocol.errors import InvalidInput
from protocol.types import HolderCategory

__all__ = [
    "HEADER_ALIASES",
    "HEADER_ROW",
    "RosterKind",
    "RosterResult",
    "RosterRow",
    "RowError",
    "read_roster",
    "write_table",
]

logger = logging.getLogger("onecard.gateway.rosterio")

RosterKind = Literal["student", "staff", "meal"]
ProgressCallback = Callable[[int, int | None], None]

HEADER_ROW: Final = 1
PROGRESS_EVERY: Final = 500
MAX_NAME_LENGTH: Final = 64
MAX_TEXT_LENGTH: Final = 128
#: Rows a roster may have (a whole intake is ~10,000): a file past it is refused, unread.
MAX_DATA_ROWS: Final = 100_000
#: Sheet XML an .xlsx may unpack to (a 100,000-row roster is ~60 MiB): no zip bomb is read.
MAX_XLSX_XML_BYTES: Final = 128 * 1024 * 1024
MAX_MEAL_QUOTA: Final = 10_000
EXCEL_SIGNIFICANT_DIGITS: Final = 15

#: Canonical field -> accepted header texts (compared after :func:`_header_key`).
HEADER_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "name": ("姓名", "name"),
    "student_number": ("学号", "student_number", "student number", "student_no"),
    "staff_number": ("工号", "职工号", "staff_number", "staff number", "staff_no"),
    "college": ("学院", "college"),
    "class_name": ("班级", "class", "class_name"),
    "department": ("部门", "工作部门", "department"),
    "national_id": (
        "身份证号",
        "身份证",
        "身份证号码",
        "证件号码",
        "证件号",
        "national_id",
        "national id",
        "id_no",
        "id no",
        "document number",
    ),
    "id_doc_type": ("证件类型", "id_doc_type", "id type", "document type"),
    "photo": ("照片", "照片编号", "photo"),
    "valid_until": ("有效期", "valid_until", "valid until"),
    "category": ("人员类别", "category"),
    "meal_quota": ("用餐次数", "补贴次数", "meal_quota", "meal quota"),
}

# Display name of each field in messages: "姓名/name".
_FIELD_LABEL: Final[dict[str, tuple[str, str]]] = {
    "name": ("姓名", "name"),
    "student_number": ("学号", "student number"),
    "staff_number": ("工号", "staff number"),
    "college": ("学院", "college"),
    "class_name": ("班级", "class"),
    "department": ("部门", "department"),
    "national_id": ("身份证号", "national ID"),
    "id_doc_type": ("证件类型", "ID document type"),
    "photo": ("照片", "photo"),
    "valid_until": ("有效期", "valid until"),
    "category": ("人员类别", "category"),
    "meal_quota": ("用餐次数", "meal quota"),
}

#: Columns that must be present per roster kind.
REQUIRED_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "student": ("name", "student_number", "national_id", "college", "class_name"),  # ISS-1
    # ISS-6: the staff-number column must exist, but a value may be empty (no number yet).
    "staff": ("name", "staff_number", "national_id", "department"),
    "meal": ("staff_number", "meal_quota"),  # MEAL-1, MEAL-2
}
#: Fields that must be non-empty in every row per roster kind.
REQUIRED_VALUES: Final[dict[str, tuple[str, ...]]] = {
    "student": ("name", "student_number", "national_id", "college", "class_name"),
    "staff": ("name", "national_id", "department"),
    "meal": ("staff_number", "meal_quota"),
}
#: Fields whose values must be unique within one file (checked on non-empty values).
UNIQUE_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "student": ("student_number", "national_id"),
    "staff": ("staff_number", "national_id"),
    "meal": ("staff_number", "national_id"),
}

_CATEGORY_LABELS: Final[dict[str, HolderCategory]] = {
    "学生": HolderCategory.STUDENT,
    "教职工": HolderCategory.STAFF,
    "在职教工": HolderCategory.STAFF,
    "离退休教工": HolderCategory.RETIRED_STAFF,
    "外籍教师": HolderCategory.FOREIGN_TEACHER,
    "外聘教师": HolderCategory.EXTERNAL_TEACHER,
    "客座教授": HolderCategory.VISITING_PROFESSOR,
    "兼职教授": HolderCategory.PART_TIME_PROFESSOR,
    "特聘教授": HolderCategory.DISTINGUISHED_PROFESSOR,
    "特殊贵宾": HolderCategory.SPECIAL_GUEST,
    "临时聘用工作人员": HolderCategory.TEMPORARY_EMPLOYEE,
    "其他来校学习人员": HolderCategory.OTHER_LEARNER,
    "办理公务、交流": HolderCategory.OFFICIAL_VISITOR,
    "公务交流": HolderCategory.OFFICIAL_VISITOR,
}

_NUMBER_RE: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,31}")
_DATE_RE: Final = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})|(\d{4})(\d{2})(\d{2})")
_SCIENTIFIC_RE: Final = re.compile(r"\d(\.\d+)?E\+?\d+", re.IGNORECASE)
_INVISIBLE: Final = "\ufeff\u200b\u200c\u200d\u2060"
_FORMULA_LEAD: Final = ("=", "+", "-", "@")

CellValue = str | int | float | bool | date | datetime | None


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem found in a roster. ``row_number`` is as shown in the file (header row = 1).

    File-level problems (missing column, unreadable file) have ``row_number`` 1 (the header row) or
    0 when the file could not be read at all. ``column`` is the header text found in the file, or
    the field's label ("身份证号/national ID") when the column is missing.
    """

    row_number: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"第{self.row_number}行 / row {self.row_number}"
        if self.column:
            where += f" [{self.column}]"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RosterRow:
    """One valid roster row, normalised. Fields a roster kind does not use are ``None``."""

    row_number: int
    name: str | None = None
    student_number: str | None = None
    staff_number: str | None = None
    college: str | None = None
    class_name: str | None = None
    department: str | None = None
    national_id: str | None = None  # the number of the document ``id_doc_type`` names
    photo: str | None = None
    valid_until: date | None = None
    category: HolderCategory | None = None
    id_doc_type: IdDocType | None = None  # 证件类型; None: no such column (resident ID)
    meal_quota: int | None = None


@dataclass(slots=True)
class RosterResult:
    """Valid rows (in file order) and every problem found. Rows with any error are left out."""

    kind: RosterKind
    rows: list[RosterRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    data_rows: int = 0  # non-blank data rows seen (valid + bad)
    encoding: str | None = None  # CSV only: the encoding that decoded the file

    @property
    def ok(self) -> bool:
        """True when there is nothing to report: the all-or-nothing import may proceed."""
        return not self.errors

    @property
    def file_errors(self) -> list[RowError]:
        """Problems with the file or its header (nothing can be imported when there are any)."""
        return [e for e in self.errors if e.row_number <= HEADER_ROW]

    @property
    def bad_row_numbers(self) -> list[int]:
        return sorted({e.row_number for e in self.errors if e.row_number > HEADER_ROW})


class _RowProblem(Exception):
    """Internal: one field of one row is wrong (message already bilingual)."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(f"{zh} / {en}")
        self.reason = f"{zh} / {en}"


def _label(field_name: str) -> str:
    zh, en = _FIELD_LABEL[field_name]
    return f"{zh}/{en}"


def _header_key(text: str) -> str:
    cleaned = _clean_text(text).strip("*＊").replace("_", " ").lower()
    return " ".join(cleaned.split())


def _clean_text(value: str) -> str:
    return value.translate({ord(c): None for c in _INVISIBLE}).strip()


_ALIAS_INDEX: Final[dict[str, str]] = {
    _header_key(alias): fld for fld, aliases in HEADER_ALIASES.items() for alias in aliases
}


def _is_blank(value: CellValue) -> bool:
    return value is None or (isinstance(value, str) and not _clean_text(value))


# --- value conversions ------------------------------------------------------------------------


def _as_text(value: CellValue, field_name: str) -> str:
    """A free-text cell (name, college, ...). Numbers become their plain text."""
    if isinstance(value, str):
        text = " ".join(_clean_text(value).split())
    elif isinstance(value, bool | int):
        text = str(value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, date):
        text = value.isoformat()
    else:
        text = str(value)
    limit = MAX_NAME_LENGTH if field_name == "name" else MAX_TEXT_LENGTH
    if len(text) > limit:
        zh, en = _FIELD_LABEL[field_name]
        raise _RowProblem(
            f"{zh}过长（最多{limit}个字符）", f"{en} too long (max {limit} characters)"
        )
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        zh, en = _FIELD_LABEL[field_name]
        raise _RowProblem(f"{zh}含有控制字符", f"{en} contains control characters")
    return text


def _as_name(value: CellValue) -> str:
    text = _as_text(value, "name")
    if isinstance(value, int | float) or any(ch.isdigit() for ch in text):
        raise _RowProblem("姓名不能含数字", "name must not contain digits")
    return text


def _as_number(value: CellValue, field_name: str) -> str:
    """Student / staff number: text; whole numbers from number cells converted exactly."""
    zh, en = _FIELD_LABEL[field_name]
    if isinstance(value, bool):
        raise _RowProblem(f"{zh}格式错误", f"{en} malformed")
    if isinstance(value, float):
        if not value.is_integer():
            raise _RowProblem(f"{zh}须为文本格式", f"{en} must be a text cell")
        value = int(value)
    if isinstance(value, int):
        text = str(value)
        if len(text.lstrip("-")) > EXCEL_SIGNIFICANT_DIGITS:
            # Excel cannot hold more than 15 significant digits: the value may already be damaged.
            raise _RowProblem(f"{zh}须为文本格式", f"{en} must be a text cell")
    elif isinstance(value, str):
        text = unicodedata.normalize("NFKC", _clean_text(value))
    else:
        raise _RowProblem(f"{zh}格式错误", f"{en} malformed")
    if _SCIENTIFIC_RE.fullmatch(text):
        raise _RowProblem(f"{zh}须为文本格式", f"{en} must be a text cell")
    if not _NUMBER_RE.fullmatch(text):
        raise _RowProblem(
            f"{zh}只能包含字母、数字和连字符（最多32位）",
            f"{en} may hold only letters, digits and hyphens (max 32)",
        )
    return text


def _as_national_id(value: CellValue, doc_type: IdDocType = IdDocType.RESIDENT_ID) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise _RowProblem("身份证号须为文本格式", "national ID must be a text cell")
    if not isinstance(value, str):
        raise _RowProblem("身份证号格式错误", "national ID malformed")
    text = _clean_text(value)
    if _SCIENTIFIC_RE.fullmatch(text):  # a CSV exported from a number column: 1.10105E+17
        raise _RowProblem("身份证号须为文本格式", "national ID must be a text cell")
    try:
        return validate_id_doc(doc_type, text)
    except InvalidInput as exc:
        raise _RowProblem(exc.message_zh, exc.message_en) from None


def _as_id_doc_type(value: CellValue) -> IdDocType:
    try:
        return parse_id_doc_type(_clean_text(str(value)))
    except InvalidInput as exc:
        raise _RowProblem(exc.message_zh, exc.message_en) from None


def _as_date(value: CellValue) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a YYYYMMDD number cell
    if isinstance(value, str):
        text = unicodedata.normalize("NFKC", _clean_text(value))
        m = _DATE_RE.fullmatch(text)
        if m:
            parts = m.groups()
            y, mo, d = (
                (parts[0], parts[1], parts[2]) if parts[0] else (parts[3], parts[4], parts[5])
            )
            try:
                return date(int(y), int(mo), int(d))
            except ValueError:
                pass
    raise _RowProblem(
        "有效期须为日期（如 2026-07-31）", "valid-until must be a date (e.g. 2026-07-31)"
    )


def _as_quota(value: CellValue) -> int:
    quota: int | None = None
    if isinstance(value, bool):
        quota = None
    elif isinstance(value, int):
        quota = value
    elif isinstance(value, float) and value.is_integer():
        quota = int(value)
    elif isinstance(value, str):
        text = unicodedata.normalize("NFKC", _clean_text(value))
        if re.fullmatch(r"-?\d+", text):
            quota = int(text)
    if quota is None:
        raise _RowProblem("用餐次数须为整数", "meal quota must be a whole number")
    if quota < 0:
        raise _RowProblem("用餐次数不能为负数", "meal quota must not be negative")
    if quota > MAX_MEAL_QUOTA:
        raise _RowProblem(
            f"用餐次数过大（最多{MAX_MEAL_QUOTA}）", f"meal quota too large (max {MAX_MEAL_QUOTA})"
        )
    return quota


def _as_category(value: CellValue) -> HolderCategory:
    text = _clean_text(str(value))
    category = _CATEGORY_LABELS.get(text)
    if category is None:
        try:
            category = HolderCategory(text.lower())
        except ValueError:
            raise _RowProblem("人员类别无效", "unknown holder category") from None
    return category


_CONVERTERS: Final[dict[str, Callable[[CellValue], object]]] = {
    "name": _as_name,
    "student_number": lambda v: _as_number(v, "student_number"),
    "staff_number": lambda v: _as_number(v, "staff_number"),
    "college": lambda v: _as_text(v, "college"),
    "class_name": lambda v: _as_text(v, "class_name"),
    "department": lambda v: _as_text(v, "department"),
    "national_id": _as_national_id,
    "id_doc_type": _as_id_doc_type,
    "photo": lambda v: _as_text(v, "photo"),
    "valid_until": _as_date,
    "category": _as_category,
    "meal_quota": _as_quota,
}


# --- reading ----------------------------------------------------------------------------------


class _FileProblem(Exception):
    def __init__(self, zh: str, en: str) -> None:
        super().__init__(f"{zh} / {en}")
        self.reason = f"{zh} / {en}"


def _xlsx_rows(
    path: Path,
) -> tuple[Iterator[tuple[CellValue, ...]], int | None, Callable[[], None]]:
    try:
        with zipfile.ZipFile(path) as archive:
            # a member's declared size bounds what zipfile unpacks (a lie fails its CRC)
            unpacked = sum(i.file_size for i in archive.infolist() if not i.is_dir())
            unpacked -= sum(
                i.file_size for i in archive.infolist() if i.filename.startswith("xl/media/")
            )
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _FileProblem("无法读取Excel文件", f"cannot read the Excel file ({exc})") from None
    if unpacked > MAX_XLSX_XML_BYTES:
        mib = MAX_XLSX_XML_BYTES // (1024 * 1024)
        raise _FileProblem(
            f"Excel文件解压后过大（超过 {mib} MiB），请检查文件或分批上传",
            f"the workbook unpacks to {unpacked // (1024 * 1024)} MiB (at most {mib} MiB):"
            " check the file or split it",
        )
    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError) as exc:
        raise _FileProblem("无法读取Excel文件", f"cannot read the Excel file ({exc})") from None
    if not wb.worksheets:
        wb.close()
        raise _FileProblem("Excel文件没有工作表", "the workbook has no worksheet")
    ws = wb.worksheets[0]
    declared = ws.max_row
    total = declared - HEADER_ROW if declared is not None and declared > HEADER_ROW else None
    # Some writers leave a wrong <dimension>; read_only would then stop early. Read every row.
    ws.reset_dimensions()
    rows: Iterator[tuple[CellValue, ...]] = ws.iter_rows(values_only=True)  # type: ignore[assignment]
    return rows, total, wb.close


def _decode(raw: bytes) -> tuple[str, str]:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise _FileProblem(
        "无法识别CSV文件编码（应为UTF-8或GBK）",
        "cannot decode the CSV file (expected UTF-8 or GBK)",
    )


def _csv_rows(path: Path) -> tuple[Iterator[tuple[CellValue, ...]], str]:
    text, encoding = _decode(path.read_bytes())
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    return (tuple(r) for r in reader), encoding


def _map_header(
    header: Sequence[CellValue], kind: RosterKind, errors: list[RowError]
) -> dict[str, tuple[int, str]]:
    """Canonical field -> (column index, header text as in the file)."""
    columns: dict[str, tuple[int, str]] = {}
    for idx, cell in enumerate(header):
        if _is_blank(cell):
            continue
        text = _clean_text(str(cell))
        fld = _ALIAS_INDEX.get(_header_key(text))
        if fld is None:
            continue
        if fld in columns:
            errors.append(
                RowError(
                    HEADER_ROW,
                    text,
                    f"列重复：{text} 与 {columns[fld][1]} / "
                    f"duplicate column: {text} and {columns[fld][1]}",
                )
            )
            continue
        columns[fld] = (idx, text)
    for fld in REQUIRED_COLUMNS[kind]:
        if fld not in columns:
            zh, en = _FIELD_LABEL[fld]
            errors.append(RowError(HEADER_ROW, _label(fld), f"缺少“{zh}”列 / missing column: {en}"))
    return columns


def _nothing() -> None:
    return None


def read_roster(
    path: Path,
    kind: RosterKind,
    *,
    progress: ProgressCallback | None = None,
) -> RosterResult:
    """Read and validate a roster (``.xlsx`` or ``.csv``) of ``kind``.

    ``student`` (ISS-1): name, student number, national ID, college, class required; photo,
    validity and category optional. ``staff`` (ISS-6): name, national ID, department required; the
    staff-number column must exist but may be empty for staff without a number yet. ``meal``
    (MEAL-2): staff number and a whole meal quota >= 0 (MEAL-1); name / national ID optional.

    Duplicate numbers or national IDs are reported on the later row, naming the earlier one. Blank
    rows are skipped silently. ``progress(done, total)`` is called every :data:`PROGRESS_EVERY` data
    rows and once at the end (``done, done``); ``total`` is the size the workbook declares, ``None``
    for CSV and for workbooks that declare none (openpyxl write-only output).
    """
    if kind not in REQUIRED_COLUMNS:
        raise ValueError(f"unknown roster kind: {kind!r}")
    result = RosterResult(kind=kind)
    suffix = path.suffix.lower()
    close: Callable[[], None] = _nothing
    total: int | None = None
    if suffix not in {".xlsx", ".xlsm", ".csv", ".tsv", ".txt"}:
        reason = (
            f"不支持的文件类型 {suffix or '(无)'}，请使用 .xlsx 或 .csv / "
            f"unsupported file type {suffix or '(none)'}; use .xlsx or .csv"
        )
        result.errors.append(RowError(0, None, reason))
        return result
    try:
        if suffix in {".xlsx", ".xlsm"}:
            rows, total, close = _xlsx_rows(path)
        else:
            rows, result.encoding = _csv_rows(path)
    except _FileProblem as exc:
        result.errors.append(RowError(0, None, exc.reason))
        return result
    try:
        _read_rows(rows, total, kind, result, progress)
    except _FileProblem as exc:
        result.errors.append(RowError(0, None, exc.reason))
    finally:
        close()
    logger.info(
        "roster read: kind=%s file=%s data_rows=%d valid=%d errors=%d",
        kind,
        path.name,
        result.data_rows,
        len(result.rows),
        len(result.errors),
    )
    return result


def _read_rows(
    rows: Iterator[tuple[CellValue, ...]],
    total: int | None,
    kind: RosterKind,
    result: RosterResult,
    progress: ProgressCallback | None,
) -> None:
    try:
        header = next(rows)
    except StopIteration:
        raise _FileProblem("文件为空", "the file is empty") from None
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise _FileProblem("无法读取Excel文件", f"cannot read the Excel file ({exc})") from None
    columns = _map_header(header, kind, result.errors)
    if result.errors:
        return
    required = REQUIRED_VALUES[kind]
    unique = [f for f in UNIQUE_FIELDS[kind] if f in columns]
    seen: dict[str, dict[str, int]] = {f: {} for f in unique}
    done = 0
    for row_number, raw in enumerate(rows, start=HEADER_ROW + 1):
        if all(_is_blank(v) for v in raw):
            continue
        done += 1
        if done > MAX_DATA_ROWS:
            result.rows.clear()
            result.errors.clear()  # the file's one problem, not 100,000 row complaints
            raise _FileProblem(
                f"行数过多（最多 {MAX_DATA_ROWS} 行），请分批上传",
                f"too many rows (at most {MAX_DATA_ROWS}): split the file",
            )
        result.data_rows += 1
        values, problems = _parse_row(row_number, raw, columns, required)
        for fld in unique:
            key = values.get(fld)
            if not isinstance(key, str):
                continue
            first = seen[fld].setdefault(key, row_number)
            if first != row_number:
                zh, en = _FIELD_LABEL[fld]
                idx, header_text = columns[fld]
                reason = f"{zh}与第{first}行重复 / {en} duplicates row {first}"
                problems.append((idx, RowError(row_number, header_text, reason)))
        if problems:
            problems.sort(key=lambda p: p[0])  # report in column order
            result.errors.extend(err for _, err in problems)
        else:
            result.rows.append(RosterRow(row_number=row_number, **values))  # type: ignore[arg-type]
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done, total if total is not None and total >= done else None)
    if progress is not None:
        progress(done, done)


def _parse_row(
    row_number: int,
    raw: tuple[CellValue, ...],
    columns: dict[str, tuple[int, str]],
    required: tuple[str, ...],
) -> tuple[dict[str, object], list[tuple[int, RowError]]]:
    """Converted values of the fields that parsed, and (column index, error) for the others."""
    values: dict[str, object] = {}
    problems: list[tuple[int, RowError]] = []
    # the document type first: the ID number is validated by its document's format (ISS-8/11)
    ordered = sorted(columns.items(), key=lambda item: item[0] != "id_doc_type")
    for fld, (idx, header_text) in ordered:
        cell = raw[idx] if idx < len(raw) else None
        if _is_blank(cell):
            if fld in required:
                zh, en = _FIELD_LABEL[fld]
                problems.append(
                    (idx, RowError(row_number, header_text, f"{zh}为空 / {en} is empty"))
                )
            continue
        doc_type = values.get("id_doc_type")
        if fld == "national_id" and "id_doc_type" in columns and doc_type is None:
            type_cell = columns["id_doc_type"][0]
            if type_cell < len(raw) and not _is_blank(raw[type_cell]):
                continue  # an unknown document type: its number cannot be checked
        try:
            if fld == "national_id" and isinstance(doc_type, IdDocType):
                values[fld] = _as_national_id(cell, doc_type)
            else:
                values[fld] = _CONVERTERS[fld](cell)
        except _RowProblem as exc:
            problems.append((idx, RowError(row_number, header_text, exc.reason)))
    return values, problems


# --- writing ----------------------------------------------------------------------------------


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_LEAD):
        # CSV injection guard (OWASP): Excel would evaluate "=...", "+...", "-...", "@...".
        return "'" + text
    return text


def write_table(path: Path, headers: list[str], rows: Iterable[Sequence[object]]) -> int:
    """Write ``headers`` and ``rows`` to ``path`` (``.xlsx`` or ``.csv`` by suffix); rows written.

    Streams (write-only workbook / csv writer) and replaces ``path`` atomically. In ``.xlsx`` every
    string is stored as a text cell (IDs keep all digits, ``=...`` never becomes a formula); dates
    and numbers keep their types. ``.csv`` is ``utf-8-sig`` for Chinese Excel.
    """
    suffix = path.suffix.lower()
    if suffix not in {".xlsx", ".csv"}:
        raise InvalidInput(
            f"不支持的文件类型 {suffix or '(无)'}，请使用 .xlsx 或 .csv",
            f"unsupported file type {suffix or '(none)'}; use .xlsx or .csv",
        )
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    try:
        if suffix == ".xlsx":
            count = _write_xlsx(tmp, headers, rows)
        else:
            with tmp.open("w", encoding="utf-8-sig", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow([_csv_cell(h) for h in headers])
                for row in rows:
                    writer.writerow([_csv_cell(v) for v in row])
                    count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("table written: file=%s rows=%d", path.name, count)
    return count


def _write_xlsx(tmp: Path, headers: list[str], rows: Iterable[Sequence[object]]) -> int:
    wb = Workbook(write_only=True)
    ws = wb.create_sheet()

    def cell(value: object) -> object:
        if value is None or isinstance(value, bool | int | float | date):
            return value
        text_cell = WriteOnlyCell(ws, value=None)
        text_cell.value = str(value)
        text_cell.data_type = "s"
        return text_cell

    ws.append([cell(h) for h in headers])
    count = 0
    for row in rows:
        ws.append([cell(v) for v in row])
        count += 1
    wb.save(tmp)
    return count
