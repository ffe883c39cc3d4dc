"""Request and response ``data`` models of every operation of the terminal contract.

One pair per operation; the registry in :mod:`protocol.wire.registry` ties them to op names and to
the terminal kinds allowed to call them. All models are strict: JSON types must match exactly
(``1`` is not ``1.0``, ``"1"`` or ``true``) and unknown fields are refused.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from protocol.errors import ErrorCode
from protocol.wire.fields import (
    AmountFen,
    CardUid,
    EpochMs,
    Fen,
    HoldId,
    MerchantId,
    RequestId,
    SessionToken,
    TerminalKind,
    TransferId,
    Version,
    WireModel,
)

__all__ = [
    "AccessRequest",
    "AccessResponse",
    "BalanceRequest",
    "BalanceResponse",
    "ChangePasswordRequest",
    "ChangePasswordResponse",
    "Direction",
    "GatewayStatus",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "HelloRequest",
    "HelloResponse",
    "LoginRequest",
    "LoginResponse",
    "MealPaidBy",
    "MealRequest",
    "MealResponse",
    "OfflineRejection",
    "OfflineSale",
    "OfflineUploadRequest",
    "OfflineUploadResponse",
    "Presence",
    "PurchaseRequest",
    "PurchaseResponse",
    "RecentTransaction",
    "ReportLossRequest",
    "ReportLossResponse",
    "SeqRange",
    "TerminalConfig",
    "TerminalStatus",
    "TopupRequest",
    "TopupResponse",
    "TransactionKind",
    "UnlockRequest",
    "UnlockResponse",
    "VoidRequest",
    "VoidResponse",
    "WaterHoldRequest",
    "WaterHoldResponse",
    "WaterReleaseRequest",
    "WaterReleaseResponse",
    "WaterSettleRequest",
    "WaterSettleResponse",
]

MAX_OFFLINE_BATCH = 100
MAX_RECENT = 20

Firmware = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[ -~]+$")]
HolderNumber = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,32}$")]
Password = Annotated[str, StringConstraints(min_length=1, max_length=64)]
CardSerial = Annotated[str, StringConstraints(pattern=r"^[0-9A-Z]{4,20}$")]
PaymentRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MaskedName = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Seq = Annotated[int, Field(ge=1, le=2**31 - 1)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Seconds = Annotated[int, Field(ge=1, le=30 * 24 * 3600)]


# --------------------------------------------------------------------------- terminal (all kinds)


class TerminalConfig(WireModel):
    """Limits a terminal applies while it cannot reach the gateway (offline mode)."""

    heartbeat_interval_s: Seconds
    #: Stop approving offline once the deny list held is older than this (ARCHITECTURE.md §4).
    offline_max_age_s: Seconds
    #: Largest single offline sale; 0 disables offline sales.
    offline_max_amount_fen: Fen
    #: Most offline money per card per day.
    offline_max_daily_fen: Fen
    #: Most offline sales stored before the terminal refuses further taps.
    offline_max_count: Count
    #: A request is decided only until ``sent_ms + request_ttl_ms`` (gateway clock); later it is
    #: answered ``expired`` and moves no money. Set MQTT v5 Message Expiry to the same (seconds).
    request_ttl_ms: Count = 5000
    #: Largest tolerated difference between the terminal's and the gateway's clock: a ``sent_ms``
    #: further ahead is ``clock_skew``. A terminal may sell a tap offline only after
    #: ``sent_ms + request_ttl_ms + clock_tolerance_ms`` without a reply (§8.3).
    clock_tolerance_ms: Count = 2000


class HelloRequest(WireModel):
    """``hello``: first request after every (re)connect."""

    kind: TerminalKind
    firmware: Firmware
    denylist_version: Version


class HelloResponse(WireModel):
    server_time_ms: EpochMs
    denylist_version: Version
    config: TerminalConfig


class HeartbeatRequest(WireModel):
    """``heartbeat``: every ``heartbeat_interval_s``; reports the deny-list version held."""

    denylist_version: Version
    pending_offline: Count = 0


class HeartbeatResponse(WireModel):
    server_time_ms: EpochMs
    denylist_version: Version


class Presence(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class TerminalStatus(WireModel):
    """Retained payload of ``onecard/v1/t/{id}/status``; also the last will (``offline``)."""

    v: Annotated[int, Field(ge=1, le=1)] = 1
    state: Presence
    kind: TerminalKind | None = None
    firmware: Firmware | None = None


class GatewayStatus(WireModel):
    """Retained payload of ``onecard/v1/gateway/status``."""

    v: Annotated[int, Field(ge=1, le=1)] = 1
    state: Presence
    denylist_version: Version | None = None


# --------------------------------------------------------------------------------------- kiosk


class LoginRequest(WireModel):
    """``login``: student/staff number and password (LOSS-1)."""

    number: HolderNumber
    password: Password = Field(repr=False)


class LoginResponse(WireModel):
    session: SessionToken = Field(repr=False)
    session_expires_ms: EpochMs
    #: Masked name for the screen, e.g. ``张*``; never the full name.
    holder_name_masked: MaskedName
    #: The password is still the initial one: the kiosk should lead to ``change_password``.
    must_change_password: bool = False


class BalanceRequest(WireModel):
    session: SessionToken = Field(repr=False)


class Direction(StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"


class TransactionKind(StrEnum):
    PURCHASE = "purchase"
    MEAL = "meal"
    WATER = "water"
    TOPUP = "topup"
    VOID = "void"
    CORRECTION = "correction"  # TOP-2
    TRANSFER = "transfer"  # balance moved to a replacement card (REP-5, EXC-3)
    OTHER = "other"


class RecentTransaction(WireModel):
    at_ms: EpochMs
    kind: TransactionKind
    direction: Direction
    amount_fen: Fen
    #: The id of the terminal where it happened (``pos-001``); null for the counter and online
    #: channels. Show it as is or map it to a place name of your own (contract 1.1, §7).
    place: Annotated[str, StringConstraints(max_length=64)] | None = None


class BalanceResponse(WireModel):
    balance_fen: Fen
    #: Newest first, at most 20.
    recent: Annotated[list[RecentTransaction], Field(max_length=MAX_RECENT)]


class ReportLossRequest(WireModel):
    """``report_loss`` (挂失, LOSS-1/LOSS-2); ``card_serial`` picks one of several cards."""

    session: SessionToken = Field(repr=False)
    card_serial: CardSerial | None = None


class ReportLossResponse(WireModel):
    #: Deny-list version that contains the loss; it is refused everywhere from this version on.
    denylist_version: Version
    #: Online terminals that already report holding that version (null if not yet known).
    terminals_applied: Count | None = None


class ChangePasswordRequest(WireModel):
    session: SessionToken = Field(repr=False)
    old_password: Password = Field(repr=False)
    new_password: Annotated[str, StringConstraints(min_length=6, max_length=64)] = Field(repr=False)


class ChangePasswordResponse(WireModel):
    """Empty ``data``: ``ok`` is the answer."""


class TopupRequest(WireModel):
    """``topup`` (TOP-1): exactly one of ``session`` (logged-in holder) or ``card`` (card on the
    reader) names the purse; ``payment_ref`` is the cash/payment receipt of the kiosk."""

    session: SessionToken | None = Field(default=None, repr=False)
    card: CardUid | None = None
    amount_fen: AmountFen
    payment_ref: PaymentRef

    @model_validator(mode="after")
    def _one_purse(self) -> Self:
        if (self.session is None) == (self.card is None):
            raise ValueError("give exactly one of session or card")
        return self


class TopupResponse(WireModel):
    balance_after_fen: Fen
    transfer_id: TransferId


class UnlockRequest(WireModel):
    """``unlock`` (解挂) is in the contract only to be refused: LOSS-3 allows it only at the
    counter with a valid ID. Every ``unlock`` gets ``permission_denied`` with rule ``LOSS-3``."""

    session: SessionToken = Field(repr=False)
    card_serial: CardSerial | None = None


class UnlockResponse(WireModel):
    """Never sent: every ``unlock`` is refused (LOSS-3). Exists so the reply schema is complete."""


# ----------------------------------------------------------------------------------------- POS


class PurchaseRequest(WireModel):
    """``purchase``: debit a purse for the card on the reader."""

    card: CardUid
    amount_fen: AmountFen
    merchant_id: MerchantId | None = None


class PurchaseResponse(WireModel):
    balance_after_fen: Fen
    transfer_id: TransferId


class VoidRequest(WireModel):
    """``void``: reverse this terminal's own last sale, named by its ``request_id``."""

    original_request_id: RequestId


