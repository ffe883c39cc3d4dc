"""Read models for the operator console (issue 11): the holder page, the card on the reader, and
the audit of refused console requests. Rules stay in the procedure services; this module only
reads, except :meth:`ConsoleViews.record_refusal` (an audit row)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from gateway.services.base import Actor, Context
from gateway.services.cards_base import RefundSlip
from protocol.cards.clock import CAMPUS_TZ
from protocol.cards.fees import FeeItem
from protocol.cards.identity import mask_id_doc, mask_national_id
from protocol.cards.lifecycle import (
    STATE_NAMES_ZH,
    faulty_release_at,
    replacement_possible_from,
)
from protocol.errors import AccessDenied, NotFound
from protocol.ledger import TransferKind
from protocol.ledger.postings import hold, purse
from protocol.types import CardState, Permission
from storage.ports import Tx
from storage.records import Card, Holder, Receipt


@dataclass(frozen=True, slots=True)
class OfflineBacklog:
    """A terminal's offline sales as far as the gateway knows them (the terminals page)."""

    uploaded: int
    refused: int
    missing: int  # sequence numbers not uploaded between the first and the last upload
    last_upload: datetime | None


#: Any counter duty may open a holder's page (ACC-1); each action checks its own permission.
COUNTER_DUTIES = frozenset(
    {
        Permission.CARD_HANDLING,
        Permission.TOPUP_CENTER,
        Permission.REPORTS,
        Permission.FEES,
        Permission.MEAL_SUBSIDY,
        Permission.CONSUMPTION_CORRECTION,
    }
)
#: Cards a console search or a page lists at most.
MAX_LISTED = 50


@dataclass(frozen=True, slots=True)
class CardEventView:
    at: datetime
    event: str
    from_state: str | None
    to_state: str
    rule: str
    actor: str
    channel: str


@dataclass(frozen=True, slots=True)
class CardView:
    card: Card
    state_zh: str
    events: list[CardEventView]
    #: REP-1: a lost card may be replaced from this moment.
    replaceable_from: datetime | None
    #: EXC-3: a faulty card's frozen balance moves from this moment.
    released_at: datetime | None


@dataclass(frozen=True, slots=True)
class HolderView:
    holder: Holder
    id_masked: str
    balance: int
    frozen: int
    cards: list[CardView]
    receipts: list[Receipt]
    alerts: int
    meal: dict[str, Any] | None = field(default=None)


def require_counter_duty(actor: Actor) -> None:
    if not actor.permissions & COUNTER_DUTIES:
        actor.require(Permission.CARD_HANDLING)  # raises with the usual message


