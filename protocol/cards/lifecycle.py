"""Card lifecycle: states, the transition table and its time guards.

The card-center procedures (办理流程) are a state machine over events. :data:`TRANSITIONS` is the
whole table; :func:`transition` applies one event to a card's facts at ``now`` and either
returns the new facts or raises :class:`~protocol.errors.RuleViolation` naming the rule and,
for an event the state does not allow, the events it does allow.

Holder-level conditions (who may refund, settled balances, complete holder data) are checked by the
service layer with the helpers in :mod:`protocol.cards.policy`; this module knows only the card.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from protocol.cards.clock import (
    AUTO_TERMINATION_MONTHS,
    FAULTY_FREEZE,
    REPLACEMENT_WAIT,
    add_months,
    fmt_local,
    require_aware,
)
from protocol.errors import ErrorCode, RuleViolation
from protocol.types import CardKind, CardState


class CardEvent(StrEnum):
    PRINTED = "printed"  # ISS-3: printed card passed the check
    REPRINT = "reprint"  # ISS-3: failed the check, back to the vendor for a reprint
    HAND_OVER = "hand_over"  # ISS-4, ISS-7, ISS-12, REP-4, EXC-5
    REPORT_LOSS = "report_loss"  # LOSS-1
    UNLOCK = "unlock"  # LOSS-3
    REPLACE = "replace"  # REP-1, LOSS-4: the lost card is void forever
    REPORT_FAULT = "report_fault"  # EXC-3: faulty card, balance frozen 48 h
    EXCHANGE = "exchange"  # EXC-3 (after the freeze) / EXC-4 (changed data)
    SUSPEND = "suspend"  # MEAL-4
    RESUME = "resume"  # MEAL-4
    EXPIRE = "expire"  # TERM-2
    EXTEND = "extend"  # TERM-2, TERM-3
    AUTO_TERMINATE = "auto_terminate"  # TERM-3
    TERMINATE = "terminate"  # TERM-1, TERM-4, TERM-5
    RECOVER = "recover"  # ISS-4 / ISS-6: temp card handed in for the smart card
    REFUND = "refund"  # REF-3
    SCRAP = "scrap"  # SCR-1


class ExchangeReason(StrEnum):
    FAULTY = "faulty"  # EXC-1/EXC-3
    DATA_CHANGE = "data_change"  # EXC-1/EXC-4


S = CardState
E = CardEvent

#: (state, event) -> (new state, rule id). Anything absent is refused.
TRANSITIONS: dict[tuple[CardState, CardEvent], tuple[CardState, str]] = {
    (S.PRINTING, E.PRINTED): (S.READY, "ISS-3"),
    (S.PRINTING, E.REPRINT): (S.PRINTING, "ISS-3"),
    (S.READY, E.HAND_OVER): (S.ACTIVE, "ISS-4"),
    (S.PRINTING, E.TERMINATE): (S.TERMINATED, "TERM-1"),
    (S.READY, E.TERMINATE): (S.TERMINATED, "TERM-1"),
    (S.ACTIVE, E.REPORT_LOSS): (S.LOST, "LOSS-1"),
    (S.SUSPENDED, E.REPORT_LOSS): (S.LOST, "LOSS-1"),
    (S.EXPIRED, E.REPORT_LOSS): (S.LOST, "LOSS-1"),
    (S.FROZEN, E.REPORT_LOSS): (S.LOST, "LOSS-1"),
    (S.LOST, E.UNLOCK): (S.ACTIVE, "LOSS-3"),
    (S.LOST, E.REPLACE): (S.REPLACED, "REP-1"),
    (S.LOST, E.TERMINATE): (S.TERMINATED, "TERM-5"),
    (S.ACTIVE, E.REPORT_FAULT): (S.FROZEN, "EXC-3"),
    (S.SUSPENDED, E.REPORT_FAULT): (S.FROZEN, "EXC-3"),
    (S.FROZEN, E.EXCHANGE): (S.EXCHANGED, "EXC-3"),
    (S.ACTIVE, E.EXCHANGE): (S.EXCHANGED, "EXC-4"),
    (S.SUSPENDED, E.EXCHANGE): (S.EXCHANGED, "EXC-4"),
    (S.ACTIVE, E.SUSPEND): (S.SUSPENDED, "MEAL-4"),
    (S.SUSPENDED, E.RESUME): (S.ACTIVE, "MEAL-4"),
    (S.ACTIVE, E.EXPIRE): (S.EXPIRED, "TERM-2"),
    (S.SUSPENDED, E.EXPIRE): (S.EXPIRED, "TERM-2"),
    (S.ACTIVE, E.EXTEND): (S.ACTIVE, "TERM-2"),
    (S.EXPIRED, E.EXTEND): (S.ACTIVE, "TERM-2"),
    (S.EXPIRED, E.AUTO_TERMINATE): (S.TERMINATED, "TERM-3"),
    (S.ACTIVE, E.TERMINATE): (S.TERMINATED, "TERM-1"),
    (S.SUSPENDED, E.TERMINATE): (S.TERMINATED, "TERM-1"),
    (S.EXPIRED, E.TERMINATE): (S.TERMINATED, "TERM-1"),
    (S.FROZEN, E.TERMINATE): (S.TERMINATED, "TERM-1"),
    (S.ACTIVE, E.RECOVER): (S.RECOVERED, "ISS-4"),
    (S.EXPIRED, E.RECOVER): (S.RECOVERED, "ISS-4"),
    (S.ACTIVE, E.REFUND): (S.REFUNDED, "REF-3"),
    (S.EXPIRED, E.REFUND): (S.REFUNDED, "REF-3"),
    (S.REFUNDED, E.SCRAP): (S.SCRAPPED, "SCR-1"),
    (S.TERMINATED, E.SCRAP): (S.SCRAPPED, "SCR-1"),
    (S.EXCHANGED, E.SCRAP): (S.SCRAPPED, "SCR-1"),
    (S.RECOVERED, E.SCRAP): (S.SCRAPPED, "SCR-1"),
    (S.REPLACED, E.SCRAP): (S.SCRAPPED, "SCR-1"),  # a found lost card handed in: still void
}

#: Where the card physically is after an event that settles it (SCR-1 "回收的校园卡"): True = in the
#: center's hands. A printed card waits at the center (ISS-3), a reprint goes back to the vendor,
#: a handed-over card is the holder's; a temp card handed in for the smart card (ISS-4) and a
#: refunded card (REF-3) always come back. Every other event keeps custody as it was unless the
#: counter records the card handed back with it (``card_returned``: termination, exchange).
CUSTODY_AFTER: dict[CardEvent, bool] = {
    E.PRINTED: True,
    E.REPRINT: False,
    E.HAND_OVER: False,
    E.RECOVER: True,
    E.REFUND: True,
}

#: States in which a card that is still out may be handed in to the center later (a found lost
#: card after its replacement, a terminated or exchanged card brought back): custody only.
HAND_IN_STATES: frozenset[CardState] = frozenset({S.REPLACED, S.EXCHANGED, S.TERMINATED})

#: States a card never leaves except to the scrap register.
FINAL_STATES: frozenset[CardState] = frozenset(
    {S.REPLACED, S.EXCHANGED, S.RECOVERED, S.REFUNDED, S.TERMINATED, S.SCRAPPED}
)

#: Events that only a temp card may take (TERM-2/3 validity, ISS-4 recovery, REF refund).
TEMP_ONLY_EVENTS: frozenset[CardEvent] = frozenset(
    {E.EXPIRE, E.EXTEND, E.AUTO_TERMINATE, E.RECOVER, E.REFUND}
)
#: Events that only a smart card may take (it is printed by the vendor: ISS-2/ISS-3).
SMART_ONLY_EVENTS: frozenset[CardEvent] = frozenset({E.PRINTED, E.REPRINT})

STATE_NAMES_ZH: dict[CardState, str] = {
    S.PRINTING: "制作中",
    S.READY: "待领取",
    S.ACTIVE: "正常",
    S.LOST: "挂失",
    S.FROZEN: "冻结",
    S.SUSPENDED: "停用",
    S.EXPIRED: "过期",
    S.REPLACED: "补卡作废",
    S.EXCHANGED: "换卡收回",
    S.RECOVERED: "已收回",
    S.REFUNDED: "已退卡",
    S.TERMINATED: "已终止",
    S.SCRAPPED: "已报废",
}


def allowed_events(state: CardState, kind: CardKind | None = None) -> list[CardEvent]:
    """Events the table allows from ``state`` (for ``kind`` when given), in table order."""
    events = [event for (st, event) in TRANSITIONS if st == state]
    if kind is CardKind.SMART:
        events = [e for e in events if e not in TEMP_ONLY_EVENTS]
    elif kind is CardKind.TEMP:
        events = [e for e in events if e not in SMART_ONLY_EVENTS]
    return events


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the lifecycle needs to know about one card. All datetimes are aware (UTC)."""

    kind: CardKind
    state: CardState
    valid_until: datetime | None = None  # first moment the card is no longer valid
    loss_reported_at: datetime | None = None
    frozen_at: datetime | None = None
    exchange_reason: ExchangeReason | None = None
    in_custody: bool = False  # the card is physically back in the center's hands (SCR-1)