class VoidResponse(WireModel):
    refunded_fen: Fen
    balance_after_fen: Fen
    transfer_id: TransferId


class MealRequest(WireModel):
    """``meal``: a canteen swipe that uses a staff meal subsidy when one is left (MEAL-1)."""

    card: CardUid
    amount_fen: AmountFen


class MealPaidBy(StrEnum):
    SUBSIDY = "subsidy"
    PURSE = "purse"


class MealResponse(WireModel):
    paid_by: MealPaidBy
    #: Subsidised swipes left this month (MEAL-1 quotas are monthly; null: no subsidy on the card).
    subsidy_left: Count | None = None
    balance_after_fen: Fen
    transfer_id: TransferId


#: An offline sale's time as the terminal's clock gave it. Deliberately wider than ``EpochMs``:
#: a stored sale cannot be corrected by its terminal, so a bad time must not make the whole batch
#: ``malformed`` for ever; the gateway refuses it per sale (``clock_skew`` / ``too_late``, §8.3).
SaleTimeMs = Annotated[int, Field(ge=0, le=2**53 - 1)]


class OfflineSale(WireModel):
    """One sale a POS approved while offline; ``seq`` is unique per terminal, from 1, no gaps."""

    seq: Seq
    card: CardUid
    amount_fen: AmountFen
    at_ms: SaleTimeMs
    merchant_id: MerchantId | None = None
    #: The deny-list version the terminal held when it approved the sale (§8.3). Optional so
    #: older terminals still parse, but a sale without it is settled as if the list were stale.
    denylist_version: Version | None = None


