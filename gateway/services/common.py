"""Mechanisms every procedure uses: applying a lifecycle event, fees with receipts, serials."""

from __future__ import annotations

import unicodedata
from dataclasses import asdict
from datetime import datetime
from json import dumps
from typing import Any

from gateway.services.base import Actor, Context
from gateway.services.massblock import note_denied
from protocol.cards.fees import FEE_NAMES_ZH, FeeItem
from protocol.cards.identity import IdDocType, mask_id_doc, validate_id_doc
from protocol.cards.lifecycle import (
    FINAL_STATES,
    CardEvent,
    ExchangeReason,
    hand_in,
    tap_refusal,
    transition,
)
from protocol.carduid import normalise_card_uid
from protocol.errors import Duplicate, ErrorCode, InvalidInput, OnecardError, RuleViolation
from protocol.ledger import fee
from protocol.types import CardKind, CardState, HolderStatus
from storage.ports import Tx
from storage.records import Card, Holder, Receipt

SERIAL_WIDTH = 10
LIVE_STATES = frozenset(
    {CardState.ACTIVE, CardState.LOST, CardState.FROZEN, CardState.SUSPENDED, CardState.EXPIRED}
)
PENDING_STATES = frozenset({CardState.PRINTING, CardState.READY})


def deny_status(card: Card, now: datetime) -> ErrorCode | None:
    """How a terminal must treat this card; None = usable. Unissued cards are not listed."""
    if card.state in PENDING_STATES:
        return None
    return tap_refusal(card.state, card.valid_until, now)


def _state_deny(card: Card, now: datetime) -> ErrorCode | None:
    """The deny-list status implied by the card's state, ignoring the validity date."""
    if card.state in PENDING_STATES:
        return None
    return tap_refusal(card.state, None, now)


async def apply_event(
    tx: Tx,
    card: Card,
    event: CardEvent,
    *,
    now: datetime,
    actor: Actor,
    rule: str | None = None,
    detail: str | None = None,
    new_valid_until: datetime | None = None,
    exchange_reason: ExchangeReason | None = None,
    extra: dict[str, Any] | None = None,
    card_returned: bool = False,
) -> Card:
    """The one way a card changes state: table check, row update, history, deny-list change.

    ``card_returned``: the counter takes the card back with this event (SCR-1 custody)."""
    result = transition(
        card.facts,
        event,
        now,
        new_valid_until=new_valid_until,
        exchange_reason=exchange_reason,
        card_returned=card_returned,
    )
    after = result.after
    values: dict[str, Any] = {
        "state": after.state.value,
        "valid_until": after.valid_until,
        "loss_reported_at": after.loss_reported_at,
        "frozen_at": after.frozen_at,
        "exchange_reason": after.exchange_reason.value if after.exchange_reason else None,
        "in_custody": after.in_custody,
        "updated_at": now,
        **(extra or {}),
    }
    if event is CardEvent.HAND_OVER:
        values["handed_over_at"] = now
    await tx.update("cards", card.id, values)
    used_rule = rule or result.rule
    await tx.insert(
        "card_events",
        {
            "card_id": card.id,
            "event": event.value,
            "from_state": card.state.value,
            "to_state": after.state.value,
            "rule": used_rule,
            "at": now,
            "actor": actor.name,
            "channel": actor.channel,
            "detail": detail,
        },
    )
    updated = await tx.get_card(card.id)
    # compare by state alone: an active card past its validity is refused by time already, so a
    # time-aware comparison would never list the scheduler's expiry (TERM-2) for the terminals
    before_deny, after_deny = _state_deny(card, now), _state_deny(updated, now)
    if before_deny != after_deny:
        await tx.add_deny_change(updated, event.value, after_deny is not None, now)
        if after_deny is not None:
            note_denied()
    await tx.audit(
        now,
        actor.name,
        f"card.{event.value}",
        "card",
        card.id,
        {"state": card.state.value},
        {"state": after.state.value, "rule": used_rule},
    )
    return updated


async def record_hand_in(
    tx: Tx, card: Card, *, now: datetime, actor: Actor, rule: str, detail: str | None = None
) -> Card:
    """A card still out comes back to the center after its procedure (SCR-1 custody): no new
    state, one history line, audited."""
    hand_in(card.facts)  # refuses a card that is not out, or not in a state to come back
    await tx.update("cards", card.id, {"in_custody": True, "updated_at": now})
    await tx.insert(
        "card_events",
        {
            "card_id": card.id,
            "event": "hand_in",
            "from_state": card.state.value,
            "to_state": card.state.value,
            "rule": rule,
            "at": now,
            "actor": actor.name,
            "channel": actor.channel,
            "detail": detail,
        },
    )
    await tx.audit(
        now, actor.name, "card.hand_in", "card", card.id, {"in_custody": False}, {"rule": rule}
    )
    return await tx.get_card(card.id)


