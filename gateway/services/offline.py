"""Settlement of sales a POS approved offline (store and forward, terminal contract §8.3).

A POS that cannot reach the gateway approves sales alone, under the limits of the ``hello`` reply
(:class:`protocol.wire.TerminalConfig`) and the deny list it holds. When the sales are uploaded,
the gateway settles each one like EMV offline risk management and transit hot-list settlement
do: the sale is checked against what the terminal was allowed to do *and* against what it could
know at the sale time. A sale that passes is debited from the holder's purse; every other sale is
recorded with its reason and the party that bears it, and moves no money. Nothing is silently
debited and nothing is silently dropped.

The checks, in order (the first that fails decides; :class:`Bearer` says who bears the sale):

1. merchant binding: a sale names the terminal's registered merchant or none, otherwise
   ``permission_denied`` (merchant);
2. clock: the sale time lies in ``[now - max_sale_age, now + clock_tolerance]``, otherwise
   ``clock_skew`` (in the future) or ``too_late`` (too old to settle) (merchant);
3. the card: unknown ``card_unknown``, not yet handed over ``card_not_issued`` (merchant);
4. per-sale limit: ``amount_fen > offline_max_amount_fen`` (or offline sales disabled)
   ``offline_limit`` (merchant);
5. card state at the sale time, from the registry's deny-list change log
   (:func:`card_state_verdict`): refused by the list the terminal held ``card_*`` (merchant);
   blocked before the sale but after the list the terminal held, with that list older than
   ``offline_max_age_s`` at the sale time (or no version given) ``denylist_stale`` (merchant);
   blocked before the sale, list fresh: accepted but *disputed* (holder: the propagation window
   the card center allows); not blocked at the sale time: accepted (holder);
6. daily limit: the card's accepted offline sales on this terminal in the sale's campus day,
   plus this one, above ``offline_max_daily_fen`` ``offline_limit`` (merchant). Per terminal,
   because a terminal can only count its own offline sales;
7. funds: the purse cannot cover it ``insufficient_funds`` (card center: it settles with the
   holder at the counter; balances never go negative).

The functions here are pure (``now`` and every fact are arguments); :mod:`gateway.services.taps`
reads the facts through the tap transaction and writes the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from gateway.denylist import EVENT_KINDS, KIND_CODES
from protocol.cards.clock import CAMPUS_TZ, fmt_local, local
from protocol.cards.fees import yuan
from protocol.errors import MESSAGES, ErrorCode
from protocol.wire import DenyChangeKind, TerminalConfig

#: Default: a sale dated more than this after the gateway's clock is refused (``clock_skew``).
CLOCK_TOLERANCE = timedelta(minutes=5)
#: Default: a sale older than this when uploaded is no longer settled (``too_late``).
MAX_SALE_AGE = timedelta(days=7)


class Bearer(StrEnum):
    """Who bears an uploaded offline sale (terminal contract §8.3)."""

    #: Debited from the holder's purse (accepted).
    HOLDER = "holder"
    #: Not paid: the merchant / terminal operator, whose terminal broke a rule it could keep.
    MERCHANT = "merchant"
    #: Not paid yet: the card center settles it with the holder (e.g. insufficient funds).
    CARD_CENTER = "card_center"


BEARER_NAMES: dict[str, str] = {
    Bearer.HOLDER.value: "持卡人 / holder",
    Bearer.MERCHANT.value: "商户 / merchant",
    Bearer.CARD_CENTER.value: "卡务中心 / card center",
}


@dataclass(frozen=True, slots=True)
class SettlementRules:
    """The limits a terminal was given (``hello``) plus the gateway's clock window."""

    max_amount_fen: int
    max_daily_fen: int
    max_list_age: timedelta
    clock_tolerance: timedelta = CLOCK_TOLERANCE
    max_sale_age: timedelta = MAX_SALE_AGE

    @classmethod
    def from_config(
        cls,
        config: TerminalConfig,
        *,
        clock_tolerance_s: float = CLOCK_TOLERANCE.total_seconds(),
        max_sale_age_s: float = MAX_SALE_AGE.total_seconds(),
    ) -> SettlementRules:
        """The rules for terminals given ``config`` (``hello``), with the gateway's window."""
        return cls(
            max_amount_fen=config.offline_max_amount_fen,
            max_daily_fen=config.offline_max_daily_fen,
            max_list_age=timedelta(seconds=config.offline_max_age_s),
            clock_tolerance=timedelta(seconds=clock_tolerance_s),
            max_sale_age=timedelta(seconds=max_sale_age_s),
        )