class ConsoleViews:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def holder(self, actor: Actor, holder_id: int) -> HolderView:
        """What the counter sees of one holder without giving a purpose: masked ID, cards with
        their full state history and time guards, balance and frozen amount, receipts, alerts.
        The full ID, the photo and the transaction history are read through
        :class:`gateway.services.privacy.PrivacyService` with a purpose, audited (issue 15)."""
        require_counter_duty(actor)
        async with self.ctx.registry.read() as tx:
            holder = await tx.get_holder(holder_id)
            cards = await tx.cards_of_holder(holder_id)
            views: list[CardView] = []
            for card in sorted(cards, key=lambda c: c.id, reverse=True):
                rows = await tx.find("card_events", card_id=card.id, order_by="id")
                events = [
                    CardEventView(
                        r["at"],
                        str(r["event"]),
                        r["from_state"],
                        str(r["to_state"]),
                        str(r["rule"]),
                        str(r["actor"]),
                        str(r["channel"]),
                    )
                    for r in rows
                ]
                facts = card.facts
                views.append(
                    CardView(
                        card,
                        STATE_NAMES_ZH.get(card.state, str(card.state)),
                        events,
                        replacement_possible_from(facts) if card.state is CardState.LOST else None,
                        faulty_release_at(facts) if card.state is CardState.FROZEN else None,
                    )
                )
            balance = await tx.balance(purse(holder_id))
            frozen = await tx.balance(hold(holder_id))
            receipt_rows = await tx.find(
                "receipts", holder_id=holder_id, order_by="id", limit=MAX_LISTED
            )
            receipts = [Receipt.from_row(r) for r in receipt_rows]
            alerts = await tx.count("holder_alerts", holder_id=holder_id, read_at=None)
            meal = await tx.get("meal_quotas", holder_id)
        return HolderView(
            holder=holder,
            id_masked=mask_id_doc(holder.national_id or ""),
            balance=balance,
            frozen=frozen,
            cards=views,
            receipts=receipts,
            alerts=alerts,
            meal=dict(meal) if meal is not None else None,
        )

    async def holder_of_card_uid(self, actor: Actor, uid: str) -> Card:
        """The card whose UID the counter's reader saw (canonical upper-case hex)."""
        require_counter_duty(actor)
        async with self.ctx.registry.read() as tx:
            card = await tx.card_by_uid(uid)
        if card is None:
            raise NotFound("读卡器上的卡片未登记", "the card on the reader is not registered")
        return card

    async def receipt(self, actor: Actor, receipt_no: int) -> tuple[Receipt, Holder | None]:
        """A receipt to print again (FEE-2): by its number from the receipt book."""
        require_counter_duty(actor)
        async with self.ctx.registry.read() as tx:
            rows = (
                await tx.find("receipts", receipt_no=receipt_no, limit=1)
                if _fits(receipt_no)
                else []
            )
            if not rows:
                raise NotFound(f"无此收据 {receipt_no}", f"no receipt {receipt_no}")
            receipt = Receipt.from_row(rows[0])
            holder = (
                await tx.get_holder(receipt.holder_id) if receipt.holder_id is not None else None
            )
        return receipt, holder

    async def refund_slip(self, actor: Actor, slip_no: int) -> tuple[RefundSlip, datetime, str]:
        """REF-3's deposit refund slip to print again: the deposit_out transfer numbered
        ``slip_no``, its card and holder; the deposit receipt is the holder's (ISS-10). With the
        time and the operator who paid it out."""
        require_counter_duty(actor)
        async with self.ctx.registry.read() as tx:
            row = await tx.get("transfers", slip_no) if _fits(slip_no) else None
            if row is None or row["kind"] != TransferKind.DEPOSIT_OUT.value or not row["card_id"]:
                raise NotFound(f"无此退款单 {slip_no}", f"no refund slip {slip_no}")
            card = await tx.get_card(int(row["card_id"]))
            holder = await tx.get_holder(card.holder_id)
            deposits = [
                int(r["receipt_no"])
                for r in await tx.find("receipts", holder_id=holder.id, order_by="id")
                if str(r["item"]).endswith(f"/ {FeeItem.DEPOSIT.value}")
            ]
        slip = RefundSlip(
            card=card,
            slip_no=slip_no,
            amount=int(row["amount"]),
            holder_name=holder.name,
            deposit_receipt_no=deposits[-1] if deposits else None,
        )
        return slip, row["at"], str(row["actor"])

    async def offline_backlog(self, actor: Actor) -> dict[str, OfflineBacklog]:
        """Per terminal, what the gateway knows of its offline sales (terminal contract §8):
        the uploads received, the last one, those refused, and the sequence numbers missing
        between the first and the last upload (sales the terminal has not uploaded: still in
        its queue, or lost)."""
        actor.require(Permission.TERMINALS)
        async with self.ctx.registry.read() as tx:
            rows = await tx.rows(
                "SELECT terminal_id, count(*) AS n, min(seq) AS lo, max(seq) AS hi,"
                " max(uploaded_at) AS last,"
                " sum(CASE WHEN result = 'accepted' THEN 0 ELSE 1 END) AS refused"
                " FROM offline_sales GROUP BY terminal_id"
            )
        return {
            str(r["terminal_id"]): OfflineBacklog(
                uploaded=int(r["n"]),
                refused=int(r["refused"] or 0),
                missing=int(r["hi"]) - int(r["lo"]) + 1 - int(r["n"]),
                last_upload=_utc(r["last"]),
            )
            for r in rows
        }

    async def record_refusal(self, actor: Actor, action: str, exc: AccessDenied) -> None:
        """A console request refused for lack of permission is audited (forged or stale form)."""
        async with self.ctx.registry.transaction() as tx:
            await tx.audit(
                self.ctx.wall_now(),
                actor.name,
                "console.denied",
                "console",
                action[:64],
                None,
                {"code": exc.code.value, "rule": exc.rule},
            )

    async def pending_write(self, uid: str, serial: str) -> int | None:
        """MEAL-3/4: the type group still to write onto the card with this UID and serial."""
        async with self.ctx.registry.read() as tx:
            card = await tx.card_by_uid(uid)
        if card is None or card.serial != serial or not card.card_write_pending:
            return None
        return card.type_group

    async def audit(
        self,
        actor: Actor,
        *,
        who: str | None = None,
        entity: str | None = None,
        entity_id: str | None = None,
        day: date | None = None,
        limit: int = 200,
    ) -> list[AuditRow]:
        """The audit log filtered in the query (so an old entry of one operator is found, not only
        the newest rows), newest first; national IDs in before/after masked."""
        actor.require(Permission.REPORTS)
        where: list[str] = []
        params: dict[str, Any] = {"limit": max(1, min(limit, 1000))}
        for column, value in (("actor", who), ("entity", entity), ("entity_id", entity_id)):
            if value:
                where.append(f"{column} = :{column}")
                params[column] = value
        async with self.ctx.registry.read() as tx:
            if day is not None:
                start = datetime.combine(day, time(0), CAMPUS_TZ)
                where.append("at >= :start AND at < :end")
                params["start"] = _time_param(tx, start)
                params["end"] = _time_param(tx, start + timedelta(days=1))
            rows = await tx.rows(
                "SELECT id, at, actor, action, entity, entity_id, before, after"  # noqa: S608
                " FROM audit_log"
                + (f" WHERE {' AND '.join(where)}" if where else "")
                + " ORDER BY id DESC LIMIT :limit",
                params,
            )
        return [
            AuditRow(
                int(r["id"]),
                _utc(r["at"]),
                str(r["actor"]),
                str(r["action"]),
                str(r["entity"]),
                str(r["entity_id"]),
                _mask(r["before"]),
                _mask(r["after"]),
            )
            for r in rows
        ]


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime | None
    actor: str
    action: str
    entity: str
    entity_id: str
    before: str | None
    after: str | None


_NATIONAL_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _mask(text: object) -> str | None:
    if text is None:
        return None
    return _NATIONAL_ID.sub(lambda m: mask_national_id(m.group(0)), str(text))


def _time_param(tx: Tx, moment: datetime) -> object:
    utc = moment.astimezone(UTC)
    if tx.dialect == "sqlite":  # stored as naive UTC text (storage/sql.py)
        return utc.replace(tzinfo=None).strftime(SQLITE_TIME_FORMAT)
    return utc


def _fits(number: int) -> bool:
    """A number typed into a URL that a BIGINT column can hold (else it names nothing)."""
    return 0 <= number < 2**63


def _utc(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
