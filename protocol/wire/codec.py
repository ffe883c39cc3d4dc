"""Bytes <-> envelopes, for both ends of the terminal contract.

Gateway side: :func:`decode_request` then, after the use case ran, :func:`encode_reply` or
:func:`encode_error`. Terminal side (simulators, vendor test tools): :func:`encode_request` and
:func:`decode_reply`. The hot path is one ``model_validate_json`` per message; the slower
error-path work (finding the request id in a broken payload) runs only on failure.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from protocol.errors import ErrorCode, OnecardError
from protocol.wire.envelope import WIRE_VERSION, ErrorBody, Reply, Request, error_body
from protocol.wire.exceptions import (
    MalformedMessage,
    OperationRefused,
    UnsupportedOperation,
    WireError,
)
from protocol.wire.fields import TerminalKind
from protocol.wire.registry import OPERATIONS, OpSpec

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_reply",
    "encode_request",
    "fingerprint",
    "is_allowed",
]

#: Largest request payload accepted; bigger ones are refused as ``malformed`` unread.
MAX_PAYLOAD_BYTES = 16 * 1024

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
_MALFORMED_ZH = "报文格式错误"
_UNSUPPORTED_ZH = "不支持的操作"


def is_allowed(op: str, kind: TerminalKind) -> bool:
    """May a terminal of ``kind`` call ``op``?"""
    spec = OPERATIONS.get(op)
    return spec is not None and kind in spec.kinds


def _spec(op: str, payload: bytes) -> OpSpec:
    spec = OPERATIONS.get(op)
    if spec is None:
        raise UnsupportedOperation(
            _UNSUPPORTED_ZH,
            f"unsupported operation {op[:40]!r}",
            request_id=_peek_request_id(payload),
        )
    return spec


def decode_request(op: str, payload: bytes, *, kind: TerminalKind | None = None) -> Request[Any]:
    """Validate a request for ``op`` (from the topic); ``kind`` (from the terminal registry), if
    given, must be allowed to call it.

    Raises :class:`UnsupportedOperation` (unknown op, wrong kind, other envelope version),
    :class:`MalformedMessage` (``malformed`` or, for out-of-range money, ``invalid_amount``) or
    :class:`OperationRefused` (``unlock``, LOSS-3). ``request_id`` is set on the error when it
    could be read.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage(
            _MALFORMED_ZH, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}"
        )
    spec = _spec(op, payload)
    if kind is not None and kind not in spec.kinds:
        raise UnsupportedOperation(
            "此类终端不能办理该业务",
            f"operation {op!r} is not available to {kind.value} terminals",
            request_id=_peek_request_id(payload),
        )
    try:
        request: Request[Any] = spec.request_envelope.model_validate_json(payload)
    except ValidationError as exc:
        raise _validation_error(exc, payload) from None
    except (RecursionError, ValueError) as exc:  # nesting deeper than the parser allows
        raise MalformedMessage(_MALFORMED_ZH, f"malformed message: {type(exc).__name__}") from None
    if spec.refusal is not None:
        r = spec.refusal
        raise OperationRefused(
            r.message_zh, r.message_en, code=r.code, rule=r.rule, request_id=request.request_id
        )
    return request


def peek_request_id(payload: bytes) -> str | None:
    """Best effort, error path only: the request id of a payload that failed validation (or
    was never decoded where the error is answered: the gateway's tap engine decodes taps)."""
    return _peek_request_id(payload)


