"""The one place that builds and parses MQTT topics of the terminal contract.

Topic tree (ARCHITECTURE.md §3)::

    onecard/v1/t/{terminal_id}/req/{op}     terminal -> gateway, QoS 1
    onecard/v1/t/{terminal_id}/resp/{op}    gateway -> terminal, QoS 1
    onecard/v1/t/{terminal_id}/status       retained; last will "offline"
    onecard/v1/gateway/status               retained, published by the gateway
    onecard/v1/blacklist/snapshot           retained deny-list snapshot
    onecard/v1/blacklist/delta              ordered deny-list deltas

Topics carry only the terminal id and the operation name: never a card number, a holder's name or
an ID number (PIPL). Terminal identity is taken from the topic *and* the broker-authenticated
username, never from a payload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from protocol.wire.exceptions import TopicError

__all__ = [
    "DENYLIST_DELTA_TOPIC",
    "DENYLIST_SNAPSHOT_TOPIC",
    "GATEWAY_STATUS_TOPIC",
    "OP_RE",
    "REQUEST_FILTER",
    "ROOT",
    "TERMINAL_ID_RE",
    "TERMINAL_STATUS_FILTER",
    "ParsedTopic",
    "TopicError",
    "TopicKind",
    "is_valid_op",
    "is_valid_terminal_id",
    "parse_request_topic",
    "parse_topic",
    "request_topic",
    "response_filter",
    "response_topic",
    "shared_subscription",
    "terminal_status_topic",
]

ROOT = "onecard/v1"

#: Terminal ids: lowercase letters, digits, ``_`` and ``-``, 1-63 chars, starting alphanumeric.
TERMINAL_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: Operation names: lowercase snake case, 1-32 chars.
OP_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")

GATEWAY_STATUS_TOPIC = f"{ROOT}/gateway/status"
DENYLIST_SNAPSHOT_TOPIC = f"{ROOT}/blacklist/snapshot"
DENYLIST_DELTA_TOPIC = f"{ROOT}/blacklist/delta"
#: What the gateway subscribes to for every terminal request.
REQUEST_FILTER = f"{ROOT}/t/+/req/+"
#: What the gateway subscribes to for terminal presence (retained statuses and last wills).
TERMINAL_STATUS_FILTER = f"{ROOT}/t/+/status"


class TopicKind(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    TERMINAL_STATUS = "terminal_status"
    GATEWAY_STATUS = "gateway_status"
    DENYLIST_SNAPSHOT = "denylist_snapshot"
    DENYLIST_DELTA = "denylist_delta"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    terminal_id: str | None = None
    op: str | None = None


def is_valid_terminal_id(terminal_id: str) -> bool:
    return TERMINAL_ID_RE.fullmatch(terminal_id) is not None


def is_valid_op(op: str) -> bool:
    return OP_RE.fullmatch(op) is not None


def _check_terminal_id(terminal_id: str) -> str:
    if TERMINAL_ID_RE.fullmatch(terminal_id) is None:
        raise _bad(f"terminal id {terminal_id!r}")
    return terminal_id


def _check_op(op: str) -> str:
    if OP_RE.fullmatch(op) is None:
        raise _bad(f"operation name {op!r}")
    return op


def _bad(detail: str) -> TopicError:
    return TopicError("主题格式错误", f"bad topic: {detail}")


def request_topic(terminal_id: str, op: str) -> str:
    """``onecard/v1/t/{terminal_id}/req/{op}`` — where a terminal publishes a request."""
    return f"{ROOT}/t/{_check_terminal_id(terminal_id)}/req/{_check_op(op)}"


def response_topic(terminal_id: str, op: str) -> str:
    """``onecard/v1/t/{terminal_id}/resp/{op}`` — where the gateway publishes the reply."""
    return f"{ROOT}/t/{_check_terminal_id(terminal_id)}/resp/{_check_op(op)}"


def response_filter(terminal_id: str) -> str:
    """The one subscription a terminal needs for all its replies."""
    return f"{ROOT}/t/{_check_terminal_id(terminal_id)}/resp/+"


def terminal_status_topic(terminal_id: str) -> str:
    """``onecard/v1/t/{terminal_id}/status`` — retained presence, last will ``offline``."""
    return f"{ROOT}/t/{_check_terminal_id(terminal_id)}/status"


def shared_subscription(topic_filter: str, group: str) -> str:
    """``$share/{group}/{filter}``: load-balance a filter between gateway instances (MQTT v5)."""
    if _GROUP_RE.fullmatch(group) is None:
        raise _bad(f"share group {group!r}")
    if topic_filter.startswith("$share/"):
        raise _bad("filter is already a shared subscription")
    return f"$share/{group}/{topic_filter}"


def parse_request_topic(topic: str) -> tuple[str, str]:
    """Hot path: ``(terminal_id, op)`` of a request topic, or :class:`TopicError`."""
    parts = topic.split("/")
    if (
        len(parts) != 6
        or parts[0] != "onecard"
        or parts[1] != "v1"
        or parts[2] != "t"
        or parts[4] != "req"
    ):
        raise _bad(f"not a request topic: {topic[:200]!r}")
    return _check_terminal_id(parts[3]), _check_op(parts[5])


_FIXED: dict[str, TopicKind] = {
    GATEWAY_STATUS_TOPIC: TopicKind.GATEWAY_STATUS,
    DENYLIST_SNAPSHOT_TOPIC: TopicKind.DENYLIST_SNAPSHOT,
    DENYLIST_DELTA_TOPIC: TopicKind.DENYLIST_DELTA,
}
_PER_OP: dict[str, TopicKind] = {"req": TopicKind.REQUEST, "resp": TopicKind.RESPONSE}


def parse_topic(topic: str) -> ParsedTopic:
    """Classify any topic of the contract; :class:`TopicError` for anything else."""
    fixed = _FIXED.get(topic)
    if fixed is not None:
        return ParsedTopic(fixed)
    parts = topic.split("/")
    if len(parts) >= 4 and parts[0] == "onecard" and parts[1] == "v1" and parts[2] == "t":
        terminal_id = _check_terminal_id(parts[3])
        if len(parts) == 5 and parts[4] == "status":
            return ParsedTopic(TopicKind.TERMINAL_STATUS, terminal_id)
        if len(parts) == 6 and parts[4] in _PER_OP:
            return ParsedTopic(_PER_OP[parts[4]], terminal_id, _check_op(parts[5]))
    raise _bad(f"not a onecard topic: {topic[:200]!r}")
