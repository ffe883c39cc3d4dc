"""The cardholder self-service platform's use cases (LOSS-1, REP-1/2, EXC-3, MEAL-1, TOP-1).

The web process (``gateway/web``) calls only this service (and the services it names); every rule
the pages show — the replacement time, the fee, the password policy, which cards a holder sees —
is decided here, never in a route or a template. Every action is audited with the channel of the
acting :class:`Actor` (``web``).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from gateway.services.base import Actor, Context
from gateway.services.cards import CardService
from gateway.services.holders import HolderService, check_holder_password, uses_default_password
from gateway.services.passwords import hash_password
from protocol.cards.clock import CAMPUS_TZ, local
from protocol.cards.identity import default_password, mask_card, mask_name, mask_national_id
from protocol.cards.lifecycle import STATE_NAMES_ZH, faulty_release_at, replacement_possible_from
from protocol.errors import AccessDenied, ErrorCode, InvalidInput, OnecardError
from protocol.ledger import hold, purse
from protocol.types import CardKind, CardState
from storage.ports import Tx
from storage.records import Card, Holder

#: LOSS-1 self-service password on the web: at least this many characters.
MIN_HOLDER_PASSWORD = 8
MAX_HOLDER_PASSWORD = 64
#: History: rows per page, and at most this many rows in one export.
PAGE_SIZE = 20
MAX_EXPORT_ROWS = 10_000
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

STATE_NAMES_EN: dict[CardState, str] = {
    CardState.PRINTING: "being printed",
    CardState.READY: "ready to collect",
    CardState.ACTIVE: "active",
    CardState.LOST: "reported lost",
    CardState.FROZEN: "frozen",
    CardState.SUSPENDED: "suspended",
    CardState.EXPIRED: "expired",
    CardState.REPLACED: "void (replaced)",
    CardState.EXCHANGED: "exchanged",
    CardState.RECOVERED: "recovered",
    CardState.REFUNDED: "refunded",
    CardState.TERMINATED: "terminated",
    CardState.SCRAPPED: "scrapped",
}

#: Card states a holder may still report lost (the lifecycle table decides; this only hides the
#: button where the table would refuse anyway).
REPORTABLE = frozenset({CardState.ACTIVE, CardState.FROZEN, CardState.SUSPENDED, CardState.EXPIRED})
#: Cards no longer worth showing a holder.
HIDDEN = frozenset({CardState.SCRAPPED, CardState.RECOVERED, CardState.REFUNDED})


class HistoryKind(StrEnum):
    PURCHASE = "purchase"
    TOPUP = "topup"
    SUBSIDY = "subsidy"
    CORRECTION = "correction"
    REVERSAL = "reversal"
    FREEZE = "freeze"
    RELEASE = "release"
    CASH_OUT = "cash_out"


KIND_NAMES: dict[str, tuple[str, str]] = {
    "purchase": ("消费", "purchase"),
    "topup": ("充值", "top-up"),
    "subsidy": ("补贴餐", "subsidised meal"),
    "correction": ("纠错退款", "correction"),
    "reversal": ("撤销", "reversal"),
    "freeze": ("冻结", "frozen"),
    "release": ("解冻", "released"),
    "cash_out": ("结清", "cash-out"),
    "fee": ("手续费", "fee"),
    "deposit_in": ("押金", "deposit"),
    "deposit_out": ("退押金", "deposit refund"),
}


@dataclass(frozen=True)
class Me:
    holder_id: int
    name_masked: str
    number: str
    national_id_masked: str
    default_password: bool


@dataclass(frozen=True)
class CardView:
    id: int
    serial_masked: str
    kind: CardKind
    state: CardState
    state_zh: str
    state_en: str
    valid_until: datetime | None
    loss_reported_at: datetime | None
    replacement_from: datetime | None
    can_report_loss: bool


@dataclass(frozen=True)
class Overview:
    me: Me
    cards: list[CardView]
    balance_fen: int
    frozen_fen: int
    frozen_release_at: datetime | None  # EXC-3
    meals_per_month: int | None  # MEAL-1: None when the holder has no subsidy
    meals_left: int | None


@dataclass(frozen=True)
class HistoryFilter:
    start: date | None = None
    end: date | None = None  # inclusive
    kind: HistoryKind | None = None
    place: str | None = None  # part of a merchant's name


@dataclass(frozen=True)
class HistoryRow:
    id: int
    at: datetime
    kind: str
    kind_zh: str
    kind_en: str
    amount_fen: int  # signed, as seen from the holder's purse (subsidised meals: 0)
    place: str


@dataclass
class HistoryPage:
    rows: list[HistoryRow]
    page: int
    pages: int
    total: int
    filters: HistoryFilter = field(default_factory=HistoryFilter)


@dataclass(frozen=True)
class LossReceipt:
    """What the holder is told after a web loss report (LOSS-1/2/3, REP-1/2)."""

    card_serial_masked: str
    reported_at: datetime
    replacement_from: datetime
    replacement_fee_fen: int
    denylist_version: int


def _sql_time(tx: Tx, moment: datetime) -> object:
    utc = moment.astimezone(UTC)
    if tx.dialect == "sqlite":
        return utc.replace(tzinfo=None).strftime(SQLITE_TIME_FORMAT)
    return utc


def _read_time(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def password_problems(new: str, holder: Holder) -> list[tuple[str, str]]:
    """LOSS-1 web password rules: length, not the default, not the ID's digits, not the number."""
    problems: list[tuple[str, str]] = []
    if len(new) < MIN_HOLDER_PASSWORD or len(new) > MAX_HOLDER_PASSWORD:
        problems.append(
            (
                f"密码长度须为 {MIN_HOLDER_PASSWORD}–{MAX_HOLDER_PASSWORD} 位",
                f"the password has {MIN_HOLDER_PASSWORD} to {MAX_HOLDER_PASSWORD} characters",
            )
        )
    nid = (holder.national_id or "").upper()
    initial = default_password(nid, holder.id_doc_type) if nid else ""
    if nid and hmac.compare_digest(new.encode(), initial.encode()):
        problems.append(("不能使用初始密码", "not the default password"))
    elif nid and len(new) >= 4 and new.upper() in nid:
        problems.append(("不能使用身份证号中的数字", "not digits taken from your national ID"))
    if holder.number and holder.number in new:
        problems.append(("不能包含学号/工号", "must not contain your student/staff number"))
    if new and len(set(new)) == 1:
        problems.append(("不能全部是同一个字符", "not one repeated character"))
    return problems