async def cashier_name(tx: Tx, actor: Actor) -> str:
    """FEE-2/3: the receipt's 收款人 is the operator's real name, not the login."""
    if actor.real_name:
        return actor.real_name
    if actor.operator_id is not None:
        row = await tx.get("operators", actor.operator_id)
        if row is not None and row["username"] == actor.name:
            return str(row["real_name"])
    return actor.name


async def collect_fee(
    tx: Tx, ctx: Context, holder: Holder, item: FeeItem, *, now: datetime, actor: Actor
) -> Receipt | None:
    """FEE-1..3: cash into fee income, with the next receipt of the open receipt book."""
    amount = ctx.fees.amount(item)
    if amount == 0:
        return None
    transfer_id = await tx.post(
        fee(amount, memo=item.value), at=now, actor=actor.name, holder_id=holder.id
    )
    return await tx.issue_receipt(
        holder_id=holder.id,
        payer=holder.name,
        item=f"{FEE_NAMES_ZH[item]} / {item.value}",
        amount=amount,
        at=now,
        cashier=await cashier_name(tx, actor),
        transfer_id=transfer_id,
    )


async def allocate_serial(tx: Tx, kind: CardKind) -> str:
    """INV-2: the next unused serial from the blank cards the counter requisitioned."""
    for req in await tx.find("requisitions", kind=kind.value, order_by="id"):
        highest = await tx.used_serials_between(req["serial_from"], req["serial_to"])
        nxt = int(req["serial_from"]) if highest is None else int(highest) + 1
        if nxt <= int(req["serial_to"]):
            return f"{nxt:0{SERIAL_WIDTH}d}"
    raise OnecardError(
        "柜台空白卡已用完，请向网络管理科科长申领新卡",
        f"no blank {kind} cards left at the counter: requisition new cards (INV-2)",
        code=ErrorCode.OUT_OF_STOCK,
        rule="INV-2",
    )


async def allocate_serials(tx: Tx, kind: CardKind, count: int) -> list[str]:
    """INV-2: ``count`` consecutive unused serials from the requisitioned ranges."""
    out: list[str] = []
    for req in await tx.find("requisitions", kind=kind.value, order_by="id"):
        highest = await tx.used_serials_between(req["serial_from"], req["serial_to"])
        nxt = int(req["serial_from"]) if highest is None else int(highest) + 1
        while nxt <= int(req["serial_to"]) and len(out) < count:
            out.append(f"{nxt:0{SERIAL_WIDTH}d}")
            nxt += 1
        if len(out) == count:
            return out
    raise OnecardError(
        f"柜台空白卡不足 {count} 张，请向网络管理科科长申领新卡",
        f"fewer than {count} blank {kind} cards left at the counter: requisition more (INV-2)",
        code=ErrorCode.OUT_OF_STOCK,
        rule="INV-2",
    )


async def new_card(
    tx: Tx,
    holder: Holder,
    kind: CardKind,
    state: CardState,
    *,
    now: datetime,
    actor: Actor,
    rule: str,
    valid_until: datetime | None,
    uid: str | None = None,
    replaces: Card | None = None,
    ready_on: Any = None,
    type_group: int = 0,
) -> Card:
    given = card_uid_input(uid)
    if given is not None and await tx.card_by_uid(given) is not None:
        raise Duplicate(
            "该卡片物理号(UID)已登记在另一张卡上", "this card UID is already registered"
        )
    serial = await allocate_serial(tx, kind)
    uid = given or default_uid(serial)
    card_id = await tx.insert(
        "cards",
        {
            "serial": serial,
            "uid": uid,
            "kind": kind.value,
            "holder_id": holder.id,
            "state": state.value,
            "type_group": type_group,
            "valid_until": valid_until,
            "ready_on": ready_on,
            "replaces_card_id": replaces.id if replaces else None,
            "created_at": now,
            "handed_over_at": now if state is CardState.ACTIVE else None,
            "updated_at": now,
            "in_custody": state is CardState.READY,  # made at the center, waiting there
        },
    )
    await tx.insert(
        "card_events",
        {
            "card_id": card_id,
            "event": "issue",
            "from_state": None,
            "to_state": state.value,
            "rule": rule,
            "at": now,
            "actor": actor.name,
            "channel": actor.channel,
            "detail": f"replaces card {replaces.id}" if replaces else None,
        },
    )
    await tx.audit(
        now,
        actor.name,
        "card.issue",
        "card",
        card_id,
        None,
        {"kind": kind.value, "state": state.value, "rule": rule},
    )
    return await tx.get_card(card_id)