@dataclass(frozen=True, slots=True)
class DenyEntry:
    """One change of one card in the deny-list log: after ``version`` (made at ``at``) the card
    is blocked with ``code``, or unblocked (``code`` is None)."""

    version: int
    at: datetime
    code: ErrorCode | None

    @property
    def denied(self) -> bool:
        return self.code is not None


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one offline sale settles: ``code`` None means accepted (debited)."""

    code: ErrorCode | None
    bearer: Bearer
    #: Why, zh-CN first with English beside it; None for a plain accepted sale.
    detail: str | None = None

    @property
    def accepted(self) -> bool:
        return self.code is None

    @property
    def result(self) -> str:
        """The ``offline_sales.result`` column: ``accepted`` or the error code."""
        return "accepted" if self.code is None else self.code.value


ACCEPTED = Verdict(None, Bearer.HOLDER)


def _refused(code: ErrorCode, bearer: Bearer, zh: str, en: str) -> Verdict:
    return Verdict(code, bearer, f"{zh} / {en}")


# --- facts ------------------------------------------------------------------------------------


def sale_time(at_ms: int) -> datetime | None:
    """The sale time, or None when ``at_ms`` is not a representable time (e.g. after 9999)."""
    try:
        return datetime.fromtimestamp(at_ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def deny_entry(row: Mapping[str, Any]) -> DenyEntry:
    """A registry ``deny_changes`` row, with the refusal code the gateway's deny set uses."""
    code: ErrorCode | None = None
    if row["denied"]:
        kind = EVENT_KINDS.get(str(row["change"]), DenyChangeKind.TERMINATED)
        code = KIND_CODES.get(kind, ErrorCode.CARD_LOST)
    return DenyEntry(int(row["version"]), row["at"], code)


def campus_day(moment: datetime) -> tuple[datetime, datetime]:
    """The campus-time day (00:00-24:00 UTC+8) holding ``moment``, as UTC bounds."""
    start = datetime.combine(local(moment).date(), time(0), CAMPUS_TZ).astimezone(UTC)
    return start, start + timedelta(days=1)


def day_total(sales: Iterable[Mapping[str, Any]], sold_at: datetime) -> int:
    """Fen of the accepted ``offline_sales`` rows in the campus day of ``sold_at``."""
    start, end = campus_day(sold_at)
    return sum(
        int(r["amount"])
        for r in sales
        if r["result"] == "accepted" and r["sold_at"] is not None and start <= r["sold_at"] < end
    )


# --- the checks -------------------------------------------------------------------------------


def merchant_verdict(sale_merchant: str | None, terminal_merchant: str | None) -> Verdict | None:
    """A sale is for the terminal's registered merchant: naming none means that one."""
    if sale_merchant is None or sale_merchant == terminal_merchant:
        return None
    return _refused(
        ErrorCode.PERMISSION_DENIED,
        Bearer.MERCHANT,
        f"销售商户 {sale_merchant} 与终端登记商户 {terminal_merchant or '（无）'} 不符",
        f"sale names merchant {sale_merchant}, the terminal is registered to "
        f"{terminal_merchant or '(none)'}",
    )


def clock_verdict(at_ms: int, now: datetime, rules: SettlementRules) -> Verdict | None:
    """The sale time must lie in ``[now - max_sale_age, now + clock_tolerance]``; compared in
    integer milliseconds, so absurd values (after year 9999) are refused, never raised."""
    now_ms = int(now.timestamp() * 1000)
    if at_ms > now_ms + rules.clock_tolerance // timedelta(milliseconds=1):
        return _refused(
            ErrorCode.CLOCK_SKEW,
            Bearer.MERCHANT,
            f"销售时间晚于网关时间超过 {int(rules.clock_tolerance.total_seconds())} 秒",
            f"sale time more than {int(rules.clock_tolerance.total_seconds())} s after the "
            "gateway's clock",
        )
    if at_ms < now_ms - rules.max_sale_age // timedelta(milliseconds=1):
        days = rules.max_sale_age / timedelta(days=1)
        return _refused(
            ErrorCode.TOO_LATE,
            Bearer.MERCHANT,
            f"销售时间早于 {days:g} 天前，超过结算期限",
            f"sale older than {days:g} days: past the settlement window",
        )
    return None