class PortalService:
    """The holder's own view and actions; ``actor.holder_id`` is the only holder it touches."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.holders = HolderService(ctx)
        self.cards = CardService(ctx)

    @staticmethod
    def _holder_id(actor: Actor) -> int:
        if actor.holder_id is None:
            raise AccessDenied(
                "仅持卡人本人可用", "for the cardholder only", code=ErrorCode.PERMISSION_DENIED
            )
        return actor.holder_id

    async def _audit(
        self, tx: Tx, actor: Actor, action: str, entity_id: object, **after: object
    ) -> None:
        await tx.audit(
            self.ctx.clock.now(),
            actor.name,
            action,
            "holder",
            entity_id,
            None,
            {"channel": actor.channel, **after},
        )

    # --- session ------------------------------------------------------------------------------
    async def login(self, number: str, password: str, *, channel: str, client: str) -> Actor:
        """LOSS-1: the kiosk's authentication and lockout (shared fields), audited either way."""
        number = number.strip()
        if not number or not password or len(number) > 32 or len(password) > 128:
            raise InvalidInput("请输入学号/工号和密码", "enter your number and password")
        try:
            actor = await self.holders.authenticate(number, password, channel=channel)
        except OnecardError as exc:
            async with self.ctx.registry.transaction() as tx:
                await tx.audit(
                    self.ctx.clock.now(),
                    f"{channel}:anonymous",
                    f"{channel}.login_failed",
                    "login",
                    number,
                    None,
                    {"channel": channel, "code": exc.code.value, "client": client},
                )
            raise
        async with self.ctx.registry.transaction() as tx:
            await self._audit(tx, actor, f"{channel}.login", actor.holder_id, client=client)
        return actor

    async def logout(self, actor: Actor, *, reason: str = "logout") -> None:
        async with self.ctx.registry.transaction() as tx:
            await self._audit(tx, actor, f"{actor.channel}.logout", actor.holder_id, reason=reason)

    async def me(self, actor: Actor) -> Me:
        holder_id = self._holder_id(actor)
        async with self.ctx.registry.read() as tx:
            holder = await tx.get_holder(holder_id)
        return Me(
            holder_id=holder.id,
            name_masked=mask_name(holder.name),
            number=holder.number or "",
            national_id_masked=mask_national_id(holder.national_id or ""),
            default_password=uses_default_password(holder),
        )

    # --- cards and balance --------------------------------------------------------------------
    def _card_view(self, card: Card) -> CardView:
        return CardView(
            id=card.id,
            serial_masked=mask_card(card.serial),
            kind=card.kind,
            state=card.state,
            state_zh=STATE_NAMES_ZH[card.state],
            state_en=STATE_NAMES_EN[card.state],
            valid_until=card.valid_until,
            loss_reported_at=card.loss_reported_at,
            replacement_from=replacement_possible_from(card.facts)
            if card.state is CardState.LOST
            else None,
            can_report_loss=card.state in REPORTABLE,
        )

    async def overview(self, actor: Actor) -> Overview:
        """Cards with state and validity, balance, frozen amount and its release (EXC-3), meal
        swipes left this month (MEAL-1)."""
        me = await self.me(actor)
        now = self.ctx.clock.now()
        async with self.ctx.registry.read() as tx:
            cards = [c for c in await tx.cards_of_holder(me.holder_id) if c.state not in HIDDEN]
            balance = await tx.balance(purse(me.holder_id))
            frozen = await tx.balance(hold(me.holder_id))
            meals = await tx.meal_allowance(me.holder_id, local(now).strftime("%Y-%m"))
        releases = [r for c in cards if (r := faulty_release_at(c.facts)) is not None]
        cards.sort(key=lambda c: (c.state is not CardState.ACTIVE, -c.id))
        return Overview(
            me=me,
            cards=[self._card_view(c) for c in cards],
            balance_fen=balance,
            frozen_fen=frozen,
            frozen_release_at=max(releases) if frozen and releases else None,
            meals_per_month=meals.per_month if meals else None,
            meals_left=meals.left if meals else None,
        )

    async def card(self, actor: Actor, card_id: int) -> CardView:
        """One of the holder's own cards; anyone else's is 'not found' (no existence leak)."""
        holder_id = self._holder_id(actor)
        async with self.ctx.registry.read() as tx:
            for card in await tx.cards_of_holder(holder_id):
                if card.id == card_id and card.state not in HIDDEN:
                    return self._card_view(card)
        raise OnecardError("没有这张卡", "no such card", code=ErrorCode.NOT_FOUND)

    # --- loss report (LOSS-1/2/3, REP-1/2) ----------------------------------------------------
    async def report_loss(self, actor: Actor, card_id: int) -> LossReceipt:
        """The holder's own card is refused everywhere from the deny-list version returned."""
        holder_id = self._holder_id(actor)
        async with self.ctx.registry.read() as tx:
            serial = next(
                (c.serial for c in await tx.cards_of_holder(holder_id) if c.id == card_id), None
            )
        if serial is None:
            raise OnecardError("没有这张卡", "no such card", code=ErrorCode.NOT_FOUND)
        card = await self.cards.report_loss(actor, serial)
        async with self.ctx.registry.transaction() as tx:
            rows = await tx.rows("SELECT max(version) AS v FROM deny_changes")
            await self._audit(
                tx,
                actor,
                f"{actor.channel}.loss_report",
                holder_id,
                card_id=card.id,
                denylist_version=int(rows[0]["v"] or 0),
            )
        reported = card.loss_reported_at or self.ctx.clock.now()
        possible = replacement_possible_from(card.facts) or reported
        return LossReceipt(
            card_serial_masked=mask_card(card.serial),
            reported_at=reported,
            replacement_from=possible,
            replacement_fee_fen=self.ctx.fees.amount(self.ctx.fees.replacement(card.kind)),
            denylist_version=int(rows[0]["v"] or 0),
        )

    # --- password (LOSS-1) --------------------------------------------------------------------
    async def change_password(self, actor: Actor, old: str, new: str, repeat: str) -> None:
        holder_id = self._holder_id(actor)
        if new != repeat:
            raise InvalidInput(
                "两次输入的新密码不一致", "the two new passwords differ", rule="LOSS-1"
            )
        async with self.ctx.registry.read() as tx:
            holder = await tx.get_holder(holder_id)
        problems = password_problems(new, holder)
        if problems:
            raise InvalidInput(
                "；".join(zh for zh, _ in problems),
                "; ".join(en for _, en in problems),
                rule="LOSS-1",
            )

        def rehash() -> str | None:  # scrypt: in a thread, outside any transaction
            if not check_holder_password(holder, old):
                return None
            return hash_password(new)

        new_hash = await asyncio.to_thread(rehash)
        if new_hash is None:
            raise AccessDenied(
                "原密码错误", "wrong current password", code=ErrorCode.AUTH_FAILED, rule="LOSS-1"
            )
        async with self.ctx.registry.transaction() as tx:
            current = await tx.get_holder(holder_id)
            if current.password_hash != holder.password_hash:
                raise OnecardError(
                    "密码刚被修改过，请重试",
                    "the password just changed: try again",
                    code=ErrorCode.DUPLICATE,
                    rule="LOSS-1",
                )
            await tx.update("holders", holder_id, {"password_hash": new_hash})
            await tx.audit(
                self.ctx.clock.now(),
                actor.name,
                "holder.password_changed",
                "holder",
                holder_id,
                None,
                {"channel": actor.channel},
            )

    # --- history ------------------------------------------------------------------------------
    def _history_sql(
        self, tx: Tx, holder_id: int, card_ids: list[int], f: HistoryFilter
    ) -> tuple[str, dict[str, object]]:
        account = purse(holder_id)
        params: dict[str, object] = {"acct": account}
        own = "t.source = :acct OR t.dest = :acct"
        if card_ids:
            marks = ", ".join(f":c{i}" for i in range(len(card_ids)))
            own += f" OR (t.kind = 'subsidy' AND t.card_id IN ({marks}))"
            params.update({f"c{i}": cid for i, cid in enumerate(card_ids)})
        where = [f"({own})"]
        if f.start is not None:
            where.append("t.at >= :start")
            params["start"] = _sql_time(tx, datetime.combine(f.start, time(0), CAMPUS_TZ))
        if f.end is not None:
            where.append("t.at < :end")
            end = datetime.combine(f.end + timedelta(days=1), time(0), CAMPUS_TZ)
            params["end"] = _sql_time(tx, end)
        if f.kind is not None:
            where.append("t.kind = :kind")
            params["kind"] = f.kind.value
        if f.place:
            where.append("m.name LIKE :place")
            escaped = f.place.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params["place"] = f"%{escaped}%"
            where[-1] += " ESCAPE '\\'"
        sql = (
            " FROM transfers t LEFT JOIN merchants m ON m.id = (CASE"
            " WHEN t.dest LIKE 'merchant:%' THEN substr(t.dest, 10)"
            " WHEN t.source LIKE 'merchant:%' THEN substr(t.source, 10) END)"
            " WHERE " + " AND ".join(where)
        )
        return sql, params

    async def history(
        self, actor: Actor, filters: HistoryFilter, *, page: int = 1, page_size: int = PAGE_SIZE
    ) -> HistoryPage:
        """The holder's transfers, newest first, filtered by local date range, kind, place name."""
        holder_id = self._holder_id(actor)
        if filters.start and filters.end and filters.start > filters.end:
            raise InvalidInput("开始日期晚于结束日期", "the start date is after the end date")
        page = max(1, page)
        async with self.ctx.registry.read() as tx:
            card_ids = [c.id for c in await tx.cards_of_holder(holder_id)]
            body, params = self._history_sql(tx, holder_id, card_ids, filters)
            total = int((await tx.rows("SELECT count(*) AS n" + body, params))[0]["n"])
            rows = await tx.rows(
                "SELECT t.id, t.kind, t.source, t.dest, t.amount, t.at, m.name AS place"
                + body
                + " ORDER BY t.at DESC, t.id DESC LIMIT :limit OFFSET :offset",
                {**params, "limit": page_size, "offset": (page - 1) * page_size},
            )
        account = purse(holder_id)
        out = []
        for r in rows:
            kind = str(r["kind"])
            amount = int(r["amount"])
            signed = amount if r["dest"] == account else -amount if r["source"] == account else 0
            zh, en = KIND_NAMES.get(kind, (kind, kind))
            place = str(r["place"] or "")
            if not place:
                other = r["source"] if r["dest"] == account else r["dest"]
                place = _place_of(str(other))
            out.append(HistoryRow(int(r["id"]), _read_time(r["at"]), kind, zh, en, signed, place))
        pages = max(1, -(-total // page_size))
        return HistoryPage(out, page, pages, total, filters)

    async def export(self, actor: Actor, filters: HistoryFilter, fmt: str) -> list[HistoryRow]:
        """Every row the filters match (up to MAX_EXPORT_ROWS), audited."""
        result = await self.history(actor, filters, page=1, page_size=MAX_EXPORT_ROWS)
        async with self.ctx.registry.transaction() as tx:
            await self._audit(
                tx,
                actor,
                f"{actor.channel}.history_export",
                actor.holder_id,
                format=fmt,
                rows=len(result.rows),
            )
        return result.rows


def _place_of(account: str) -> str:
    kind, _, rest = account.partition(":")
    if kind == "cash":
        return "智能卡中心 card center" if rest == "counter" else f"充值点 cash point {rest}"
    if kind == "external":
        return {"kiosk": "自助终端 kiosk", "app": "网上充值 online"}.get(rest, rest)
    if kind == "hold":
        return "冻结账户 frozen balance"
    return ""