def card_uid_input(uid: str | None) -> str | None:
    """A UID typed at the counter, given on the command line or read by the counter's reader,
    in its one canonical form (``None``: not given); bad input is refused with a bilingual
    :class:`~protocol.errors.InvalidInput` (issue 8, item 10: a lower-case UID once stopped the
    gateway)."""
    if uid is None or not uid.strip():
        return None
    return normalise_card_uid(uid)


def default_uid(serial: str) -> str:
    """A 7-byte UID (14 hex digits, like MIFARE) derived from the serial, used until the
    counter reader records the chip's real UID."""
    return f"04{int(serial):012X}"


def verify_identity(holder: Holder, presented: str | None, rule: str) -> None:
    """The operator checks the holder's valid ID document or student/staff card (LOSS-1, LOSS-3,
    REP-1, ISS-7): the number typed is the holder's document number (resident ID, passport,
    HK/Macau or Taiwan permit, permanent residence card: ISS-8/11, normalised as that document is,
    e.g. a full-width or lower-case entry, an old permit form) or the student/staff number."""
    typed = (presented or "").strip()
    if not typed:
        raise RuleViolation(
            "须核验本人有效证件（身份证、护照等证件号码或学号/工号）",
            "verify the holder's valid ID: give the ID document (national ID, passport, permit)"
            " or student/staff number shown",
            code=ErrorCode.AUTH_FAILED,
            rule=rule,
        )
    if holder.national_id and same_id_doc(holder.id_doc_type, holder.national_id, typed):
        return
    if holder.number and id_key(typed) == id_key(holder.number):
        return
    shown = mask_id_doc(id_key(typed))
    raise RuleViolation(
        f"证件号码 {shown} 与持卡人信息不符",
        f"the ID shown ({shown}) does not match the holder",
        code=ErrorCode.AUTH_FAILED,
        rule=rule,
    )


def id_key(text: str) -> str:
    """A number as typed, compared loosely: full-width folded, upper case, no spaces/hyphens."""
    return "".join(unicodedata.normalize("NFKC", text).upper().replace("-", " ").split())


def same_id_doc(doc_type: IdDocType, stored: str, typed: str) -> bool:
    """Whether ``typed`` is the document ``stored`` (normalised as its type is, ISS-8/11)."""
    try:
        return validate_id_doc(doc_type, typed) == stored
    except InvalidInput:
        return id_key(typed) == id_key(stored)


def require_active_holder(holder: Holder) -> None:
    if holder.status is not HolderStatus.ACTIVE:
        raise RuleViolation(
            "持卡人已注销", "holder deregistered", code=ErrorCode.NOT_ELIGIBLE, rule="TERM-6"
        )


def live_card(cards: list[Card]) -> Card | None:
    live = [c for c in cards if c.state in LIVE_STATES]
    return live[-1] if live else None


def pending_card(cards: list[Card]) -> Card | None:
    pending = [c for c in cards if c.state in PENDING_STATES]
    return pending[-1] if pending else None


def is_final(card: Card) -> bool:
    return card.state in FINAL_STATES


async def archive_and_deregister(
    tx: Tx, holder: Holder, *, reason: str, now: datetime, actor: Actor
) -> None:
    """REF-4 / TERM-6: back up and record the holder's data, then deregister."""
    snapshot = {k: v for k, v in asdict(holder).items() if k != "password_hash"}
    snapshot["cards"] = [asdict(c) for c in await tx.cards_of_holder(holder.id)]
    await tx.insert(
        "holder_archive",
        {
            "holder_id": holder.id,
            "at": now,
            "actor": actor.name,
            "reason": reason,
            "snapshot": dumps(snapshot, ensure_ascii=False, default=str, sort_keys=True),
        },
    )
    await tx.update(
        "holders", holder.id, {"status": HolderStatus.DEREGISTERED.value, "deregistered_at": now}
    )
    await tx.audit(
        now,
        actor.name,
        "holder.deregister",
        "holder",
        holder.id,
        {"status": "active"},
        {"status": "deregistered", "reason": reason},
    )
