"""Errors raised by the wire layer; each maps to one :class:`protocol.errors.ErrorCode`.

The gateway's router turns any of them into an error reply with :func:`protocol.wire.error_body`.
``request_id`` is filled in whenever it could be recovered from the payload, so the reply can echo
it (the MQTT v5 correlation data is echoed regardless).
"""

from __future__ import annotations

from protocol.errors import ErrorCode, OnecardError

__all__ = [
    "DenyListGap",
    "MalformedMessage",
    "OperationRefused",
    "TopicError",
    "UnsupportedOperation",
    "WireError",
]


class WireError(OnecardError):
    """Base of wire-level refusals."""

    code = ErrorCode.MALFORMED

    def __init__(
        self,
        message_zh: str | None = None,
        message_en: str | None = None,
        *,
        code: ErrorCode | None = None,
        rule: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message_zh, message_en, code=code, rule=rule)
        self.request_id = request_id


class TopicError(WireError):
    """A topic outside the contract, or a terminal id / op name that breaks the grammar."""

    code = ErrorCode.MALFORMED


class MalformedMessage(WireError):
    """Not JSON, wrong envelope, wrong field types, unknown fields, too large (``malformed``).

    Out-of-range money fields are reported as ``invalid_amount`` instead.
    """

    code = ErrorCode.MALFORMED


class UnsupportedOperation(WireError):
    """Unknown operation, unknown envelope version, or an op this terminal kind may not call."""

    code = ErrorCode.UNSUPPORTED


class OperationRefused(WireError):
    """An operation the contract lists only to refuse it (``unlock`` at a kiosk: LOSS-3)."""

    code = ErrorCode.PERMISSION_DENIED


class DenyListGap(WireError):
    """A deny-list delta does not follow the version held: fetch the retained snapshot again."""

    code = ErrorCode.UNAVAILABLE
