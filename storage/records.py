"""Typed records the registry hands to the service layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, NamedTuple, Self

from protocol.cards.identity import IdDocType
from protocol.cards.lifecycle import CardFacts, ExchangeReason
from protocol.cards.policy import HolderData
from protocol.types import CardKind, CardState, HolderCategory, HolderKind, HolderStatus
from storage.pii import holder_row


class _FromRow:
    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True, slots=True)
class Holder(_FromRow):
    id: int
    kind: HolderKind
    category: HolderCategory
    number: str | None
    name: str
    national_id: str | None
    college: str | None
    class_name: str | None
    department: str | None
    photo_ref: str | None
    valid_until: datetime | None
    status: HolderStatus
    password_hash: str | None
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    deregistered_at: datetime | None
    application_ref: str | None
    #: ISS-8/11: which document ``national_id`` is the number of (migration 0007)
    id_doc_type: IdDocType = IdDocType.RESIDENT_ID

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """The number decrypted (issue 15) with the key its ciphertext names, on any path."""
        if row.get("national_id") is None and row.get("national_id_enc"):
            row = holder_row(dict(row))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})

    def __post_init__(self) -> None:
        object.__setattr__(self, "id_doc_type", IdDocType(self.id_doc_type))
        object.__setattr__(self, "kind", HolderKind(self.kind))
        object.__setattr__(self, "category", HolderCategory(self.category))
        object.__setattr__(self, "status", HolderStatus(self.status))

    @property
    def data(self) -> HolderData:
        return HolderData(
            kind=self.kind,
            number=self.number,
            name=self.name,
            national_id=self.national_id,
            college=self.college,
            class_name=self.class_name,
            department=self.department,
            photo_ref=self.photo_ref,
        )


@dataclass(frozen=True, slots=True)
class Card(_FromRow):
    id: int
    serial: str
    uid: str | None
    kind: CardKind
    holder_id: int
    state: CardState
    type_group: int
    card_write_pending: bool
    valid_until: datetime | None
    loss_reported_at: datetime | None
    frozen_at: datetime | None
    exchange_reason: ExchangeReason | None
    ready_on: date | None
    replaces_card_id: int | None
    created_at: datetime
    handed_over_at: datetime | None
    updated_at: datetime
    in_custody: bool = False  # SCR-1: the card is physically back at the center (migration 0008)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", CardKind(self.kind))
        object.__setattr__(self, "state", CardState(self.state))
        if self.exchange_reason is not None:
            object.__setattr__(self, "exchange_reason", ExchangeReason(self.exchange_reason))
        object.__setattr__(self, "card_write_pending", bool(self.card_write_pending))
        object.__setattr__(self, "in_custody", bool(self.in_custody))

    @property
    def facts(self) -> CardFacts:
        return CardFacts(
            kind=self.kind,
            state=self.state,
            valid_until=self.valid_until,
            loss_reported_at=self.loss_reported_at,
            frozen_at=self.frozen_at,
            exchange_reason=self.exchange_reason,
            in_custody=self.in_custody,
        )


@dataclass(frozen=True, slots=True)
class Transfer(_FromRow):
    id: int
    kind: str
    source: str
    dest: str
    amount: int
    ref_id: int | None
    at: datetime
    actor: str
    card_id: int | None
    terminal_id: str | None
    request_id: str | None
    memo: str


@dataclass(frozen=True, slots=True)
class Receipt(_FromRow):
    id: int
    receipt_no: int
    book_id: int
    holder_id: int | None
    payer: str
    item: str
    amount: int
    at: datetime
    cashier: str
    transfer_id: int


Row = dict[str, Any]


class MealAllowance(NamedTuple):
    """MEAL-1: a holder's subsidised meals in one month, where the quota exists and is enabled."""

    per_month: int
    used: int

    @property
    def left(self) -> int:
        return max(0, self.per_month - self.used)

    @classmethod
    def of(cls, quota: Row | None, usage: Row | None) -> MealAllowance | None:
        """From the holder's ``meal_quotas`` row and the month's ``meal_usage`` row (each
        backend reads the two rows its own way; this is the one reading of them)."""
        if quota is None or not quota["enabled"]:
            return None
        return cls(int(quota["meals_per_month"]), int(usage["used"]) if usage else 0)


class TapCard(NamedTuple):
    """What a tap decision reads of a card and its holder, in one indexed lookup."""

    id: int
    holder_id: int
    state: CardState
    valid_until: datetime | None
    type_group: int
    holder_status: str