@dataclass(frozen=True, slots=True)
class Transition:
    before: CardFacts
    after: CardFacts
    event: CardEvent
    rule: str


def _refuse(facts: CardFacts, event: CardEvent) -> RuleViolation:
    allowed = allowed_events(facts.state, facts.kind)
    names = ", ".join(allowed) if allowed else "none"
    zh_state = STATE_NAMES_ZH[facts.state]
    if facts.state is S.REPLACED and event is E.UNLOCK:
        return RuleViolation(
            "已补办新卡，挂失卡永久作废，不能解挂",
            "a replacement was issued: the lost card is void forever and cannot be unlocked",
            code=ErrorCode.TRANSITION_NOT_ALLOWED,
            rule="LOSS-4",
        )
    return RuleViolation(
        f"{zh_state}状态的{'临时卡' if facts.kind is CardKind.TEMP else '智能卡'}不能办理"
        f"“{event}”；可办理：{names}",
        f"a {facts.kind} card in state {facts.state} cannot take '{event}'; allowed: {names}",
        code=ErrorCode.TRANSITION_NOT_ALLOWED,
        # the transition table refuses, not one published rule: no rule id (a made-up one such
        # as "LIFECYCLE" is no RuleId and made the kiosk's reply `internal`, issue 8 item 9)
        rule=None,
    )


