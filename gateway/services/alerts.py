"""Cardholder alerts (issue 9 ★): what a holder is told, kept in the registry, shown on the web.

Kinds (:class:`AlertKind`):

- ``card_presented`` — a lost (LOSS-2) or frozen (EXC-3) card was presented at a terminal and
  refused: "你已挂失的卡于 12:03 在第一食堂 2号窗口被使用，已拒绝". Recorded on the tap path
  (gateway/services/taps.py, one INSERT in the batching writer, only on such a refusal), at most
  one per card per terminal per :attr:`AlertRules.presented_window` (10 minutes), so a flooding
  stolen POS cannot fill the table.
- ``low_balance`` — a debit took the purse from at or above :attr:`AlertRules.low_balance_fen`
  to below it: once per crossing (a top-up above the threshold arms it again). Found by
  arithmetic on the balance the debit returns; no query on the approved path.
- ``topup`` — every top-up into the purse: counter/cash point, kiosk, web (TOP-1).

The row keeps ids (holder, card, terminal) and numbers; the text is made when the holder reads
it (:meth:`AlertService.list_alerts`), with the place as people know it (merchant name and the
terminal's location, never a terminal id) and times in campus time. zh-CN first, English beside.

API for the web pages (the holder's own :class:`~gateway.services.base.Actor`, channel ``web``):
``list_alerts(actor, page=1, per_page=20)`` newest first, ``unread_count(actor)``,
``mark_read(actor, ids)`` (``ids=None``: all).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from gateway.services.base import Actor, Context
from protocol.cards.clock import local
from protocol.cards.fees import yuan
from protocol.errors import AccessDenied, ErrorCode, InvalidInput
from protocol.types import CardState, Permission
from storage.ports import Tx
from storage.records import Row

MAX_PER_PAGE = 100


class AlertKind(StrEnum):
    CARD_PRESENTED = "card_presented"
    LOW_BALANCE = "low_balance"
    TOPUP = "topup"


#: Card states whose refusal at a terminal is reported to the holder.
PRESENTED_STATES: frozenset[CardState] = frozenset({CardState.LOST, CardState.FROZEN})

#: How a top-up channel is named to the holder.
CHANNEL_NAMES: dict[str, tuple[str, str]] = {
    "counter": ("卡务中心", "card center counter"),
    "cash_point": ("充值点", "cash point"),
    "kiosk": ("自助终端", "self-service kiosk"),
    "web": ("网上充值", "online"),
}


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Configurable (``[alerts]`` in the gateway's TOML, see gateway/config.py)."""

    #: A purse going below this many fen raises one ``low_balance`` alert; 0 turns it off.
    low_balance_fen: int = 1000
    #: At most one ``card_presented`` alert per card per terminal within this window.
    presented_window: timedelta = timedelta(minutes=10)


# --- rows (written inside the money's own transaction) -----------------------------------------


def topup_row(
    *,
    holder_id: int,
    amount: int,
    channel: str,
    at: datetime,
    balance: int | None = None,
    card_id: int | None = None,
    terminal_id: str | None = None,
) -> dict[str, Any]:
    """The ``topup`` alert of one top-up (TOP-1)."""
    return {
        "holder_id": holder_id,
        "card_id": card_id,
        "kind": AlertKind.TOPUP.value,
        "at": at,
        "terminal_id": terminal_id,
        "channel": channel,
        "amount": amount,
        "balance": balance,
    }


def crossed_low(balance_after: int, amount: int, rules: AlertRules) -> bool:
    """Whether a debit of ``amount`` leaving ``balance_after`` crossed the low-balance mark."""
    return balance_after < rules.low_balance_fen <= balance_after + amount


def low_balance_row(
    *,
    holder_id: int,
    balance: int,
    at: datetime,
    card_id: int | None = None,
    terminal_id: str | None = None,
) -> dict[str, Any]:
    return {
        "holder_id": holder_id,
        "card_id": card_id,
        "kind": AlertKind.LOW_BALANCE.value,
        "at": at,
        "terminal_id": terminal_id,
        "balance": balance,
    }


