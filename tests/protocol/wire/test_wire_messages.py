"""Operation models: strict types, money as bounded integer fen, cross-field rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.errors import ErrorCode
from protocol.wire import (
    MAX_AMOUNT_FEN,
    OPERATIONS,
    AccessResponse,
    LoginRequest,
    OfflineUploadRequest,
    PurchaseRequest,
    SeqRange,
    TerminalKind,
    TerminalStatus,
    TopupRequest,
    mask_card,
)

CARD = "04A1B2C3D4E5F6"
SESSION = "s_7Kq2x9Vb3nLm5TzR"


def _json(model: type[Any], doc: dict[str, Any]) -> Any:
    return model.model_validate_json(json.dumps(doc))


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_registry_examples_validate(op: str) -> None:
    spec = OPERATIONS[op]
    request = _json(spec.request, spec.example_request)
    assert json.loads(request.model_dump_json(exclude_unset=True)) == spec.example_request
    if spec.refusal is None:
        assert spec.example_response is not None
        response = _json(spec.response, spec.example_response)
        assert json.loads(response.model_dump_json(exclude_unset=True)) == spec.example_response
    else:
        assert spec.example_response is None


def test_registry_shape() -> None:
    kiosk_only = {"login", "balance", "report_loss", "change_password", "topup", "unlock"}
    pos_only = {"purchase", "void", "meal", "offline_upload"}
    water_only = {"water_hold", "water_settle", "water_release"}
    assert set(OPERATIONS) == {"hello", "heartbeat", "access"} | kiosk_only | pos_only | water_only
    assert OPERATIONS["hello"].kinds == frozenset(TerminalKind)
    assert OPERATIONS["heartbeat"].kinds == frozenset(TerminalKind)
    assert OPERATIONS["access"].kinds == {TerminalKind.DOOR}
    for op in kiosk_only:
        assert OPERATIONS[op].kinds == {TerminalKind.KIOSK}
    for op in pos_only:
        assert OPERATIONS[op].kinds == {TerminalKind.POS}
    for op in water_only:
        assert OPERATIONS[op].kinds == {TerminalKind.WATER}
    # LOSS-3: unlock is the only op that exists only to be refused
    refused = {op for op, spec in OPERATIONS.items() if spec.refusal is not None}
    assert refused == {"unlock"}
    refusal = OPERATIONS["unlock"].refusal
    assert refusal is not None
    assert (refusal.code, refusal.rule) == (ErrorCode.PERMISSION_DENIED, "LOSS-3")


@pytest.mark.parametrize("model", [s.request for s in OPERATIONS.values()])
def test_request_models_forbid_unknown_fields(model: type[Any]) -> None:
    spec = next(s for s in OPERATIONS.values() if s.request is model)
    doc = {**spec.example_request, "terminal_id": "pos-002"}
    with pytest.raises(ValidationError, match=r"Extra inputs"):
        _json(model, doc)


@pytest.mark.parametrize(
    "amount",
    [0, -1, MAX_AMOUNT_FEN + 1, 12.5, 1250.0, "1250", True, None],
)
def test_purchase_amount_is_positive_bounded_integer_fen(amount: object) -> None:
    with pytest.raises(ValidationError):
        _json(PurchaseRequest, {"card": CARD, "amount_fen": amount})


def test_purchase_amount_bounds_inclusive() -> None:
    assert _json(PurchaseRequest, {"card": CARD, "amount_fen": 1}).amount_fen == 1
    top = _json(PurchaseRequest, {"card": CARD, "amount_fen": MAX_AMOUNT_FEN})
    assert top.amount_fen == MAX_AMOUNT_FEN


@pytest.mark.parametrize(
    "card",
    ["04a1b2c3d4e5f6", "04A1B2C", "04A1B2", "04A1B2C3D4E5F", "", "04A1-B2C3", "0" * 34, 1234],
)
def test_card_uid_is_canonical_upper_hex(card: object) -> None:
    with pytest.raises(ValidationError):
        _json(PurchaseRequest, {"card": card, "amount_fen": 100})


@pytest.mark.parametrize("card", ["04A1B2C3", CARD, "0" * 20, "F" * 32])
def test_card_uid_lengths_accepted(card: str) -> None:
    assert _json(PurchaseRequest, {"card": card, "amount_fen": 100}).card == card


def test_secrets_are_not_in_repr() -> None:
    login = _json(LoginRequest, {"number": "2023010123", "password": "s3cret-pw"})
    assert "s3cret-pw" not in repr(login)
    topup = _json(TopupRequest, {"session": SESSION, "amount_fen": 100, "payment_ref": "r1"})
    assert SESSION not in repr(topup)


def test_topup_names_exactly_one_purse() -> None:
    base = {"amount_fen": 100, "payment_ref": "cash-1"}
    assert _json(TopupRequest, {**base, "card": CARD}).card == CARD
    assert _json(TopupRequest, {**base, "session": SESSION}).session == SESSION
    with pytest.raises(ValidationError, match="exactly one"):
        _json(TopupRequest, base)
    with pytest.raises(ValidationError, match="exactly one"):
        _json(TopupRequest, {**base, "card": CARD, "session": SESSION})


def test_access_reason_iff_denied() -> None:
    assert _json(AccessResponse, {"allowed": True}).reason is None
    denied = _json(AccessResponse, {"allowed": False, "reason": "card_lost"})
    assert denied.reason is ErrorCode.CARD_LOST
    with pytest.raises(ValidationError):
        _json(AccessResponse, {"allowed": False})
    with pytest.raises(ValidationError):
        _json(AccessResponse, {"allowed": True, "reason": "card_lost"})
    with pytest.raises(ValidationError):
        _json(AccessResponse, {"allowed": False, "reason": "not_a_code"})


def _sale(seq: int) -> dict[str, Any]:
    return {"seq": seq, "card": CARD, "amount_fen": 100, "at_ms": 1757380000000 + seq}


def test_offline_upload_seq_order_and_batch_size() -> None:
    ok = _json(OfflineUploadRequest, {"sales": [_sale(1), _sale(2), _sale(5)]})
    assert [s.seq for s in ok.sales] == [1, 2, 5]
    with pytest.raises(ValidationError, match="increasing"):
        _json(OfflineUploadRequest, {"sales": [_sale(2), _sale(1)]})
    with pytest.raises(ValidationError, match="increasing"):
        _json(OfflineUploadRequest, {"sales": [_sale(3), _sale(3)]})
    with pytest.raises(ValidationError):
        _json(OfflineUploadRequest, {"sales": []})
    with pytest.raises(ValidationError):
        _json(OfflineUploadRequest, {"sales": [_sale(i) for i in range(1, 102)]})
    assert len(_json(OfflineUploadRequest, {"sales": [_sale(i) for i in range(1, 101)]}).sales)
    with pytest.raises(ValidationError):
        _json(OfflineUploadRequest, {"sales": [_sale(0)]})


def test_seq_range_ordered() -> None:
    assert _json(SeqRange, {"first": 3, "last": 3}).last == 3
    with pytest.raises(ValidationError):
        _json(SeqRange, {"first": 4, "last": 3})


def test_terminal_status_last_will() -> None:
    will = _json(TerminalStatus, {"v": 1, "state": "offline"})
    assert will.kind is None
    assert json.loads(will.model_dump_json(exclude_none=True)) == {"v": 1, "state": "offline"}
    with pytest.raises(ValidationError):
        _json(TerminalStatus, {"v": 1, "state": "sleeping"})


def test_models_are_immutable() -> None:
    request = _json(PurchaseRequest, {"card": CARD, "amount_fen": 100})
    with pytest.raises(ValidationError):
        request.amount_fen = 1


def test_mask_card() -> None:
    assert mask_card(CARD) == "04A1…F6"
    assert CARD not in mask_card(CARD)
    assert mask_card("04A1") == "…"