def transition(
    facts: CardFacts,
    event: CardEvent,
    now: datetime,
    *,
    new_valid_until: datetime | None = None,
    exchange_reason: ExchangeReason | None = None,
    card_returned: bool = False,
) -> Transition:
    """Apply ``event`` to ``facts`` at ``now``.

    ``new_valid_until`` is required for :attr:`CardEvent.EXTEND`; ``exchange_reason`` for
    :attr:`CardEvent.REPORT_FAULT` is implied (faulty) and for :attr:`CardEvent.EXCHANGE` from an
    active card must be ``DATA_CHANGE``. ``card_returned``: the counter takes the card back with
    this event (termination, exchange); see :data:`CUSTODY_AFTER`.
    """
    require_aware(now)
    key = (facts.state, event)
    if key not in TRANSITIONS or (
        (facts.kind is CardKind.SMART and event in TEMP_ONLY_EVENTS)
        or (facts.kind is CardKind.TEMP and event in SMART_ONLY_EVENTS)
    ):
        raise _refuse(facts, event)
    to_state, rule = TRANSITIONS[key]
    custody = CUSTODY_AFTER.get(event, facts.in_custody or card_returned)
    after = replace(facts, state=to_state, in_custody=custody)

    if event is E.REPORT_LOSS:
        after = replace(after, loss_reported_at=now)
    elif event is E.UNLOCK:
        after = replace(after, loss_reported_at=None)
    elif event is E.REPLACE:
        _guard_replacement(facts, now)
    elif event is E.REPORT_FAULT:
        after = replace(after, frozen_at=now, exchange_reason=ExchangeReason.FAULTY)
    elif event is E.EXCHANGE:
        if facts.state is S.FROZEN:
            rule = _guard_faulty_release(facts, now)
        else:
            if exchange_reason is not ExchangeReason.DATA_CHANGE:
                raise RuleViolation(
                    "故障卡须先登记故障并冻结余额48小时",
                    "a faulty card is first reported faulty and its balance frozen for 48 hours",
                    code=ErrorCode.TRANSITION_NOT_ALLOWED,
                    rule="EXC-3",
                )
            after = replace(after, exchange_reason=ExchangeReason.DATA_CHANGE)
    elif event is E.EXTEND:
        rule = _guard_extension(facts, now, new_valid_until)
        after = replace(after, valid_until=new_valid_until)
    elif event is E.EXPIRE:
        _guard_due(facts.valid_until, now, "TERM-2", "有效期未到", "validity has not ended")
    elif event is E.AUTO_TERMINATE:
        due = auto_termination_at(facts)
        _guard_due(due, now, "TERM-3", "未到自动终止时间", "not yet due for automatic termination")
    elif event is E.SCRAP:
        _guard_scrap(facts)
    return Transition(before=facts, after=after, event=event, rule=rule)


