"""error_body never builds an invalid reply (issue 8, item 9)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.errors import ErrorCode, RuleViolation
from protocol.wire import Reply, encode_error, error_body


@pytest.mark.parametrize("rule", ["LIFECYCLE", "loss-3", "LOSS-123", "", "X" * 600])
def test_a_rule_that_is_no_rule_id_is_left_out(rule: str) -> None:
    exc = RuleViolation("不能办理", "not allowed", code=ErrorCode.TRANSITION_NOT_ALLOWED, rule=rule)
    body = error_body(exc)
    assert (body.code, body.rule) == (ErrorCode.TRANSITION_NOT_ALLOWED, None)
    payload = encode_error("k-1", exc)
    reply: Reply[Any] = Reply.model_validate_json(payload)
    assert reply.error is not None
    assert reply.error.code is ErrorCode.TRANSITION_NOT_ALLOWED
    assert "rule" not in json.loads(payload)["error"]


def test_a_rule_id_is_kept() -> None:
    body = error_body(RuleViolation("已挂失", "lost", code=ErrorCode.CARD_LOST, rule="LOSS-2"))
    assert body.rule == "LOSS-2"
