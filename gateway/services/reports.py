"""The counter's reports and registers as bilingual tables (ISS, FEE, SCR, TERM, INV, EXC).

Every report returns a :class:`Table`: a Chinese and an English title, bilingual headers
(``"学号 / number"``) and plain rows, so the CLI can print it (rich) or write it
(:func:`gateway.rosterio.write_table`, ``.xlsx`` or ``.csv``). Cells are ``str``, ``int``,
``date`` or ``None``: times are campus time (UTC+8) text ``"2026-11-23 10:05"`` (spreadsheets
cannot hold time zones), money is a yuan string ``"12.00"`` made from integer fen, an empty cell
is ``None`` (never ``""``: a spreadsheet reads both back as empty). Reports with totals end with
one row whose first cell is :data:`TOTAL`.

Personal data: names and student/staff numbers appear (these are the counter's own registers,
FEE-3, TERM-5, ISS-2); national IDs never do. None is selected from the database, and the audit
log's free text is passed through :func:`protocol.cards.identity.mask_national_id` for anything
shaped like one.

Queries. Each report runs in one read transaction with portable SQL through ``Tx.rows`` (standard
SQL, ``:name`` bound parameters, no dialect functions; aggregates with ``GROUP BY`` where the data
can be large, i.e. ledger transfers and card events). ``Tx.rows`` is raw text SQL, so the
registry's ``UtcDateTime`` type decorator does not apply in either direction:

* bounds are computed in Python (campus day/month -> UTC) and bound by :func:`_time_param` as the
  aware datetime on PostgreSQL (``timestamptz``) and, on SQLite, as naive-UTC text in exactly the
  form SQLAlchemy stores there (``YYYY-MM-DD HH:MM:SS.ffffff``), so ``at >= :start AND at < :end``
  compares text of one fixed width and stays index-friendly;
* time columns read back are normalised by :func:`_utc` (SQLite hands back that text; asyncpg an
  aware datetime), booleans by ``bool`` (SQLite: 0/1), sums by ``int`` (PostgreSQL's ``SUM`` of a
  ``bigint`` is ``numeric``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from gateway.services.base import Actor, Context
from gateway.services.common import live_card
from gateway.services.offline import BEARER_NAMES
from protocol.cards.clock import CAMPUS_TZ, fmt_local, local, require_aware
from protocol.cards.fees import yuan
from protocol.cards.identity import mask_id_doc, mask_national_id
from protocol.errors import ErrorCode, InvalidInput, bilingual
from protocol.types import CardKind, HolderCategory, HolderKind, Permission
from protocol.wire import mask_card
from storage.ports import Tx
from storage.records import Row

#: First cell of a totals row.
TOTAL = "合计 / total"
#: EXC-6: faulty cards go back to the vendor in lots of this many.
WARRANTY_LOT_SIZE = 100
YES = "是 / yes"
NO = "否 / no"

#: How SQLAlchemy's SQLite DATETIME stores a (naive UTC, see storage.schema.UtcDateTime) value.
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

KIND_NAMES: dict[str, str] = {
    CardKind.SMART.value: "智能卡 / smart",
    CardKind.TEMP.value: "临时卡 / temp",
}
HOLDER_KIND_NAMES: dict[str, str] = {
    HolderKind.STUDENT.value: "学生 / student",
    HolderKind.STAFF.value: "教职工 / staff",
    HolderKind.TEMPORARY.value: "其他人员 / other",
}
CATEGORY_NAMES: dict[str, str] = {
    HolderCategory.STUDENT.value: "学生 / student",
    HolderCategory.STAFF.value: "教职工 / staff",
    HolderCategory.RETIRED_STAFF.value: "离退休教工 / retired staff",
    HolderCategory.FOREIGN_TEACHER.value: "外籍教师 / foreign teacher",
    HolderCategory.EXTERNAL_TEACHER.value: "外聘教师 / external teacher",
    HolderCategory.VISITING_PROFESSOR.value: "客座教授 / visiting professor",
    HolderCategory.PART_TIME_PROFESSOR.value: "兼职教授 / part-time professor",
    HolderCategory.DISTINGUISHED_PROFESSOR.value: "特聘教授 / distinguished professor",
    HolderCategory.SPECIAL_GUEST.value: "特殊贵宾 / special guest",
    HolderCategory.TEMPORARY_EMPLOYEE.value: "临时聘用工作人员 / temporary employee",
    HolderCategory.OTHER_LEARNER.value: "其他来校学习人员 / other learner",
    HolderCategory.OFFICIAL_VISITOR.value: "公务交流人员 / official visitor",
}

#: An 18-character national ID (GB 11643) inside free text, e.g. in the audit log's JSON.
_NATIONAL_ID_RE = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")


@dataclass(frozen=True, slots=True)
class Table:
    """One report: titles, bilingual headers and rows (see the module docstring for cells)."""

    title_zh: str
    title_en: str
    headers: list[str]
    rows: list[list[object]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.title_zh} / {self.title_en}"

    def as_dicts(self) -> list[dict[str, object]]:
        """Rows keyed by their full bilingual header (totals row included)."""
        return [dict(zip(self.headers, row, strict=True)) for row in self.rows]

    @property
    def money_columns(self) -> list[int]:
        """The columns holding yuan amounts (header ``... (yuan)``): numbers with a money format
        in a spreadsheet."""
        return [i for i, h in enumerate(self.headers) if "(yuan)" in h]

    @property
    def sheet_name(self) -> str:
        """The Chinese title as a worksheet name (Excel: at most 31 characters, none of
        ``[]:*?/\\``)."""
        name = re.sub(r"[\[\]:*?/\\]", "-", self.title_zh).strip("' ") or "报表"
        return name[:31]

    def column(self, header: str) -> list[object]:
        """The cells of one column, named by its full header or either half of it."""
        for index, full in enumerate(self.headers):
            if header == full or header in (part.strip() for part in full.split(" / ")):
                return [row[index] for row in self.rows]
        raise KeyError(header)


# --- helpers -----------------------------------------------------------------------------------


def _time_param(tx: Tx, moment: datetime) -> object:
    """A bound time for raw SQL: see the module docstring (dialect-dependent on purpose)."""
    utc = require_aware(moment).astimezone(UTC)
    if tx.dialect == "sqlite":
        return utc.replace(tzinfo=None).strftime(SQLITE_TIME_FORMAT)
    return utc


def _utc(value: object) -> datetime | None:
    """A time column read through raw SQL, as an aware UTC datetime."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _when(value: object) -> str | None:
    """Campus time text for a time column, or None."""
    moment = _utc(value)
    return fmt_local(moment) if moment is not None else None