def _guard_scrap(facts: CardFacts) -> None:
    """SCR-1/2: only a card the center has back enters the scrap register (one line per card in
    the center's hands); EXC-6: a faulty card goes back to the vendor under warranty instead."""
    if facts.state is S.EXCHANGED and facts.exchange_reason is ExchangeReason.FAULTY:
        raise RuleViolation(
            "故障卡满100张统一发回厂家质保，不报废",
            "faulty cards go back to the vendor under warranty, not to scrap",
            code=ErrorCode.NOT_ELIGIBLE,
            rule="EXC-6",
        )
    if not facts.in_custody:
        raise RuleViolation(
            f"{STATE_NAMES_ZH[facts.state]}的卡片不在智能卡中心手中，不能报废："
            "报废登记表只登记回收的校园卡，与报废卡片一一对应",
            f"a {facts.state} card the center does not have back cannot be scrapped: the scrap "
            "register lists only recovered cards, one to one with the cards",
            code=ErrorCode.NOT_ELIGIBLE,
            rule="SCR-1",
        )


def hand_in(facts: CardFacts) -> CardFacts:
    """A card still out comes back to the center after its procedure (a found lost card after
    the replacement, an exchanged or terminated card brought in): custody only, no new state."""
    if facts.state not in HAND_IN_STATES:
        raise RuleViolation(
            f"{STATE_NAMES_ZH[facts.state]}的卡片不办理交回登记",
            f"a {facts.state} card is not handed in this way",
            code=ErrorCode.TRANSITION_NOT_ALLOWED,
            rule="SCR-1",
        )
    if facts.in_custody:
        raise RuleViolation(
            "该卡片已在智能卡中心",
            "the center has this card already",
            code=ErrorCode.DUPLICATE,
            rule="SCR-1",
        )
    return replace(facts, in_custody=True)


#: Why a card takes no top-up (the purse belongs to the holder: top up through the card in use).
_TOPUP_REFUSALS: dict[CardState, tuple[ErrorCode, str]] = {
    S.REPLACED: (ErrorCode.CARD_VOID, "LOSS-4"),
    S.EXCHANGED: (ErrorCode.CARD_VOID, "EXC-5"),
    S.RECOVERED: (ErrorCode.CARD_VOID, "ISS-4"),
    S.REFUNDED: (ErrorCode.CARD_VOID, "REF-3"),
    S.TERMINATED: (ErrorCode.CARD_TERMINATED, "TERM-1"),
    S.SCRAPPED: (ErrorCode.CARD_VOID, "SCR-1"),
}


def topup_refusal(facts: CardFacts) -> RuleViolation | None:
    """LOSS-4 and its kin: a void or ended card takes no top-up at the counter, a kiosk or the
    web; None if the card may be topped up."""
    refusal = _TOPUP_REFUSALS.get(facts.state)
    if refusal is None:
        return None
    code, rule = refusal
    return RuleViolation(
        f"{STATE_NAMES_ZH[facts.state]}的卡片已作废或终止，不能充值；请使用持卡人在用的卡",
        f"a {facts.state} card is void or ended: no top-up; use the holder's card in use",
        code=code,
        rule=rule,
    )


def _guard_due(due: datetime | None, now: datetime, rule: str, zh: str, en: str) -> None:
    if due is None or now < due:
        when = fmt_local(due) if due is not None else "—"
        raise RuleViolation(
            f"{zh}（{when}）", f"{en} (due {when})", code=ErrorCode.TOO_EARLY, rule=rule
        )


def replacement_possible_from(facts: CardFacts) -> datetime | None:
    """REP-1: the moment a replacement becomes possible, or None if the card is not lost."""
    if facts.loss_reported_at is None:
        return None
    return facts.loss_reported_at + REPLACEMENT_WAIT


