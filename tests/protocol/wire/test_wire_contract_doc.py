"""docs/terminal-contract.md agrees with the models: every op, every code, every example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from protocol.errors import MESSAGES, ErrorCode
from protocol.wire import (
    OPERATIONS,
    DenyDelta,
    DenySnapshot,
    GatewayStatus,
    OperationRefused,
    TerminalStatus,
    decode_request,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "terminal-contract.md"
EXAMPLE = re.compile(r"<!-- example: ([a-z_]+)(?: (request|reply))? -->\n```json\n(.*?)\n```", re.S)


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _examples() -> list[tuple[str, str | None, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in EXAMPLE.finditer(_text())]


def test_every_op_has_a_section_with_request_and_reply_examples() -> None:
    text = _text()
    found = {(name, role) for name, role, _ in _examples()}
    for op in OPERATIONS:
        assert f"### `{op}`" in text, op
        assert (op, "request") in found, op
        assert (op, "reply") in found, op


def test_no_section_for_an_unknown_op() -> None:
    sections = set(re.findall(r"^### `([a-z_]+)`$", _text(), re.M))
    assert sections == set(OPERATIONS)


@pytest.mark.parametrize("example", _examples(), ids=lambda e: f"{e[0]}-{e[1]}")
def test_doc_examples_validate_and_match_the_registry(example: tuple[str, str | None, str]) -> None:
    name, role, raw = example
    doc = json.loads(raw)
    if role is None:
        models: dict[str, type[BaseModel]] = {
            "terminal_status": TerminalStatus,
            "gateway_status": GatewayStatus,
            "denylist_snapshot": DenySnapshot,
            "denylist_delta": DenyDelta,
        }
        models[name].model_validate_json(raw)
        return
    spec = OPERATIONS[name]
    if role == "request":
        if spec.refusal is None:
            request = decode_request(name, raw.encode(), kind=next(iter(spec.kinds)))
        else:
            with pytest.raises(OperationRefused):  # LOSS-3: well-formed, always refused
                decode_request(name, raw.encode())
            request = spec.request_envelope.model_validate_json(raw)
        assert isinstance(request.data, spec.request)
        assert doc["data"] == spec.example_request
    else:
        reply = spec.reply_envelope.model_validate_json(raw)
        if reply.ok:
            assert doc["data"] == spec.example_response
        else:
            assert spec.refusal is not None
            assert reply.error is not None
            assert (reply.error.code, reply.error.rule) == (spec.refusal.code, spec.refusal.rule)


def test_error_table_lists_every_code_with_both_languages() -> None:
    text = _text()
    for code in ErrorCode:
        zh, en = MESSAGES[code]
        assert f"| `{code.value}` | {zh} | {en} |" in text, code


def test_doc_covers_connection_and_idempotency_rules() -> None:
    text = _text()
    for needle in (
        "MQTT v5",
        "TCP_NODELAY",
        "clean start",
        "idempotency_conflict",
        "mosquitto_rr -V mqttv5",
        "Correlation Data",
        "onecard/v1/t/+/req/+",
        "$share/",
        "LOSS-3",
        "16 KiB",
    ):
        assert needle in text, needle