def amount_verdict(amount_fen: int, rules: SettlementRules) -> Verdict | None:
    """The per-sale offline limit; a limit of 0 disables offline sales."""
    if rules.max_amount_fen and amount_fen <= rules.max_amount_fen:
        return None
    return _refused(
        ErrorCode.OFFLINE_LIMIT,
        Bearer.MERCHANT,
        f"单笔 {yuan(amount_fen)} 元超过脱机单笔限额 {yuan(rules.max_amount_fen)} 元",
        f"sale of {yuan(amount_fen)} yuan over the offline per-sale limit of "
        f"{yuan(rules.max_amount_fen)} yuan",
    )


def daily_verdict(amount_fen: int, day_total_fen: int, rules: SettlementRules) -> Verdict | None:
    """The card's accepted offline total on this terminal for the campus day, plus this sale."""
    if day_total_fen + amount_fen <= rules.max_daily_fen:
        return None
    return _refused(
        ErrorCode.OFFLINE_LIMIT,
        Bearer.MERCHANT,
        f"当日脱机累计 {yuan(day_total_fen + amount_fen)} 元超过日限额 "
        f"{yuan(rules.max_daily_fen)} 元",
        f"offline total of the day {yuan(day_total_fen + amount_fen)} yuan over the daily "
        f"limit of {yuan(rules.max_daily_fen)} yuan",
    )


def card_state_verdict(
    history: Sequence[DenyEntry],
    sold_at: datetime,
    held: int | None,
    outdated_since: datetime | None,
    rules: SettlementRules,
) -> Verdict:
    """The card's state at the sale time against the deny list the terminal held (LOSS-2).

    ``history`` is the card's deny-list changes in version order, ``held`` the version the
    terminal held (None: not given, or a version that does not exist), ``outdated_since`` when
    that list stopped being current (the time of version ``held + 1``; None if unknown).

    - not blocked at the sale time: the holder's sale, even if the card is blocked now (a sale
      before the loss report is the holder's);
    - blocked by the list the terminal held: the terminal should have refused: ``card_*``;
    - blocked after that list, before the sale: the terminal could not know. Accepted if its list
      was not older than ``offline_max_age_s`` at the sale time (disputed, the holder's: the
      propagation window the card center allows), otherwise ``denylist_stale``; a sale without
      a version is treated as stale.
    """
    at_sale = _last(e for e in history if e.at <= sold_at)
    if at_sale is None or at_sale.code is None:
        return ACCEPTED
    if held is not None:
        known = _last(e for e in history if e.version <= held)
        if known is not None and known.code is not None:
            zh, en = MESSAGES[known.code]
            return _refused(
                known.code,
                Bearer.MERCHANT,
                f"终端持有黑名单版本 {held}，其中已有此卡（版本 {known.version}：{zh}），应拒绝",
                f"the terminal held deny-list version {held}, which lists the card "
                f"(version {known.version}: {en}): it should have refused",
            )
    blocked_at = fmt_local(at_sale.at)
    if held is None:
        return _refused(
            ErrorCode.DENYLIST_STALE,
            Bearer.MERCHANT,
            f"此卡于 {blocked_at} 已禁用，销售未注明终端黑名单版本，按过期处理",
            f"card blocked since {blocked_at}; the sale gives no deny-list version, so the "
            "list counts as stale",
        )
    since = outdated_since or next((e.at for e in history if e.version > held), at_sale.at)
    if sold_at - since > rules.max_list_age:
        return _refused(
            ErrorCode.DENYLIST_STALE,
            Bearer.MERCHANT,
            f"终端黑名单（版本 {held}）自 {fmt_local(since)} 起已过期，销售时超过 "
            f"{int(rules.max_list_age.total_seconds())} 秒，不应脱机批准",
            f"the terminal's deny list (version {held}) was outdated since {fmt_local(since)}, "
            f"more than {int(rules.max_list_age.total_seconds())} s before the sale: it should "
            "not have approved offline",
        )
    return Verdict(
        None,
        Bearer.HOLDER,
        f"争议：此卡于 {blocked_at} 已禁用，终端黑名单（版本 {held}）尚在有效期内未能获知 / "
        f"disputed: card blocked since {blocked_at}; the terminal's list (version {held}) was "
        "within its allowed age and could not know",
    )


def _last(entries: Iterable[DenyEntry]) -> DenyEntry | None:
    found: DenyEntry | None = None
    for entry in entries:
        found = entry
    return found