class OfflineUploadRequest(WireModel):
    """``offline_upload``: a batch of offline sales in ``seq`` order (at most 100)."""

    sales: Annotated[list[OfflineSale], Field(min_length=1, max_length=MAX_OFFLINE_BATCH)]

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        seqs = [s.seq for s in self.sales]
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            raise ValueError("sales must be in strictly increasing seq order")
        return self


class SeqRange(WireModel):
    first: Seq
    last: Seq

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.last < self.first:
            raise ValueError("last < first")
        return self


class OfflineRejection(WireModel):
    seq: Seq
    code: ErrorCode


class OfflineUploadResponse(WireModel):
    """Every uploaded ``seq`` is in exactly one of ``accepted``, ``duplicates``, ``rejected``.

    A rejected sale is kept by the gateway for the operator (e.g. a card lost before the sale);
    the terminal must not upload it again. ``gaps`` lists sequence numbers never received, below
    the highest one received so far: the terminal should upload them if it still holds them.
    """

    accepted: list[Seq]
    duplicates: list[Seq]
    rejected: list[OfflineRejection] = Field(default_factory=list)
    gaps: list[SeqRange] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------- door


class AccessRequest(WireModel):
    """``access``: may this card open this door now?"""

    card: CardUid


class AccessResponse(WireModel):
    """A refusal is a normal answer here (``ok: true``, ``allowed: false``, ``reason``)."""

    allowed: bool
    reason: ErrorCode | None = None

    @model_validator(mode="after")
    def _reason_iff_denied(self) -> Self:
        if self.allowed == (self.reason is not None):
            raise ValueError("reason is required when denied and forbidden when allowed")
        return self


# --------------------------------------------------------------------------------------- water


class WaterHoldRequest(WireModel):
    """``water_hold``: reserve money before the valve opens."""

    card: CardUid
    amount_fen: AmountFen


class WaterHoldResponse(WireModel):
    hold_id: HoldId
    held_fen: Fen
    #: Balance left to spend elsewhere while the hold lasts.
    available_fen: Fen


class WaterSettleRequest(WireModel):
    """``water_settle``: charge what was used (``used_fen`` <= the amount held) and release the
    rest; more than held is refused with ``invalid_amount``."""

    hold_id: HoldId
    used_fen: Fen


class WaterSettleResponse(WireModel):
    charged_fen: Fen
    released_fen: Fen
    balance_after_fen: Fen
    transfer_id: TransferId | None = None


class WaterReleaseRequest(WireModel):
    """``water_release``: cancel a hold without charging."""

    hold_id: HoldId


class WaterReleaseResponse(WireModel):
    released_fen: Fen
    balance_after_fen: Fen
