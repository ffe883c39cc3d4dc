"""Envelopes around every request and reply of the terminal contract.

Request::

    {"v": 1, "request_id": "pos-001-000042", "data": {...}}

Reply::

    {"v": 1, "request_id": "pos-001-000042", "ok": true, "data": {...}}
    {"v": 1, "request_id": "pos-001-000042", "ok": false,
     "error": {"code": "card_lost", "message": "卡片已挂失 / card reported lost", "rule": "LOSS-2"}}

``request_id`` is the idempotency key, unique per terminal; a reply to a payload whose
``request_id`` could not be read carries ``null``.
"""

from __future__ import annotations

from typing import Annotated, Generic, Self, TypeVar

from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from protocol.errors import ErrorCode, OnecardError, bilingual
from protocol.wire.fields import EpochMs, RequestId, RuleId, WireModel

__all__ = [
    "CONTRACT_VERSION",
    "WIRE_VERSION",
    "ErrorBody",
    "Reply",
    "Request",
    "error_body",
    "message_conforms",
]

WIRE_VERSION = 1
#: The published contract's version (docs/terminal-contract.md, docs/asyncapi.json). Minor
#: versions are backwards compatible on the wire: ``v`` stays 1 and the topics ``onecard/v1``.
CONTRACT_VERSION = "1.1"

DataT = TypeVar("DataT", bound=BaseModel)
EnvelopeVersion = Annotated[int, Field(ge=WIRE_VERSION, le=WIRE_VERSION)]


class Request(WireModel, Generic[DataT]):
    v: EnvelopeVersion
    request_id: RequestId
    #: When the terminal sent the request (its clock, synchronised from ``server_time_ms``):
    #: the gateway decides it only until ``sent_ms + request_ttl_ms``, then answers ``expired``.
    sent_ms: EpochMs | None = None
    data: DataT


class ErrorBody(WireModel):
    code: ErrorCode
    #: zh-CN first, English beside it: ``卡片已挂失 / card reported lost``.
    message: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    #: The card-center rule that refused the request (``LOSS-3``), when there is one.
    rule: RuleId | None = None


class Reply(WireModel, Generic[DataT]):
    """A reply as a terminal decodes it: ``data`` when ``ok``, ``error`` otherwise."""

    v: EnvelopeVersion
    request_id: RequestId | None
    ok: bool
    data: DataT | None = None
    error: ErrorBody | None = None

    @model_validator(mode="after")
    def _ok_xor_error(self) -> Self:
        if self.ok and (self.data is None or self.error is not None):
            raise ValueError("ok replies carry data and no error")
        if not self.ok and (self.error is None or self.data is not None):
            raise ValueError("error replies carry error and no data")
        return self


def message_conforms(code: ErrorCode, message: str) -> bool:
    """Contract §9: ``message`` is the default text of ``code`` (``卡片已挂失 / card reported
    lost``), optionally followed by ``": "`` and detail."""
    default = bilingual(code)
    return message == default or (
        message.startswith(default + ": ") and len(message) > len(default) + 2
    )


def error_body(
    error: OnecardError | ErrorCode, *, detail: str | None = None, rule: str | None = None
) -> ErrorBody:
    """The ``error`` object for an exception or a bare code; ``detail`` (English) is appended.

    Never builds an invalid reply: a rule that is not a contract ``RuleId`` (``LOSS-3``) is left
    out rather than turning a refusal into ``internal``.
    """
    if isinstance(error, OnecardError):
        code = error.code
        own = f"{error.message_zh} / {error.message_en}"
        # contract 1.1 (§9): the default text of the code first, the error's own words after
        # a colon as detail
        message = own if message_conforms(code, own) else f"{bilingual(code)}: {own}"
        rule = rule or error.rule
    else:
        code = error
        message = bilingual(error)
    if detail:
        message = f"{message}: {detail}"
    if len(message) > 500:
        message = message[:499] + "…"
    return ErrorBody(code=code, message=message, rule=_rule_or_none(rule))


_RULE_ID: TypeAdapter[str] = TypeAdapter(RuleId)


def _rule_or_none(rule: str | None) -> str | None:
    if rule is None:
        return None
    try:
        return _RULE_ID.validate_python(rule)
    except ValidationError:
        return None
