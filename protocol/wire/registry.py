"""The operation registry: op name -> request model, response model, allowed terminal kinds.

This table *is* the contract: the codec, the AsyncAPI document and the vendor document are all
derived from or checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import create_model

from protocol.errors import ErrorCode
from protocol.wire import messages as m
from protocol.wire.envelope import Reply, Request
from protocol.wire.fields import TerminalKind, WireModel

__all__ = ["ALL_KINDS", "OPERATIONS", "OpSpec", "Refusal"]

ALL_KINDS = frozenset(TerminalKind)
_K = TerminalKind


@dataclass(frozen=True, slots=True)
class Refusal:
    """An operation the contract defines only to refuse it, always with this code and rule."""

    code: ErrorCode
    rule: str
    message_zh: str
    message_en: str


@dataclass(frozen=True, slots=True)
class OpSpec:
    op: str
    summary: str
    request: type[WireModel]
    response: type[WireModel]
    kinds: frozenset[TerminalKind]
    example_request: dict[str, Any]
    #: ``None`` for operations that are always refused (see ``refusal``).
    example_response: dict[str, Any] | None
    #: Error codes the gateway typically answers with (documentation, not exhaustive).
    errors: tuple[ErrorCode, ...] = ()
    refusal: Refusal | None = None
    #: Built from ``request`` / ``response``: the whole envelope models.
    request_envelope: type[Request[Any]] = field(init=False, repr=False, compare=False)
    reply_envelope: type[Reply[Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stem = "".join(part.capitalize() for part in self.op.split("_"))
        req_env = create_model(f"{stem}RequestEnvelope", __base__=Request[self.request])  # type: ignore[name-defined]
        reply_env = create_model(f"{stem}ReplyEnvelope", __base__=Reply[self.response])  # type: ignore[name-defined]
        object.__setattr__(self, "request_envelope", req_env)
        object.__setattr__(self, "reply_envelope", reply_env)


_CARD = "04A1B2C3D4E5F6"
_SESSION = "s_7Kq2x9Vb3nLm5TzR"
_CARD_STATE = (
    ErrorCode.CARD_LOST,
    ErrorCode.CARD_FROZEN,
    ErrorCode.CARD_SUSPENDED,
    ErrorCode.CARD_EXPIRED,
    ErrorCode.CARD_TERMINATED,
    ErrorCode.CARD_VOID,
    ErrorCode.CARD_UNKNOWN,
)
_SESSION_ERRORS = (ErrorCode.AUTH_FAILED,)

_SPECS = (
    OpSpec(
        op="hello",
        summary="First request after every (re)connect: clock, deny-list version, offline limits.",
        request=m.HelloRequest,
        response=m.HelloResponse,
        kinds=ALL_KINDS,
        example_request={"kind": "pos", "firmware": "acme-pos 2.4.1", "denylist_version": 1041},
        example_response={
            "server_time_ms": 1757385000000,
            "denylist_version": 1043,
            "config": {
                "heartbeat_interval_s": 30,
                "offline_max_age_s": 86400,
                "offline_max_amount_fen": 3000,
                "offline_max_daily_fen": 10000,
                "offline_max_count": 500,
                "request_ttl_ms": 5000,
                "clock_tolerance_ms": 2000,
            },
        },
        errors=(ErrorCode.TERMINAL_UNKNOWN, ErrorCode.TERMINAL_DISABLED),
    ),
    OpSpec(
        op="heartbeat",
        summary="Liveness and the deny-list version held; the gateway exports who lags.",
        request=m.HeartbeatRequest,
        response=m.HeartbeatResponse,
        kinds=ALL_KINDS,
        example_request={"denylist_version": 1043, "pending_offline": 0},
        example_response={"server_time_ms": 1757385030000, "denylist_version": 1043},
        errors=(ErrorCode.TERMINAL_DISABLED,),
    ),
    OpSpec(
        op="login",
        summary="Kiosk login with student/staff number and password (LOSS-1).",
        request=m.LoginRequest,
        response=m.LoginResponse,
        kinds=frozenset({_K.KIOSK}),
        example_request={"number": "2023010123", "password": "123456"},
        example_response={
            "session": _SESSION,
            "session_expires_ms": 1757385300000,
            "holder_name_masked": "张*",
            "must_change_password": True,
        },
        errors=(ErrorCode.AUTH_FAILED, ErrorCode.ACCOUNT_LOCKED),
    ),
    OpSpec(
        op="balance",
        summary="Balance and recent transactions of the logged-in holder.",
        request=m.BalanceRequest,
        response=m.BalanceResponse,
        kinds=frozenset({_K.KIOSK}),
        example_request={"session": _SESSION},
        example_response={
            "balance_fen": 12350,
            "recent": [
                {
                    "at_ms": 1757384000000,
                    "kind": "meal",
                    "direction": "debit",
                    "amount_fen": 850,
                    "place": "pos-001",
                },
                {
                    "at_ms": 1757300000000,
                    "kind": "topup",
                    "direction": "credit",
                    "amount_fen": 10000,
                    "place": None,
                },
            ],
        },
        errors=_SESSION_ERRORS,
    ),
    OpSpec(
        op="report_loss",
        summary="Report the card lost (挂失, LOSS-1): refused everywhere at once (LOSS-2).",
        request=m.ReportLossRequest,
        response=m.ReportLossResponse,
        kinds=frozenset({_K.KIOSK}),
        example_request={"session": _SESSION, "card_serial": None},
        example_response={"denylist_version": 1044, "terminals_applied": 212},
        errors=(*_SESSION_ERRORS, ErrorCode.TRANSITION_NOT_ALLOWED, ErrorCode.NOT_FOUND),
    ),
    OpSpec(
        op="change_password",
        summary="Change the holder's self-service password.",
        request=m.ChangePasswordRequest,
        response=m.ChangePasswordResponse,
        kinds=frozenset({_K.KIOSK}),
        example_request={
            "session": _SESSION,
            "old_password": "123456",
            "new_password": "k9#Lp2qz",
        },
        example_response={},
        errors=(*_SESSION_ERRORS, ErrorCode.INVALID_INPUT),
    ),
    OpSpec(
        op="topup",
        summary="Top up a purse at a kiosk (TOP-1): the logged-in holder's or the card's.",
        request=m.TopupRequest,
        response=m.TopupResponse,
        kinds=frozenset({_K.KIOSK}),
        example_request={
            "card": _CARD,
            "amount_fen": 5000,
            "payment_ref": "cash-20250909-0017",
        },
        example_response={"balance_after_fen": 17350, "transfer_id": "481516"},
        errors=(*_CARD_STATE, ErrorCode.INVALID_AMOUNT),
    ),
    OpSpec(
        op="unlock",
        summary="Always refused: unlock (解挂) only at the counter with a valid ID (LOSS-3).",
        request=m.UnlockRequest,
        response=m.UnlockResponse,
        kinds=frozenset({_K.KIOSK}),
        example_request={"session": _SESSION},
        example_response=None,
        errors=(ErrorCode.PERMISSION_DENIED,),
        refusal=Refusal(
            ErrorCode.PERMISSION_DENIED,
            "LOSS-3",
            "解挂只能在卡务中心凭有效证件办理",
            "unlock only at the card center with a valid ID",
        ),
    ),
    OpSpec(
        op="purchase",
        summary="Debit the purse of the card on the reader.",
        request=m.PurchaseRequest,
        response=m.PurchaseResponse,
        kinds=frozenset({_K.POS}),
        example_request={"card": _CARD, "amount_fen": 1250, "merchant_id": "canteen-2"},
        example_response={"balance_after_fen": 11100, "transfer_id": "481517"},
        errors=(*_CARD_STATE, ErrorCode.INSUFFICIENT_FUNDS, ErrorCode.INVALID_AMOUNT),
    ),
    OpSpec(
        op="void",
        summary="Reverse this terminal's own last sale, named by its request_id.",
        request=m.VoidRequest,
        response=m.VoidResponse,
        kinds=frozenset({_K.POS}),
        example_request={"original_request_id": "pos-001-000042"},
        example_response={
            "refunded_fen": 1250,
            "balance_after_fen": 12350,
            "transfer_id": "481518",
        },
        errors=(ErrorCode.NOT_FOUND, ErrorCode.TRANSITION_NOT_ALLOWED),
    ),
    OpSpec(
        op="meal",
        summary="Canteen swipe: staff meal subsidy while one is left (MEAL-1), else the purse.",
        request=m.MealRequest,
        response=m.MealResponse,
        kinds=frozenset({_K.POS}),
        example_request={"card": _CARD, "amount_fen": 800},
        example_response={
            "paid_by": "subsidy",
            "subsidy_left": 1,
            "balance_after_fen": 12350,
            "transfer_id": "481519",
        },
        errors=(*_CARD_STATE, ErrorCode.INSUFFICIENT_FUNDS),
    ),
    OpSpec(
        op="offline_upload",
        summary="Upload sales approved offline, in seq order (at most 100 per batch).",
        request=m.OfflineUploadRequest,
        response=m.OfflineUploadResponse,
        kinds=frozenset({_K.POS}),
        example_request={
            "sales": [
                {
                    "seq": 17,
                    "card": _CARD,
                    "amount_fen": 800,
                    "at_ms": 1757380000000,
                    "denylist_version": 1043,
                },
                {
                    "seq": 18,
                    "card": "04C0FFEE1234AB",
                    "amount_fen": 1200,
                    "at_ms": 1757380060000,
                    "merchant_id": "canteen-2",
                    "denylist_version": 1043,
                },
            ]
        },
        example_response={
            "accepted": [18],
            "duplicates": [17],
            "rejected": [],
            "gaps": [{"first": 12, "last": 13}],
        },
    ),
    OpSpec(
        op="access",
        summary="May this card open this door now? A refusal is an ok reply with a reason.",
        request=m.AccessRequest,
        response=m.AccessResponse,
        kinds=frozenset({_K.DOOR}),
        example_request={"card": _CARD},
        example_response={"allowed": False, "reason": "card_lost"},
    ),
    OpSpec(
        op="water_hold",
        summary="Reserve money before the valve opens.",
        request=m.WaterHoldRequest,
        response=m.WaterHoldResponse,
        kinds=frozenset({_K.WATER}),
        example_request={"card": _CARD, "amount_fen": 500},
        example_response={"hold_id": "9001", "held_fen": 500, "available_fen": 11850},
        errors=(*_CARD_STATE, ErrorCode.INSUFFICIENT_FUNDS),
    ),
    OpSpec(
        op="water_settle",
        summary="Charge what was used (at most the amount held) and release the rest.",
        request=m.WaterSettleRequest,
        response=m.WaterSettleResponse,
        kinds=frozenset({_K.WATER}),
        example_request={"hold_id": "9001", "used_fen": 320},
        example_response={
            "charged_fen": 320,
            "released_fen": 180,
            "balance_after_fen": 12030,
            "transfer_id": "481520",
        },
        errors=(ErrorCode.NOT_FOUND, ErrorCode.INVALID_AMOUNT),
    ),
    OpSpec(
        op="water_release",
        summary="Cancel a hold without charging.",
        request=m.WaterReleaseRequest,
        response=m.WaterReleaseResponse,
        kinds=frozenset({_K.WATER}),
        example_request={"hold_id": "9001"},
        example_response={"released_fen": 500, "balance_after_fen": 12350},
        errors=(ErrorCode.NOT_FOUND,),
    ),
)

#: op name -> spec, in contract order.
OPERATIONS: Mapping[str, OpSpec] = MappingProxyType({s.op: s for s in _SPECS})
