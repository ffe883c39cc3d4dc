"""The AsyncAPI document is generated from the models; the checked-in copy must not drift."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from protocol.wire import OPERATIONS
from protocol.wire.asyncapi import build_asyncapi, render_json

ROOT = Path(__file__).resolve().parents[3]
CHECKED_IN = ROOT / "docs" / "asyncapi.json"
REGENERATE = "python -m protocol.wire.asyncapi > docs/asyncapi.json"


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_checked_in_document_matches_the_models() -> None:
    text = CHECKED_IN.read_text(encoding="utf-8")
    assert json.loads(text) == build_asyncapi(), f"docs/asyncapi.json is stale: run {REGENERATE}"
    assert text == render_json(build_asyncapi()), f"formatting drifted: run {REGENERATE}"


def test_generation_is_deterministic() -> None:
    assert render_json(build_asyncapi()) == render_json(build_asyncapi())


def test_every_op_has_request_reply_channels_and_operation() -> None:
    doc = build_asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    for op, spec in OPERATIONS.items():
        operation = doc["operations"][op]
        assert operation["action"] == "receive"
        req = _resolve(doc, operation["channel"]["$ref"])
        assert req["address"] == f"onecard/v1/t/{{terminal_id}}/req/{op}"
        resp = _resolve(doc, operation["reply"]["channel"]["$ref"])
        assert resp["address"] == f"onecard/v1/t/{{terminal_id}}/resp/{op}"
        assert operation["x-onecard-terminal-kinds"] == sorted(k.value for k in spec.kinds)
        assert operation["bindings"]["mqtt"]["qos"] == 1


def test_all_refs_resolve() -> None:
    doc = build_asyncapi()
    refs = _refs(doc)
    assert len(refs) > 100
    for ref in refs:
        _resolve(doc, ref)


def test_message_examples_validate_against_the_models() -> None:
    doc = build_asyncapi()
    for op, spec in OPERATIONS.items():
        messages = doc["components"]["messages"]
        for example in messages[f"{op}_request"]["examples"]:
            spec.request_envelope.model_validate_json(json.dumps(example["payload"]))
        replies = messages[f"{op}_reply"]["examples"]
        assert {e["name"] for e in replies} == (
            {"error"} if spec.refusal is not None else {"ok", "error"}
        )
        for example in replies:
            spec.reply_envelope.model_validate_json(json.dumps(example["payload"]))


def test_retained_topics_are_marked() -> None:
    doc = build_asyncapi()
    retained = {name for name, op in doc["operations"].items() if op["bindings"]["mqtt"]["retain"]}
    assert retained == {"terminal_status", "gateway_status", "denylist_snapshot", "denylist_delta"}


def test_entry_point_prints_the_document() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "protocol.wire.asyncapi"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    ).stdout.decode("utf-8")
    assert out == render_json(build_asyncapi())