def _campus_day(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), CAMPUS_TZ)
    return start, start + timedelta(days=1)


def _campus_month(year: int, month: int) -> tuple[datetime, datetime]:
    if not 1 <= month <= 12:
        raise InvalidInput(f"月份无效：{month}", f"invalid month: {month}")
    start = datetime(year, month, 1, tzinfo=CAMPUS_TZ)
    following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=CAMPUS_TZ)
    return start, following


def _period(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    require_aware(since)
    require_aware(until)
    if until <= since:
        raise InvalidInput("结束时间须晚于开始时间", "the period must end after it starts")
    return since, until


def _yes_no(value: object) -> str:
    return YES if bool(value) else NO


def _mask_ids(text: object) -> str | None:
    if text is None:
        return None
    return _NATIONAL_ID_RE.sub(lambda m: mask_national_id(m.group(0)), str(text))


def _label(names: Mapping[str, str], key: object) -> str:
    text = str(key or "")
    return names.get(text, text)


def _sum(rows: Iterable[Sequence[object]], index: int) -> int:
    return sum(value for row in rows if isinstance(value := row[index], int))


# --- the service -------------------------------------------------------------------------------


class ReportService:
    """Read-only reports; each method checks the actor's permission (ACC-1: report queries)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def _query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        async with self.ctx.registry.read() as tx:
            return await tx.rows(sql, params)

    # --- ISS ----------------------------------------------------------------------------------
    async def print_batch(
        self, actor: Actor, *, college: str | None = None, class_name: str | None = None
    ) -> Table:
        """ISS-2: the vendor's print batch: every smart card in state ``printing`` with the
        holder's name, number, college, class (department for staff), photo reference and the
        card serial. Photos are collected per class, so a college and class may be given."""
        actor.require(Permission.CARD_HANDLING)
        where = ["c.kind = :kind", "c.state = :state"]
        params: dict[str, Any] = {"kind": CardKind.SMART.value, "state": "printing"}
        if college is not None:
            where.append("h.college = :college")
            params["college"] = college
        if class_name is not None:
            where.append("h.class_name = :class_name")
            params["class_name"] = class_name
        # the WHERE fragments are constants of this module; values are bound
        rows = await self._query(
            "SELECT c.serial, h.name, h.number, h.college, h.class_name, h.department,"  # noqa: S608
            " h.photo_ref FROM cards c JOIN holders h ON h.id = c.holder_id"
            f" WHERE {' AND '.join(where)}"
            " ORDER BY h.college, h.class_name, h.department, h.number, c.serial",
            params,
        )
        return Table(
            "智能卡制卡批次",
            "smart card print batch",
            [
                "卡号 / serial",
                "姓名 / name",
                "学号/工号 / number",
                "学院 / college",
                "班级 / class",
                "部门 / department",
                "照片 / photo",
            ],
            [
                [
                    r["serial"],
                    r["name"],
                    r["number"],
                    r["college"],
                    r["class_name"],
                    r["department"],
                    r["photo_ref"],
                ]
                for r in rows
            ],
        )

    async def issuance(self, actor: Actor, since: datetime, until: datetime) -> Table:
        """ISS-5 / ISS-7: smart cards handed over (of which replacement or exchange cards) and
        temp cards recovered (handed in for the smart card, ISS-4) in ``[since, until)``, per
        holder kind and college (students) or department (staff), from the card history."""
        actor.require(Permission.REPORTS)
        since, until = _period(since, until)
        async with self.ctx.registry.read() as tx:
            rows = await tx.rows(
                "SELECT h.kind AS holder_kind,"
                " COALESCE(h.college, h.department, '') AS unit,"
                " SUM(CASE WHEN e.event = 'hand_over' AND c.kind = 'smart'"
                " THEN 1 ELSE 0 END) AS smart_issued,"
                " SUM(CASE WHEN e.event = 'hand_over' AND c.kind = 'smart'"
                " AND c.replaces_card_id IS NOT NULL THEN 1 ELSE 0 END) AS smart_renewed,"
                " SUM(CASE WHEN e.event = 'recover' AND c.kind = 'temp'"
                " THEN 1 ELSE 0 END) AS temp_recovered"
                " FROM card_events e"
                " JOIN cards c ON c.id = e.card_id"
                " JOIN holders h ON h.id = c.holder_id"
                " WHERE e.event IN ('hand_over', 'recover')"
                " AND e.at >= :since AND e.at < :until"
                " GROUP BY h.kind, COALESCE(h.college, h.department, '')"
                " ORDER BY h.kind, COALESCE(h.college, h.department, '')",
                {"since": _time_param(tx, since), "until": _time_param(tx, until)},
            )
        body: list[list[object]] = [
            [
                _label(HOLDER_KIND_NAMES, r["holder_kind"]),
                r["unit"] or None,
                int(r["smart_issued"]),
                int(r["smart_renewed"]),
                int(r["temp_recovered"]),
            ]
            for r in rows
            if int(r["smart_issued"]) or int(r["temp_recovered"])
        ]
        total: list[object] = [TOTAL, None, _sum(body, 2), _sum(body, 3), _sum(body, 4)]
        return Table(
            f"发卡统计（{fmt_local(since)} 至 {fmt_local(until)}）",
            f"card issuance ({fmt_local(since)} to {fmt_local(until)})",
            [
                "持卡人类别 / holder kind",
                "学院/部门 / college or department",
                "发放智能卡 / smart cards handed over",
                "其中补换卡 / of which replacements",
                "回收临时卡 / temp cards recovered",
            ],
            [*body, total],
        )

    async def temp_monthly(self, actor: Actor, year: int, month: int) -> Table:
        """ISS-12: temp cards issued in one campus-time month (UTC+8 boundaries), per holder kind
        and category, with how many were replacements/exchanges and how many deposits were
        taken (ISS-10) in the month."""
        actor.require(Permission.REPORTS)
        start, end = _campus_month(year, month)
        async with self.ctx.registry.read() as tx:
            bounds = {"start": _time_param(tx, start), "end": _time_param(tx, end)}
            issued = await tx.rows(
                "SELECT h.kind AS holder_kind, h.category AS category, COUNT(*) AS issued,"
                " SUM(CASE WHEN c.replaces_card_id IS NOT NULL THEN 1 ELSE 0 END) AS renewed"
                " FROM card_events e"
                " JOIN cards c ON c.id = e.card_id"
                " JOIN holders h ON h.id = c.holder_id"
                " WHERE e.event = 'issue' AND c.kind = 'temp'"
                " AND e.at >= :start AND e.at < :end"
                " GROUP BY h.kind, h.category ORDER BY h.kind, h.category",
                bounds,
            )
            deposits = await tx.rows(
                "SELECT h.kind AS holder_kind, h.category AS category, COUNT(*) AS deposits"
                " FROM transfers t"
                " JOIN accounts a ON a.id = t.dest"
                " JOIN holders h ON h.id = a.holder_id"
                " WHERE t.kind = 'deposit_in' AND t.at >= :start AND t.at < :end"
                " GROUP BY h.kind, h.category",
                bounds,
            )
        paid = {(r["holder_kind"], r["category"]): int(r["deposits"]) for r in deposits}
        keys = sorted({(r["holder_kind"], r["category"]) for r in issued} | set(paid))
        counts = {(r["holder_kind"], r["category"]): r for r in issued}
        body: list[list[object]] = []
        for key in keys:
            row = counts.get(key)
            body.append(
                [
                    _label(HOLDER_KIND_NAMES, key[0]),
                    _label(CATEGORY_NAMES, key[1]),
                    int(row["issued"]) if row else 0,
                    int(row["renewed"]) if row else 0,
                    paid.get(key, 0),
                ]
            )
        total: list[object] = [TOTAL, None, _sum(body, 2), _sum(body, 3), _sum(body, 4)]
        return Table(
            f"临时卡发放月报（{year}年{month}月）",
            f"temp cards issued, {year}-{month:02d}",
            [
                "持卡人类别 / holder kind",
                "人员类别 / category",
                "发放临时卡 / temp cards issued",
                "其中补换卡 / of which replacements",
                "收取押金 / deposits taken",
            ],
            [*body, total],
        )

    # --- FEE ----------------------------------------------------------------------------------
    async def receipts(self, actor: Actor, since: datetime, until: datetime) -> Table:
        """FEE-3: the electronic record of every receipt issued in ``[since, until)``: number,
        date, payer, item, amount, cashier and receipt book (the payer's name is shown: this is
        the counter's own receipt ledger; national IDs never are)."""
        actor.require(Permission.REPORTS)
        since, until = _period(since, until)
        async with self.ctx.registry.read() as tx:
            rows = await tx.rows(
                "SELECT r.receipt_no, r.at, r.payer, r.item, r.amount, r.cashier, b.book_no"
                " FROM receipts r JOIN receipt_books b ON b.id = r.book_id"
                " WHERE r.at >= :since AND r.at < :until"
                " ORDER BY r.receipt_no",
                {"since": _time_param(tx, since), "until": _time_param(tx, until)},
            )
        total = sum(int(r["amount"]) for r in rows)
        body: list[list[object]] = [
            [
                int(r["receipt_no"]),
                _when(r["at"]),
                r["payer"],
                r["item"],
                yuan(int(r["amount"])),
                r["cashier"],
                r["book_no"],
            ]
            for r in rows
        ]
        return Table(
            "收据登记表",
            "receipt register",
            [
                "收据号 / receipt no.",
                "日期 / date",
                "交款人 / payer",
                "项目 / item",
                "金额（元） / amount (yuan)",
                "收款人 / cashier",
                "收据本 / book",
            ],
            [*body, [TOTAL, None, None, f"{len(rows)} 张 / receipts", yuan(total), None, None]],
        )

    async def receipt_books(self, actor: Actor) -> Table:
        """FEE-4: every receipt book from finance with its numbers used and unused, the amount
        taken, when it was used up and the reconciliation it went back to finance in."""
        actor.require(Permission.REPORTS)
        rows = await self._query(
            "SELECT b.book_no, b.first_no, b.last_no, b.received_at, b.received_by,"
            " b.used_up_at, b.reconciliation_id,"
            " COUNT(r.id) AS used, COALESCE(SUM(r.amount), 0) AS total"
            " FROM receipt_books b LEFT JOIN receipts r ON r.book_id = b.id"
            " GROUP BY b.id, b.book_no, b.first_no, b.last_no, b.received_at, b.received_by,"
            " b.used_up_at, b.reconciliation_id"
            " ORDER BY b.id"
        )
        return Table(
            "收据本登记表",
            "receipt books",
            [
                "收据本 / book",
                "起始号 / first no.",
                "终止号 / last no.",
                "领用日期 / received",
                "领用人 / received by",
                "已用 / used",
                "未用 / unused",
                "金额（元） / amount (yuan)",
                "用完日期 / used up",
                "核对批次 / reconciliation",
            ],
            [
                [
                    r["book_no"],
                    int(r["first_no"]),
                    int(r["last_no"]),
                    _when(r["received_at"]),
                    r["received_by"],
                    int(r["used"]),
                    int(r["last_no"]) - int(r["first_no"]) + 1 - int(r["used"]),
                    yuan(int(r["total"])),
                    _when(r["used_up_at"]),
                    None if r["reconciliation_id"] is None else int(r["reconciliation_id"]),
                ]
                for r in rows
            ],
        )

    # --- SCR ----------------------------------------------------------------------------------
    async def scrap_register(
        self, actor: Actor, year: int | None = None, *, disposal_year: int | None = None
    ) -> Table:
        """SCR-2: the scrap register, one row per card, with the year of the disposal that took
        it (empty while not yet disposed). ``year`` keeps the cards scrapped in that campus-time
        year; ``disposal_year`` those disposed of in that year's disposal."""
        actor.require(Permission.REPORTS)
        where: list[str] = []
        params: dict[str, Any] = {}
        async with self.ctx.registry.read() as tx:
            if year is not None:
                start, _ = _campus_month(year, 1)
                end, _ = _campus_month(year + 1, 1)
                where.append("s.at >= :start AND s.at < :end")
                params.update(start=_time_param(tx, start), end=_time_param(tx, end))
            if disposal_year is not None:
                where.append("d.year = :disposal_year")
                params["disposal_year"] = disposal_year
            rows = await tx.rows(
                "SELECT s.id, s.at, s.serial, s.card_kind, s.reason, s.actor,"  # noqa: S608
                " d.year AS disposed"
                " FROM scrap_register s LEFT JOIN disposals d"
                " ON s.id >= d.first_scrap_id AND s.id <= d.last_scrap_id"
                + (f" WHERE {' AND '.join(where)}" if where else "")
                + " ORDER BY s.id",
                params,
            )
        return Table(
            "报废卡登记表" + (f"（{year}年）" if year is not None else ""),
            "scrap register" + (f" ({year})" if year is not None else ""),
            [
                "序号 / no.",
                "报废日期 / scrapped",
                "卡号 / serial",
                "卡类 / kind",
                "回收原因 / recovered as",
                "经办人 / operator",
                "处置年度 / disposal year",
            ],
            [
                [
                    int(r["id"]),
                    _when(r["at"]),
                    r["serial"],
                    _label(KIND_NAMES, r["card_kind"]),
                    r["reason"],
                    r["actor"],
                    None if r["disposed"] is None else int(r["disposed"]),
                ]
                for r in rows
            ],
        )

    # --- REP-4 / EXC-5 / ISS-4 / ISS-7 ---------------------------------------------------------
    async def hand_overs(self, actor: Actor, year: int | None = None) -> Table:
        """REP-4 / EXC-5 "签字领取": the collection register, one row per card handed over: who
        collected it (ID masked; whether it was the holder), signed or not, the fee receipt
        shown and the card taken back. ``year`` keeps one campus-time year."""
        actor.require(Permission.REPORTS)
        where: list[str] = []
        params: dict[str, Any] = {}
        async with self.ctx.registry.read() as tx:
            if year is not None:
                start, _ = _campus_month(year, 1)
                end, _ = _campus_month(year + 1, 1)
                where.append("o.at >= :start AND o.at < :end")
                params.update(start=_time_param(tx, start), end=_time_param(tx, end))
            rows = await tx.rows(
                "SELECT o.id, o.at, c.serial, c.kind, h.number, h.name, o.rule,"  # noqa: S608
                " o.collector_name, o.collector_doc, o.collector_is_holder, o.signed,"
                " o.receipt_no, r.serial AS returned, o.actor"
                " FROM hand_overs o JOIN cards c ON c.id = o.card_id"
                " JOIN holders h ON h.id = c.holder_id"
                " LEFT JOIN cards r ON r.id = o.returned_card_id"
                + (f" WHERE {' AND '.join(where)}" if where else "")
                + " ORDER BY o.id",
                params,
            )
        return Table(
            "领卡登记表" + (f"（{year}年）" if year is not None else ""),
            "hand-over register" + (f" ({year})" if year is not None else ""),
            [
                "序号 / no.",
                "领取时间 / collected",
                "卡号 / serial",
                "卡类 / kind",
                "学号/工号 / number",
                "持卡人 / holder",
                "规则 / rule",
                "领卡人 / collector",
                "证件 / id shown",
                "本人 / in person",
                "签字 / signed",
                "票据号 / receipt",
                "交回的卡 / card returned",
                "经办人 / operator",
            ],
            [
                [
                    int(r["id"]),
                    _when(r["at"]),
                    r["serial"],
                    _label(KIND_NAMES, r["kind"]),
                    r["number"],
                    r["name"],
                    r["rule"],
                    r["collector_name"],
                    None if r["collector_doc"] is None else mask_id_doc(r["collector_doc"]),
                    _yes_no(r["collector_is_holder"]),
                    _yes_no(r["signed"]),
                    r["receipt_no"],
                    r["returned"],
                    r["actor"],
                ]
                for r in rows
            ],
        )

    # --- TERM ---------------------------------------------------------------------------------
    async def clearances(self, actor: Actor, college: str, class_name: str) -> Table:
        """TERM-5: the class's graduation clearances: per student number, the certificate
        number, whether the card came back, and the receipt of the missing-card fee."""
        actor.require(Permission.REPORTS)
        rows = await self._query(
            "SELECT h.number, h.name, l.certificate_no, l.card_returned, l.receipt_no, l.at"
            " FROM clearances l JOIN holders h ON h.id = l.holder_id"
            " WHERE l.college = :college AND l.class_name = :class_name"
            " ORDER BY h.number, l.id",
            {"college": college, "class_name": class_name},
        )
        return Table(
            f"毕业离校清卡表（{college} {class_name}）",
            f"graduation clearances ({college} {class_name})",
            [
                "学号 / number",
                "姓名 / name",
                "证明编号 / certificate",
                "已交卡 / card returned",
                "收据号 / receipt no.",
                "日期 / date",
            ],
            [
                [
                    r["number"],
                    r["name"],
                    r["certificate_no"],
                    _yes_no(r["card_returned"]),
                    None if r["receipt_no"] is None else int(r["receipt_no"]),
                    _when(r["at"]),
                ]
                for r in rows
            ],
        )

    # --- settlement ---------------------------------------------------------------------------
    async def daily_settlement(self, actor: Actor, day: date) -> Table:
        """Per merchant, for one campus-time day (00:00-24:00 UTC+8): sales (purchases from
        purses and subsidised meals paid by the fund, MEAL), corrections (TOP-2) and reversals
        given back, and the net the merchant is owed. Aggregated in SQL (the ledger is large);
        registered merchants without sales are listed with zeros."""
        actor.require(Permission.REPORTS)
        start, end = _campus_day(day)
        async with self.ctx.registry.read() as tx:
            rows = await tx.rows(
                "SELECT CASE WHEN t.kind IN ('purchase', 'subsidy') THEN t.dest"
                " ELSE t.source END AS account,"
                " t.kind AS kind, COUNT(*) AS n, SUM(t.amount) AS total"
                " FROM transfers t"
                " WHERE t.at >= :start AND t.at < :end AND ("
                " (t.kind IN ('purchase', 'subsidy') AND t.dest LIKE :prefix)"
                " OR (t.kind IN ('correction', 'reversal') AND t.source LIKE :prefix))"
                " GROUP BY CASE WHEN t.kind IN ('purchase', 'subsidy') THEN t.dest"
                " ELSE t.source END, t.kind",
                {
                    "start": _time_param(tx, start),
                    "end": _time_param(tx, end),
                    "prefix": "merchant:%",
                },
            )
            merchants = await tx.find("merchants", order_by="id")
        names = {str(m["id"]): str(m["name"]) for m in merchants}
        figures: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for merchant_id in names:
            figures[merchant_id]["sales"] += 0  # registered merchants are listed without sales
        for r in rows:
            merchant_id = str(r["account"]).split(":", 1)[1]
            entry = figures[merchant_id]
            if r["kind"] == "purchase":
                entry["sales"] += int(r["n"])
                entry["sales_total"] += int(r["total"])
            elif r["kind"] == "subsidy":
                entry["subsidy"] += int(r["n"])
                entry["subsidy_total"] += int(r["total"])
            else:
                entry["returns"] += int(r["n"])
                entry["returns_total"] += int(r["total"])
        body: list[list[object]] = []
        sums: dict[str, int] = defaultdict(int)
        for merchant_id in sorted(figures):
            f = figures[merchant_id]
            net = f["sales_total"] + f["subsidy_total"] - f["returns_total"]
            for key, value in (*f.items(), ("net", net)):
                sums[key] += value
            body.append(
                [
                    merchant_id,
                    names.get(merchant_id),
                    f["sales"],
                    yuan(f["sales_total"]),
                    f["subsidy"],
                    yuan(f["subsidy_total"]),
                    f["returns"],
                    yuan(f["returns_total"]),
                    yuan(net),
                ]
            )
        total: list[object] = [
            TOTAL,
            None,
            sums["sales"],
            yuan(sums["sales_total"]),
            sums["subsidy"],
            yuan(sums["subsidy_total"]),
            sums["returns"],
            yuan(sums["returns_total"]),
            yuan(sums["net"]),
        ]
        return Table(
            f"商户日结算表（{day.isoformat()}）",
            f"daily merchant settlement ({day.isoformat()})",
            [
                "商户 / merchant",
                "名称 / name",
                "消费笔数 / sales",
                "消费金额（元） / sales (yuan)",
                "补贴笔数 / subsidised meals",
                "补贴金额（元） / subsidy (yuan)",
                "纠错/冲正笔数 / corrections",
                "纠错/冲正金额（元） / corrections (yuan)",
                "应结金额（元） / net (yuan)",
            ],
            [*body, total],
        )

    async def offline_disputes(self, actor: Actor, since: datetime, until: datetime) -> Table:
        """Offline sales uploaded in the period that were refused or are disputed (terminal
        contract §8.3, :mod:`gateway.services.offline`): terminal, masked card, amount, sale
        time, merchant named, deny-list version held, result, who bears it and why."""
        actor.require(Permission.REPORTS)
        start, end = _period(since, until)
        async with self.ctx.registry.read() as tx:
            rows = await tx.rows(
                "SELECT terminal_id, seq, card_uid, amount, sold_at, at_ms, uploaded_at,"
                " merchant_id, denylist_version, result, bearer, detail FROM offline_sales"
                " WHERE uploaded_at >= :start AND uploaded_at < :end"
                " AND (result <> 'accepted' OR detail IS NOT NULL)"
                " ORDER BY uploaded_at, terminal_id, seq",
                {"start": _time_param(tx, start), "end": _time_param(tx, end)},
            )
        body: list[list[object]] = [
            [
                r["terminal_id"],
                int(r["seq"]),
                mask_card(str(r["card_uid"])),
                yuan(int(r["amount"])),
                _when(r["sold_at"]) or (f"at_ms={r['at_ms']}" if r["at_ms"] is not None else None),
                _when(r["uploaded_at"]),
                r["merchant_id"],
                None if r["denylist_version"] is None else int(r["denylist_version"]),
                _offline_result(str(r["result"])),
                _label(BEARER_NAMES, r["bearer"]) if r["bearer"] else None,
                r["detail"],
            ]
            for r in rows
        ]
        amount = sum(int(r["amount"]) for r in rows)
        total: list[object] = [TOTAL, len(body), None, yuan(amount), *[None] * 7]
        return Table(
            "脱机交易拒付及争议清单",
            "refused and disputed offline sales",
            [
                "终端 / terminal",
                "序号 / seq",
                "卡片 / card",
                "金额（元） / amount (yuan)",
                "消费时间 / sold at",
                "上传时间 / uploaded at",
                "商户 / merchant",
                "黑名单版本 / deny-list version",
                "结果 / result",
                "承担方 / borne by",
                "说明 / detail",
            ],
            [*body, total],
        )

    # --- INV ----------------------------------------------------------------------------------
    async def stock(self, actor: Actor) -> Table:
        """INV-1 / INV-2: per card kind: bought, requisitioned by the counter, left with the
        section chief, used (cards made) and left at the counter."""
        actor.require(Permission.REPORTS)
        async with self.ctx.registry.read() as tx:
            bought = await tx.rows(
                "SELECT kind, SUM(count) AS n FROM stock_purchases GROUP BY kind"
            )
            taken = await tx.rows("SELECT kind, SUM(count) AS n FROM requisitions GROUP BY kind")
            used = await tx.rows("SELECT kind, COUNT(*) AS n FROM cards GROUP BY kind")

        def by_kind(rows: list[Row]) -> dict[str, int]:
            return {str(r["kind"]): int(r["n"]) for r in rows}

        b, t, u = by_kind(bought), by_kind(taken), by_kind(used)
        body: list[list[object]] = []
        for kind in CardKind:
            k = kind.value
            got, req, made = b.get(k, 0), t.get(k, 0), u.get(k, 0)
            body.append([KIND_NAMES[k], got, req, got - req, made, req - made])
        return Table(
            "空白卡库存",
            "blank card stock",
            [
                "卡类 / kind",
                "购入 / bought",
                "领用 / requisitioned",
                "科长处库存 / central stock",
                "已制卡 / used",
                "柜台库存 / counter stock",
            ],
            body,
        )

    async def requisitions(self, actor: Actor) -> Table:
        """INV-2: the 新卡领用登记表: date, kind, count, serial range, who asked, who issued,
        and the stated usage."""
        actor.require(Permission.REPORTS)
        rows = await self._query(
            "SELECT at, kind, count, serial_from, serial_to, requested_by, issued_by, usage_note"
            " FROM requisitions ORDER BY id"
        )
        return Table(
            "新卡领用登记表",
            "card requisitions",
            [
                "日期 / date",
                "卡类 / kind",
                "数量 / count",
                "起始卡号 / first serial",
                "终止卡号 / last serial",
                "领用人 / requested by",
                "发放人 / issued by",
                "使用情况 / usage",
            ],
            [
                [
                    _when(r["at"]),
                    _label(KIND_NAMES, r["kind"]),
                    int(r["count"]),
                    r["serial_from"],
                    r["serial_to"],
                    r["requested_by"],
                    r["issued_by"],
                    r["usage_note"],
                ]
                for r in rows
            ],
        )

    # --- EXC ----------------------------------------------------------------------------------
    async def warranty_lots(self, actor: Actor) -> Table:
        """EXC-6: faulty cards taken back in exchanges, in the order they came in, grouped into
        lots of :data:`WARRANTY_LOT_SIZE` for the vendor; a lot is ready to send when full."""
        actor.require(Permission.REPORTS)
        rows = await self._query(
            "SELECT c.id, c.serial, c.kind, MIN(e.at) AS exchanged_at"
            " FROM cards c JOIN card_events e ON e.card_id = c.id AND e.event = 'exchange'"
            " WHERE c.state = 'exchanged' AND c.exchange_reason = 'faulty'"
            " GROUP BY c.id, c.serial, c.kind"
            " ORDER BY MIN(e.at), c.id"
        )
        body: list[list[object]] = []
        for index, r in enumerate(rows):
            lot, position = divmod(index, WARRANTY_LOT_SIZE)
            in_lot = min(len(rows) - lot * WARRANTY_LOT_SIZE, WARRANTY_LOT_SIZE)
            status = (
                "已满，可寄回厂家 / full: send to the vendor"
                if in_lot == WARRANTY_LOT_SIZE
                else f"未满 {in_lot}/{WARRANTY_LOT_SIZE} / open"
            )
            body.append(
                [
                    lot + 1,
                    position + 1,
                    r["serial"],
                    _label(KIND_NAMES, r["kind"]),
                    _when(r["exchanged_at"]),
                    status,
                ]
            )
        return Table(
            "故障卡质保批次",
            "faulty cards for warranty",
            [
                "批次 / lot",
                "序号 / no.",
                "卡号 / serial",
                "卡类 / kind",
                "换卡日期 / exchanged",
                "批次状态 / lot status",
            ],
            body,
        )

    # --- audit --------------------------------------------------------------------------------
    async def audit(
        self,
        actor: Actor,
        entity: str | None = None,
        limit: int = 100,
        *,
        entity_id: str | None = None,
    ) -> Table:
        """The audit log (who, what, when, before/after), newest first; anything shaped like a
        national ID in the before/after text is masked."""
        actor.require(Permission.REPORTS)
        if limit <= 0:
            raise InvalidInput("条数须为正数", "limit must be positive")
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if entity is not None:
            where.append("entity = :entity")
            params["entity"] = entity
        if entity_id is not None:
            where.append("entity_id = :entity_id")
            params["entity_id"] = str(entity_id)
        rows = await self._query(
            "SELECT id, at, actor, action, entity, entity_id, before, after"  # noqa: S608
            " FROM audit_log"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY id DESC LIMIT :limit",
            params,
        )
        return Table(
            "操作日志",
            "audit log",
            [
                "序号 / no.",
                "时间 / time",
                "操作员 / actor",
                "操作 / action",
                "对象 / entity",
                "编号 / id",
                "变更前 / before",
                "变更后 / after",
            ],
            [
                [
                    int(r["id"]),
                    _when(r["at"]),
                    r["actor"],
                    r["action"],
                    r["entity"],
                    r["entity_id"],
                    _mask_ids(r["before"]),
                    _mask_ids(r["after"]),
                ]
                for r in rows
            ],
        )


MEAL_LIST_HEADERS = [
    "工号 / staff number",
    "姓名 / name",
    "部门 / department",
    "每月补贴次数 / meals per month",
    "已开通 / enabled",
    "卡号 / card",
    "卡类型组 / card type group",
    "待写卡 / write pending",
    "名单来源 / list",
    "更新时间 / updated",
]


async def meal_list(ctx: Context, actor: Actor) -> Table:
    """MEAL-2: the eligible staff list HR provided, kept as a spreadsheet: each staff member's
    subsidised meals per month, whether the subsidy is enabled (MEAL-3) and the card carrying it,
    with its type group and whether the type still has to be written onto the card."""
    if Permission.MEAL_SUBSIDY not in actor.permissions:
        actor.require(Permission.REPORTS)
    async with ctx.registry.read() as tx:
        rows = await tx.rows(
            "SELECT q.holder_id, q.meals_per_month, q.enabled, q.source, q.updated_at,"
            " h.number, h.name, h.department, h.college"
            " FROM meal_quotas q JOIN holders h ON h.id = q.holder_id"
            " ORDER BY h.department, h.number, h.id"
        )
        body: list[list[object]] = []
        for r in rows:
            card = live_card(await tx.cards_of_holder(int(r["holder_id"])))
            body.append(
                [
                    r["number"],
                    r["name"],
                    r["department"] or r["college"],
                    int(r["meals_per_month"]),
                    _yes_no(r["enabled"]),
                    card.serial if card is not None else None,
                    card.type_group if card is not None else None,
                    _yes_no(card.card_write_pending) if card is not None else None,
                    r["source"],
                    _when(r["updated_at"]),
                ]
            )
    enabled = sum(1 for row in body if row[4] == YES)
    total: list[object] = [
        TOTAL,
        f"{len(body)} 人 / staff",
        None,
        sum(int(str(row[3])) for row in body),
        f"{enabled} 人 / enabled",
        *[None] * 5,
    ]
    return Table("用餐补贴名单", "meal subsidy list", MEAL_LIST_HEADERS, [*body, total])


def _offline_result(result: str) -> str:
    """``卡片已挂失 / card reported lost (card_lost)``; an accepted row here is disputed."""
    if result == "accepted":
        return "已扣款，有争议 / debited, disputed (accepted)"
    try:
        return f"{bilingual(ErrorCode(result))} ({result})"
    except ValueError:
        return result


def campus_today(now: datetime) -> date:
    """The campus-time date of ``now`` (default day for :meth:`ReportService.daily_settlement`)."""
    return local(now).date()


__all__ = [
    "TOTAL",
    "WARRANTY_LOT_SIZE",
    "ReportService",
    "Table",
    "campus_today",
    "meal_list",
]
