"""Codec: bytes <-> envelopes; every refusal maps to one closed ErrorCode."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode, InvalidInput, RuleViolation
from protocol.wire import (
    MAX_PAYLOAD_BYTES,
    OPERATIONS,
    MalformedMessage,
    OperationRefused,
    PurchaseRequest,
    PurchaseResponse,
    TerminalKind,
    UnsupportedOperation,
    WireError,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
    fingerprint,
    is_allowed,
)

CARD = "04A1B2C3D4E5F6"


def _payload(data: dict[str, Any], request_id: str = "pos-001-000001", v: object = 1) -> bytes:
    return json.dumps({"v": v, "request_id": request_id, "data": data}).encode()


def _purchase(amount: object = 1250) -> bytes:
    return _payload({"card": CARD, "amount_fen": amount})


def test_decode_purchase() -> None:
    request = decode_request("purchase", _purchase(), kind=TerminalKind.POS)
    assert request.request_id == "pos-001-000001"
    assert request.data == PurchaseRequest(card=CARD, amount_fen=1250)


@pytest.mark.parametrize("op", [op for op, s in OPERATIONS.items() if s.refusal is None])
def test_every_example_decodes_for_its_kinds(op: str) -> None:
    spec = OPERATIONS[op]
    for kind in spec.kinds:
        request = decode_request(op, _payload(spec.example_request), kind=kind)
        assert isinstance(request.data, spec.request)
    for kind in set(TerminalKind) - spec.kinds:
        assert not is_allowed(op, kind)
        with pytest.raises(UnsupportedOperation) as info:
            decode_request(op, _payload(spec.example_request), kind=kind)
        assert info.value.code is ErrorCode.UNSUPPORTED
        assert info.value.request_id == "pos-001-000001"


def test_unlock_is_always_refused_loss_3() -> None:
    payload = _payload(OPERATIONS["unlock"].example_request, "kiosk-1-7")
    with pytest.raises(OperationRefused) as info:
        decode_request("unlock", payload, kind=TerminalKind.KIOSK)
    assert info.value.code is ErrorCode.PERMISSION_DENIED
    assert info.value.rule == "LOSS-3"
    assert info.value.request_id == "kiosk-1-7"
    reply = decode_reply("unlock", encode_error(info.value.request_id, info.value))
    assert reply.error is not None
    assert reply.error.rule == "LOSS-3"
    # contract 1.1 §9: the default text first, the rule's own words as detail
    assert reply.error.message.startswith("无此权限 / permission denied: 解挂")
    with pytest.raises(TypeError):
        encode_reply("unlock", "kiosk-1-7", OPERATIONS["unlock"].response())


def test_unknown_op_is_unsupported_and_keeps_request_id() -> None:
    with pytest.raises(UnsupportedOperation) as info:
        decode_request("teleport", _purchase())
    assert info.value.code is ErrorCode.UNSUPPORTED
    assert info.value.request_id == "pos-001-000001"
    assert "teleport" in info.value.message_en


@pytest.mark.parametrize("v", [2, 0])
def test_other_envelope_version_is_unsupported(v: int) -> None:
    with pytest.raises(UnsupportedOperation) as info:
        decode_request("purchase", _payload({"card": CARD, "amount_fen": 1}, v=v))
    assert info.value.code is ErrorCode.UNSUPPORTED
    assert "version" in info.value.message_en


def test_oversized_payload_is_malformed_unread() -> None:
    big = _payload({"card": CARD, "amount_fen": 1, "pad": "x" * MAX_PAYLOAD_BYTES})
    with pytest.raises(MalformedMessage) as info:
        decode_request("purchase", big)
    assert info.value.code is ErrorCode.MALFORMED
    assert info.value.request_id is None
    assert str(MAX_PAYLOAD_BYTES) in info.value.message_en


@pytest.mark.parametrize(
    ("payload", "request_id"),
    [
        (b"", None),
        (b"not json", None),
        (b"[1,2]", None),
        (b'{"v":1,"request_id":"a1"}', "a1"),  # no data
        (b'{"v":1,"data":{"card":"04A1B2C3","amount_fen":5}}', None),  # no request_id
        (b'{"v":1,"request_id":"","data":{"card":"04A1B2C3","amount_fen":5}}', None),
        (b'{"v":1,"request_id":"a b","data":{"card":"04A1B2C3","amount_fen":5}}', None),
        (b'{"v":1,"request_id":"' + b"r" * 65 + b'","data":{}}', None),
        (b'{"v":1,"request_id":"a1","data":{"card":"04a1b2c3","amount_fen":5}}', "a1"),
        (b'{"v":1,"request_id":"a1","data":{"card":"04A1B2C3","amount_fen":"5"}}', "a1"),
        (b'{"v":1,"request_id":"a1","data":{"card":"04A1B2C3","amount_fen":5.0}}', "a1"),
        (b'{"v":1,"request_id":"a1","data":{"card":"04A1B2C3","amount_fen":5},"x":1}', "a1"),
        (b'{"v":"1","request_id":"a1","data":{"card":"04A1B2C3","amount_fen":5}}', "a1"),
        (b'\xff\xfe{"v":1}', None),
    ],
)
def test_malformed_payloads(payload: bytes, request_id: str | None) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_request("purchase", payload)
    assert info.value.code is ErrorCode.MALFORMED
    assert info.value.request_id == request_id
    assert info.value.message_zh == "报文格式错误"


@pytest.mark.parametrize("amount", [0, -5, 1_000_001])
def test_out_of_range_money_is_invalid_amount(amount: int) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_request("purchase", _purchase(amount))
    assert info.value.code is ErrorCode.INVALID_AMOUNT
    assert info.value.message_zh == "金额无效"
    assert info.value.request_id == "pos-001-000001"


def test_password_never_echoed_in_errors() -> None:
    payload = _payload({"number": "2023010123", "password": 123456789})
    with pytest.raises(MalformedMessage) as info:
        decode_request("login", payload)
    assert "123456789" not in str(info.value)


@given(st.binary(max_size=300))
def test_decode_only_raises_wire_errors(payload: bytes) -> None:
    codes: set[ErrorCode] = set()
    try:
        decode_request("purchase", payload)
    except WireError as exc:
        codes.add(exc.code)
    assert codes <= {ErrorCode.MALFORMED, ErrorCode.UNSUPPORTED, ErrorCode.INVALID_AMOUNT}


def test_reply_round_trip() -> None:
    data = PurchaseResponse(balance_after_fen=11100, transfer_id="tr_1")
    raw = encode_reply("purchase", "pos-001-000001", data)
    assert json.loads(raw) == {
        "v": 1,
        "request_id": "pos-001-000001",
        "ok": True,
        "data": {"balance_after_fen": 11100, "transfer_id": "tr_1"},
    }
    reply = decode_reply("purchase", raw)
    assert reply.ok
    assert reply.data == data


def test_encode_reply_checks_the_model() -> None:
    with pytest.raises(TypeError):
        encode_reply("meal", "r1", PurchaseResponse(balance_after_fen=1, transfer_id="t"))
    with pytest.raises(KeyError):
        encode_reply("nope", "r1", PurchaseResponse(balance_after_fen=1, transfer_id="t"))


def test_error_reply_from_code_and_exception() -> None:
    raw = encode_error("r1", ErrorCode.CARD_LOST)
    assert json.loads(raw) == {
        "v": 1,
        "request_id": "r1",
        "ok": False,
        "error": {"code": "card_lost", "message": "卡片已挂失 / card reported lost"},
    }
    err = RuleViolation(code=ErrorCode.CARD_LOST, rule="LOSS-2")
    body = json.loads(encode_error(None, err))
    assert body["request_id"] is None
    assert body["error"] == {
        "code": "card_lost",
        "message": "卡片已挂失 / card reported lost",
        "rule": "LOSS-2",
    }
    detailed = json.loads(encode_error("r2", InvalidInput(), detail="bad national id"))
    assert detailed["error"]["code"] == "invalid_input"
    assert detailed["error"]["message"] == "输入有误 / invalid input: bad national id"
    reply = decode_reply("purchase", encode_error("r3", ErrorCode.INSUFFICIENT_FUNDS))
    assert not reply.ok
    assert reply.data is None
    assert reply.error is not None
    assert reply.error.code is ErrorCode.INSUFFICIENT_FUNDS


def test_decoded_wire_error_becomes_error_reply() -> None:
    with pytest.raises(WireError) as info:
        decode_request("purchase", _purchase(0))
    reply = decode_reply("purchase", encode_error(info.value.request_id, info.value))
    assert reply.request_id == "pos-001-000001"
    assert reply.error is not None
    assert reply.error.code is ErrorCode.INVALID_AMOUNT


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":1,"request_id":"r","ok":true}',
        b'{"v":1,"request_id":"r","ok":false}',
        b'{"v":1,"request_id":"r","ok":true,"data":{"balance_after_fen":1,"transfer_id":"t"},'
        b'"error":{"code":"card_lost","message":"m"}}',
        b'{"v":1,"request_id":"r","ok":false,"error":{"code":"no_such_code","message":"m"}}',
    ],
)
def test_decode_reply_rejects_inconsistent_replies(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_reply("purchase", raw)


def test_encode_request_round_trips_through_decode() -> None:
    data = PurchaseRequest(card=CARD, amount_fen=99)
    raw = encode_request("purchase", "pos-001-9", data)
    assert decode_request("purchase", raw).data == data
    with pytest.raises(TypeError):
        encode_request("meal", "pos-001-9", data)
    with pytest.raises(ValueError, match="request id"):
        encode_request("purchase", "bad id", data)


def test_fingerprint_ignores_key_order_but_not_content() -> None:
    a = decode_request(
        "purchase", b'{"v":1,"request_id":"r","data":{"card":"04A1B2C3","amount_fen":5}}'
    )
    b = decode_request(
        "purchase", b'{ "data" : {"amount_fen":5, "card":"04A1B2C3"}, "request_id":"r", "v":1}'
    )
    c = decode_request(
        "purchase", b'{"v":1,"request_id":"r","data":{"card":"04A1B2C3","amount_fen":6}}'
    )
    assert fingerprint("purchase", a) == fingerprint("purchase", b)
    assert fingerprint("purchase", a) != fingerprint("purchase", c)
    assert fingerprint("purchase", a) != fingerprint("meal", a)