def _guard_replacement(facts: CardFacts, now: datetime) -> None:
    possible_from = replacement_possible_from(facts)
    if possible_from is None:
        raise RuleViolation(
            "挂失时间未知，不能补卡", "loss time unknown: cannot replace", rule="REP-1"
        )
    if now < possible_from:
        when = fmt_local(possible_from)
        raise RuleViolation(
            f"挂失满48小时后方可补卡，可补卡时间：{when}",
            f"replacement possible from {when}",
            code=ErrorCode.TOO_EARLY,
            rule="REP-1",
        )


def faulty_release_at(facts: CardFacts) -> datetime | None:
    """EXC-3: when the frozen balance of a faulty card may move to the new card."""
    return None if facts.frozen_at is None else facts.frozen_at + FAULTY_FREEZE


def _guard_faulty_release(facts: CardFacts, now: datetime) -> str:
    release_at = faulty_release_at(facts)
    if release_at is None or now < release_at:
        when = fmt_local(release_at) if release_at else "—"
        raise RuleViolation(
            f"故障卡余额冻结48小时后方可换卡，可换卡时间：{when}",
            f"the faulty card's balance stays frozen for 48 hours: exchange possible from {when}",
            code=ErrorCode.TOO_EARLY,
            rule="EXC-3",
        )
    return "EXC-3"


def auto_termination_at(facts: CardFacts) -> datetime | None:
    """TERM-3: 3 calendar months after the end of validity."""
    if facts.valid_until is None:
        return None
    return add_months(facts.valid_until, AUTO_TERMINATION_MONTHS)


def _guard_extension(facts: CardFacts, now: datetime, new_valid_until: datetime | None) -> str:
    if new_valid_until is None:
        raise RuleViolation(
            "请给出新的有效期",
            "give the new validity end",
            code=ErrorCode.INVALID_INPUT,
            rule="TERM-2",
        )
    if new_valid_until <= now:
        raise RuleViolation(
            "新有效期须晚于当前时间",
            "the new validity must end in the future",
            code=ErrorCode.INVALID_INPUT,
            rule="TERM-2",
        )
    if facts.state is S.EXPIRED:
        deadline = auto_termination_at(facts)
        if deadline is not None and now >= deadline:
            raise RuleViolation(
                f"过期超过3个月（{fmt_local(deadline)}），不能延期",
                f"expired over 3 months ago ({fmt_local(deadline)}): can no longer be extended",
                code=ErrorCode.TOO_LATE,
                rule="TERM-3",
            )
        return "TERM-3"
    return "TERM-2"


# --- taps ---------------------------------------------------------------------------------

_TAP_REFUSALS: dict[CardState, ErrorCode] = {
    S.PRINTING: ErrorCode.CARD_NOT_ISSUED,
    S.READY: ErrorCode.CARD_NOT_ISSUED,
    S.LOST: ErrorCode.CARD_LOST,
    S.FROZEN: ErrorCode.CARD_FROZEN,
    S.SUSPENDED: ErrorCode.CARD_SUSPENDED,
    S.EXPIRED: ErrorCode.CARD_EXPIRED,
    S.REPLACED: ErrorCode.CARD_VOID,
    S.EXCHANGED: ErrorCode.CARD_VOID,
    S.RECOVERED: ErrorCode.CARD_VOID,
    S.REFUNDED: ErrorCode.CARD_VOID,
    S.TERMINATED: ErrorCode.CARD_TERMINATED,
    S.SCRAPPED: ErrorCode.CARD_VOID,
}

TAP_RULES: dict[ErrorCode, str] = {
    ErrorCode.CARD_LOST: "LOSS-2",
    ErrorCode.CARD_FROZEN: "EXC-3",
    ErrorCode.CARD_SUSPENDED: "MEAL-4",
    ErrorCode.CARD_EXPIRED: "TERM-2",
    ErrorCode.CARD_VOID: "LOSS-4",
    ErrorCode.CARD_TERMINATED: "TERM-1",
    ErrorCode.CARD_NOT_ISSUED: "REP-4",
}


def tap_refusal(state: CardState, valid_until: datetime | None, now: datetime) -> ErrorCode | None:
    """Why a terminal must refuse this card now, or None if it may be used (LOSS-2, TERM-2).

    An active card whose validity has ended is refused *at once* (TERM-2) even before the
    scheduler has moved it to :attr:`CardState.EXPIRED`.
    """
    if state is S.ACTIVE:
        if valid_until is not None and now >= valid_until:
            return ErrorCode.CARD_EXPIRED
        return None
    return _TAP_REFUSALS[state]
