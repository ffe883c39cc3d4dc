"""Topic grammar: one module builds and parses every topic of the contract (ARCHITECTURE §3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    OPERATIONS,
    REQUEST_FILTER,
    TERMINAL_STATUS_FILTER,
    TopicError,
    TopicKind,
    is_valid_op,
    is_valid_terminal_id,
    parse_request_topic,
    parse_topic,
    request_topic,
    response_filter,
    response_topic,
    shared_subscription,
    terminal_status_topic,
)

terminal_ids = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")
ops = st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z")


@given(terminal_ids, ops)
def test_request_topic_round_trips(terminal_id: str, op: str) -> None:
    topic = request_topic(terminal_id, op)
    assert topic == f"onecard/v1/t/{terminal_id}/req/{op}"
    assert parse_request_topic(topic) == (terminal_id, op)
    parsed = parse_topic(topic)
    assert (parsed.kind, parsed.terminal_id, parsed.op) == (TopicKind.REQUEST, terminal_id, op)


@given(terminal_ids, ops)
def test_response_and_status_topics_round_trip(terminal_id: str, op: str) -> None:
    parsed = parse_topic(response_topic(terminal_id, op))
    assert (parsed.kind, parsed.terminal_id, parsed.op) == (TopicKind.RESPONSE, terminal_id, op)
    status = parse_topic(terminal_status_topic(terminal_id))
    assert (status.kind, status.terminal_id, status.op) == (
        TopicKind.TERMINAL_STATUS,
        terminal_id,
        None,
    )


def test_fixed_topics() -> None:
    assert GATEWAY_STATUS_TOPIC == "onecard/v1/gateway/status"
    assert DENYLIST_SNAPSHOT_TOPIC == "onecard/v1/blacklist/snapshot"
    assert DENYLIST_DELTA_TOPIC == "onecard/v1/blacklist/delta"
    assert parse_topic(GATEWAY_STATUS_TOPIC).kind is TopicKind.GATEWAY_STATUS
    assert parse_topic(DENYLIST_SNAPSHOT_TOPIC).kind is TopicKind.DENYLIST_SNAPSHOT
    assert parse_topic(DENYLIST_DELTA_TOPIC).kind is TopicKind.DENYLIST_DELTA


def test_filters_and_shared_subscriptions() -> None:
    assert REQUEST_FILTER == "onecard/v1/t/+/req/+"
    assert TERMINAL_STATUS_FILTER == "onecard/v1/t/+/status"
    assert response_filter("pos-001") == "onecard/v1/t/pos-001/resp/+"
    assert shared_subscription(REQUEST_FILTER, "gw") == "$share/gw/onecard/v1/t/+/req/+"
    for group in ("", "a/b", "a+b", "#", "x" * 33):
        with pytest.raises(TopicError):
            shared_subscription(REQUEST_FILTER, group)
    with pytest.raises(TopicError):
        shared_subscription("$share/gw/onecard/v1/t/+/req/+", "gw2")


def test_every_registered_op_fits_the_grammar() -> None:
    for op in OPERATIONS:
        assert is_valid_op(op), op


BAD_TERMINAL_IDS = [
    "",
    "POS-001",  # upper case
    "-pos",  # must start alphanumeric
    "_pos",
    "pos/001",
    "pos+",
    "pos#",
    "pos 001",
    "pos.001",
    "a" * 64,  # too long
    "pos\n",
    "终端",
]


@pytest.mark.parametrize("terminal_id", BAD_TERMINAL_IDS)
def test_bad_terminal_ids_are_refused(terminal_id: str) -> None:
    assert not is_valid_terminal_id(terminal_id)
    for build in (terminal_status_topic, response_filter):
        with pytest.raises(TopicError) as info:
            build(terminal_id)
        assert info.value.code is ErrorCode.MALFORMED
    with pytest.raises(TopicError):
        request_topic(terminal_id, "purchase")


@pytest.mark.parametrize("op", ["", "Purchase", "1op", "op-x", "op/x", "+", "#", "a" * 33, "op\n"])
def test_bad_ops_are_refused(op: str) -> None:
    assert not is_valid_op(op)
    with pytest.raises(TopicError):
        request_topic("pos-001", op)
    with pytest.raises(TopicError):
        response_topic("pos-001", op)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "onecard/v1/t/pos-001/req",
        "onecard/v1/t/pos-001/req/purchase/extra",
        "onecard/v2/t/pos-001/req/purchase",
        "Onecard/v1/t/pos-001/req/purchase",
        "/onecard/v1/t/pos-001/req/purchase",
        "onecard/v1/t/pos-001/resp/purchase",  # a response is not a request
        "onecard/v1/t/+/req/+",  # a filter is not a topic
        "onecard/v1/t/POS-001/req/purchase",
        "onecard/v1/t/pos-001/req/Purchase",
        "$share/gw/onecard/v1/t/pos-001/req/purchase",
    ],
)
def test_parse_request_topic_rejects(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_request_topic(topic)


@pytest.mark.parametrize(
    "topic",
    [
        "onecard/v1/t/pos-001",
        "onecard/v1/t/pos-001/status/extra",
        "onecard/v1/t/pos-001/other/purchase",
        "onecard/v1/gateway",
        "onecard/v1/blacklist/snapshot/x",
        "onecard/v1/blacklist",
        "other/v1/gateway/status",
    ],
)
def test_parse_topic_rejects(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@given(st.text(max_size=80))
def test_parse_topic_never_raises_anything_else(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except TopicError:
        return
    # whatever parses rebuilds to the same string: one canonical form per topic
    if parsed.kind is TopicKind.REQUEST:
        assert parsed.terminal_id is not None
        assert parsed.op is not None
        assert request_topic(parsed.terminal_id, parsed.op) == topic
    elif parsed.kind is TopicKind.RESPONSE:
        assert parsed.terminal_id is not None
        assert parsed.op is not None
        assert response_topic(parsed.terminal_id, parsed.op) == topic
    elif parsed.kind is TopicKind.TERMINAL_STATUS:
        assert parsed.terminal_id is not None
        assert terminal_status_topic(parsed.terminal_id) == topic
    else:
        assert topic in {GATEWAY_STATUS_TOPIC, DENYLIST_SNAPSHOT_TOPIC, DENYLIST_DELTA_TOPIC}