async def record_topup(tx: Tx, **fields: Any) -> None:
    """Add the ``topup`` alert (see :func:`topup_row`) in the top-up's transaction."""
    await tx.insert("holder_alerts", topup_row(**fields))


# --- what the holder reads ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertView:
    id: int
    kind: AlertKind
    at: datetime
    read: bool
    title_zh: str
    title_en: str
    message_zh: str
    message_en: str
    place: str | None  # merchant / location / channel as people know it


@dataclass(frozen=True, slots=True)
class AlertPage:
    alerts: list[AlertView]
    page: int
    per_page: int
    total: int
    unread: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _utc(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _hm(moment: datetime) -> tuple[str, str]:
    at = local(moment)
    return (
        f"{at.month}月{at.day}日 {at:%H:%M}",
        f"{at:%H:%M} on {at.day} {at:%b}",
    )


def _tail(serial: object) -> str:
    text = str(serial or "")
    return text[-4:] if len(text) >= 4 else "…"


def render(row: Mapping[str, Any], place: str | None, serial: object) -> tuple[str, str, str, str]:
    """(title zh, title en, message zh, message en) of one alert row."""
    kind = AlertKind(str(row["kind"]))
    when_zh, when_en = _hm(_utc(row["at"]))
    where = place or "终端"
    where_en = place or "a terminal"
    if kind is AlertKind.CARD_PRESENTED:
        lost = row["detail"] == CardState.LOST.value
        state_zh, state_en = ("已挂失", "reported lost") if lost else ("已冻结", "frozen")
        advice_zh = (
            "若卡已找回，请携带有效证件到卡务中心解挂。" if lost else "如有疑问，请到卡务中心咨询。"
        )
        advice_en = (
            "Found it? Unlock it at the card center counter with your ID (LOSS-3)."
            if lost
            else "Questions: ask at the card center counter."
        )
        return (
            f"{state_zh}的卡被使用",
            f"{state_en.capitalize()} card presented",
            f"你{state_zh}的卡（尾号 {_tail(serial)}）于 {when_zh} 在{where}被使用，已拒绝。"
            + advice_zh,
            f"Your {state_en} card (ending {_tail(serial)}) was presented at {where_en} at "
            f"{when_en} and refused. {advice_en}",
        )
    if kind is AlertKind.LOW_BALANCE:
        balance = yuan(int(row["balance"] or 0))
        return (
            "余额不足提醒",
            "Low balance",
            f"{when_zh} 在{where}消费后，校园卡余额 {balance} 元，请及时充值。",
            f"After a payment at {where_en} at {when_en} your balance is {balance} yuan:"
            " top up soon.",
        )
    channel_zh, channel_en = CHANNEL_NAMES.get(
        str(row["channel"] or ""), (str(row["channel"] or ""), str(row["channel"] or ""))
    )
    amount = yuan(int(row["amount"] or 0))
    after_zh = f"，余额 {yuan(int(row['balance']))} 元" if row["balance"] is not None else ""
    after_en = f"; balance {yuan(int(row['balance']))} yuan" if row["balance"] is not None else ""
    return (
        "充值到账",
        "Top-up credited",
        f"{when_zh} {channel_zh}充值 {amount} 元已到账{after_zh}。",
        f"Top-up of {amount} yuan ({channel_en}) credited at {when_en}{after_en}.",
    )


class AlertService:
    """A holder's alerts: list (newest first, paged), unread count, mark read."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @staticmethod
    def _holder(actor: Actor, holder_id: int | None) -> int:
        target = holder_id if holder_id is not None else actor.holder_id
        if target is None:
            raise InvalidInput("须指定持卡人", "which holder's alerts?")
        if target != actor.holder_id:
            if actor.holder_id is not None:  # a holder sees only their own
                raise AccessDenied(
                    "只能查看本人的提醒",
                    "a holder sees only their own alerts",
                    code=ErrorCode.PERMISSION_DENIED,
                )
            actor.require(Permission.REPORTS)
        return target

    async def list_alerts(
        self,
        actor: Actor,
        *,
        page: int = 1,
        per_page: int = 20,
        holder_id: int | None = None,
    ) -> AlertPage:
        """The holder's alerts, newest first; ``page`` counts from 1."""
        holder = self._holder(actor, holder_id)
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            raise InvalidInput("页码无效", f"page must be >= 1, per_page 1..{MAX_PER_PAGE}")
        async with self.ctx.registry.read() as tx:
            rows = await tx.rows(
                "SELECT id, card_id, kind, at, terminal_id, channel, amount, balance, detail,"
                " read_at FROM holder_alerts WHERE holder_id = :holder"
                " ORDER BY id DESC LIMIT :limit OFFSET :offset",
                {"holder": holder, "limit": per_page, "offset": (page - 1) * per_page},
            )
            total = await tx.count("holder_alerts", holder_id=holder)
            unread = await tx.count("holder_alerts", holder_id=holder, read_at=None)
            places = await _places(tx, {str(r["terminal_id"]) for r in rows if r["terminal_id"]})
            cards = {
                int(c["id"]): c["serial"]
                for c in await tx.find_in(
                    "cards", "id", sorted({int(r["card_id"]) for r in rows if r["card_id"]})
                )
            }
        views = []
        for row in rows:
            place = places.get(str(row["terminal_id"])) if row["terminal_id"] else None
            if place is None and row["kind"] == AlertKind.TOPUP.value:
                place = CHANNEL_NAMES.get(str(row["channel"]), (None, None))[0]
            serial = cards.get(int(row["card_id"])) if row["card_id"] else None
            title_zh, title_en, message_zh, message_en = render(row, place, serial)
            views.append(
                AlertView(
                    id=int(row["id"]),
                    kind=AlertKind(str(row["kind"])),
                    at=_utc(row["at"]),
                    read=row["read_at"] is not None,
                    title_zh=title_zh,
                    title_en=title_en,
                    message_zh=message_zh,
                    message_en=message_en,
                    place=place,
                )
            )
        return AlertPage(views, page, per_page, total, unread)

    async def unread_count(self, actor: Actor, *, holder_id: int | None = None) -> int:
        holder = self._holder(actor, holder_id)
        async with self.ctx.registry.read() as tx:
            return await tx.count("holder_alerts", holder_id=holder, read_at=None)

    async def mark_read(self, actor: Actor, ids: list[int] | None = None) -> int:
        """Mark the holder's own alerts read (``None``: all unread); how many changed. Ids of
        other holders' alerts are ignored, never an error that would tell they exist."""
        holder = self._holder(actor, None)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            if ids is None:
                targets = [
                    int(r["id"])
                    for r in await tx.find("holder_alerts", holder_id=holder, read_at=None)
                ]
            else:
                targets = sorted(set(ids))
            changed = 0
            for alert_id in targets:
                changed += await tx.update_where(
                    "holder_alerts", alert_id, {"read_at": now}, holder_id=holder, read_at=None
                )
            return changed


async def _places(tx: Tx, terminal_ids: set[str]) -> dict[str, str]:
    """Terminal id -> "merchant name location" (e.g. 第一食堂 2号窗口), never the id itself."""
    if not terminal_ids:
        return {}
    terminals = await tx.find_in("terminals", "id", sorted(terminal_ids))
    merchant_ids = sorted({str(t["merchant_id"]) for t in terminals if t["merchant_id"]})
    merchants: dict[str, Row] = {
        str(m["id"]): m for m in await tx.find_in("merchants", "id", merchant_ids)
    }
    out: dict[str, str] = {}
    for t in terminals:
        merchant = merchants.get(str(t["merchant_id"])) if t["merchant_id"] else None
        parts = [str(merchant["name"]) if merchant else "", str(t["location"] or "")]
        name = " ".join(p for p in parts if p).strip()
        out[str(t["id"])] = name or _KIND_PLACES.get(str(t["kind"]), "终端")
    return out


_KIND_PLACES = {"pos": "消费终端", "kiosk": "自助终端", "door": "门禁", "water": "水控"}