def _peek_request_id(payload: bytes) -> str | None:
    """Best effort, error path only: the request id of a payload that failed validation."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # json.loads on "[" * 16_000 raises RecursionError
        return None
    if isinstance(doc, dict):
        rid = doc.get("request_id")
        if isinstance(rid, str) and _REQUEST_ID_RE.fullmatch(rid):
            return rid
    return None


def _validation_error(exc: ValidationError, payload: bytes) -> WireError:
    errors = exc.errors(include_url=False, include_input=False)
    request_id = _peek_request_id(payload)
    if any(e["loc"] == ("v",) and e["type"] in _RANGE_ERRORS for e in errors):
        return UnsupportedOperation(
            _UNSUPPORTED_ZH,
            f"unsupported envelope version (this gateway speaks v={WIRE_VERSION})",
            request_id=request_id,
        )
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(payload)'}: {e['msg']}" for e in errors[:3]
    )
    if len(errors) > 3:
        detail += f"; and {len(errors) - 3} more"
    if all(
        e["type"] in _RANGE_ERRORS and e["loc"] and str(e["loc"][-1]).endswith("_fen")
        for e in errors
    ):
        return MalformedMessage(
            None, f"invalid amount: {detail}", code=ErrorCode.INVALID_AMOUNT, request_id=request_id
        )
    return MalformedMessage(_MALFORMED_ZH, f"malformed message: {detail}", request_id=request_id)


def _rid_json(request_id: str | None) -> bytes:
    return b"null" if request_id is None else json.dumps(request_id).encode()


def encode_reply(op: str, request_id: str, data: BaseModel) -> bytes:
    """``{"v":1,"request_id":...,"ok":true,"data":{...}}``; ``data`` must be ``op``'s response."""
    spec = OPERATIONS[op]
    if spec.refusal is not None or type(data) is not spec.response:
        raise TypeError(f"{type(data).__name__} is not the response model of {op!r}")
    return (
        b'{"v":1,"request_id":'
        + _rid_json(request_id)
        + b',"ok":true,"data":'
        + data.__pydantic_serializer__.to_json(data)
        + b"}"
    )


def encode_error(
    request_id: str | None,
    error: OnecardError | ErrorCode | ErrorBody,
    *,
    detail: str | None = None,
) -> bytes:
    """``{"v":1,"request_id":...,"ok":false,"error":{"code":...,"message":...,"rule":...}}``."""
    body = error if isinstance(error, ErrorBody) else error_body(error, detail=detail)
    return (
        b'{"v":1,"request_id":'
        + _rid_json(request_id)
        + b',"ok":false,"error":'
        + body.model_dump_json(exclude_none=True).encode()
        + b"}"
    )


def encode_request(op: str, request_id: str, data: BaseModel) -> bytes:
    """Terminal side: ``{"v":1,"request_id":...,"data":{...}}`` for ``op``."""
    spec = OPERATIONS[op]
    if type(data) is not spec.request:
        raise TypeError(f"{type(data).__name__} is not the request model of {op!r}")
    if _REQUEST_ID_RE.fullmatch(request_id) is None:
        raise ValueError(f"bad request id {request_id!r}")
    return (
        b'{"v":1,"request_id":'
        + _rid_json(request_id)
        + b',"data":'
        + data.__pydantic_serializer__.to_json(data)
        + b"}"
    )


def decode_reply(op: str, payload: bytes) -> Reply[Any]:
    """Terminal side: validate a reply to ``op``; :class:`MalformedMessage` if it is not one.

    Strict like everything here (unknown fields are refused), so our own simulators catch any
    drift; the vendor document asks real terminals to ignore reply fields they do not know.
    """
    spec = _spec(op, payload)
    try:
        reply: Reply[Any] = spec.reply_envelope.model_validate_json(payload)
    except ValidationError as exc:
        raise _validation_error(exc, payload) from None
    return reply


def fingerprint(op: str, request: Request[Any]) -> str:
    """SHA-256 of ``op`` and the validated ``data``, independent of key order and whitespace.

    The gateway stores it with the idempotency key ``(terminal_id, request_id)``: a retry with the
    same fingerprint gets the stored reply replayed; a different one is ``idempotency_conflict``.
    """
    digest = hashlib.sha256(op.encode())
    digest.update(b"\n")
    digest.update(request.data.__pydantic_serializer__.to_json(request.data))
    return digest.hexdigest()
