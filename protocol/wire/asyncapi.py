"""Builds the AsyncAPI 3.0 document of the terminal contract from the models and the registry.

Pure: :func:`build_asyncapi` returns a dict; ``python -m protocol.wire.asyncapi`` prints it as
JSON on stdout (``> docs/asyncapi.json``). A test regenerates it and compares it with the
checked-in file, so the published contract cannot drift from the code.

The document describes the **gateway** as the application: it *receives* requests (and terminal
statuses) and *sends* replies, its own status and the deny list.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from protocol.errors import MESSAGES, ErrorCode, OnecardError, bilingual
from protocol.wire.denylist import (
    DenyChange,
    DenyChangeKind,
    DenyDelta,
    DenySnapshot,
    make_snapshot,
)
from protocol.wire.envelope import CONTRACT_VERSION, WIRE_VERSION, error_body
from protocol.wire.fields import TerminalKind
from protocol.wire.messages import GatewayStatus, Presence, TerminalStatus
from protocol.wire.registry import OPERATIONS, OpSpec
from protocol.wire.topics import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    ROOT,
)

__all__ = ["build_asyncapi", "example_request_id", "main", "render_json"]

_REF = "#/components/schemas/{model}"
_TERMINAL_ID_PARAM = {
    "description": (
        "Terminal id, also the MQTT username and client id: `[a-z0-9][a-z0-9_-]{0,62}`."
    ),
    "examples": ["pos-001", "kiosk-lib-2", "door-dorm7-e", "water-b12-03"],
}
_EXAMPLE_TERMINAL = {
    TerminalKind.POS: "pos-001",
    TerminalKind.KIOSK: "kiosk-lib-2",
    TerminalKind.DOOR: "door-dorm7-e",
    TerminalKind.WATER: "water-b12-03",
}
_DESCRIPTION = """\
Campus one-card (校园一卡通) terminal contract, version 1.1 (wire version 1: `v: 1`, topics
`onecard/v1`; 1.1 is backwards compatible with 1.0 terminals, see CHANGELOG.md).

MQTT v5, QoS 1, JSON payloads (UTF-8). Money is integer fen; timestamps are integer milliseconds
since the Unix epoch (UTC); card identifiers are the card UID in upper-case hex.
Each terminal connects with username = client id = its terminal id and its own password,
`clean_start=false`, and a last will `{"v":1,"state":"offline"}` (retained) on its status topic.
Requests may set the MQTT v5 Response Topic and Correlation Data; the gateway then publishes the
reply there with the same Correlation Data, otherwise on the op's `resp` topic.
`request_id` is the idempotency key per terminal: a retry with the same id and content gets the
stored reply again; the same id with other content gets `idempotency_conflict`.
Error `message`: the code's default text `zh / en` (x-messages), optionally `: detail`.
After applying a deny-list change a terminal sends `heartbeat` with the new version within 1 s.
Human-readable guide: docs/terminal-contract.md."""


def example_request_id(spec: OpSpec) -> str:
    """The request id used in the examples of ``spec`` (documentation only)."""
    return f"{_example_terminal(spec)}-000042"


def _example_terminal(spec: OpSpec) -> str:
    if len(spec.kinds) == 1:
        (kind,) = spec.kinds
        return _EXAMPLE_TERMINAL[kind]
    return _EXAMPLE_TERMINAL[TerminalKind.POS]


def _schemas() -> tuple[dict[str, Any], dict[Any, Any]]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for spec in OPERATIONS.values():
        models.append((spec.request_envelope, "validation"))
        models.append((spec.reply_envelope, "validation"))
    models += [
        (TerminalStatus, "validation"),
        (GatewayStatus, "validation"),
        (DenySnapshot, "validation"),
        (DenyDelta, "validation"),
    ]
    key_map, defs = models_json_schema(models, ref_template=_REF)
    schemas: dict[str, Any] = dict(sorted(defs.get("$defs", {}).items()))
    schemas["ErrorCode"] = {
        **schemas["ErrorCode"],
        "description": "Closed set of error codes. "
        + "; ".join(f"`{c.value}`: {bilingual(c)}" for c in ErrorCode),
        "x-messages": {c.value: {"zh": MESSAGES[c][0], "en": MESSAGES[c][1]} for c in ErrorCode},
    }
    return schemas, key_map


def _ref(key_map: dict[Any, Any], model: type[BaseModel]) -> Any:
    return key_map[(model, "validation")]


def _op_messages(spec: OpSpec, key_map: Any) -> dict[str, Any]:
    rid = example_request_id(spec)
    request_example = {"v": WIRE_VERSION, "request_id": rid, "data": spec.example_request}
    reply_examples: list[dict[str, Any]] = []
    if spec.example_response is not None:
        reply_examples.append(
            {
                "name": "ok",
                "payload": {
                    "v": WIRE_VERSION,
                    "request_id": rid,
                    "ok": True,
                    "data": spec.example_response,
                },
            }
        )
    if spec.refusal is not None:
        r = spec.refusal
        refused = OnecardError(r.message_zh, r.message_en, code=r.code, rule=r.rule)
        error: dict[str, Any] = error_body(refused).model_dump(mode="json", exclude_none=True)
    elif spec.errors:
        error = {"code": spec.errors[0].value, "message": bilingual(spec.errors[0])}
    else:
        error = {"code": ErrorCode.MALFORMED.value, "message": bilingual(ErrorCode.MALFORMED)}
    reply_examples.append(
        {
            "name": "error",
            "payload": {"v": WIRE_VERSION, "request_id": rid, "ok": False, "error": error},
        }
    )
    return {
        f"{spec.op}_request": {
            "name": f"{spec.op}_request",
            "title": f"{spec.op} request",
            "summary": spec.summary,
            "contentType": "application/json",
            "payload": _ref(key_map, spec.request_envelope),
            "correlationId": {
                "description": "MQTT v5 Correlation Data, echoed on the reply when present.",
                "location": "$message.header#/correlationData",
            },
            "bindings": {
                "mqtt": {
                    "bindingVersion": "0.2.0",
                    "payloadFormatIndicator": 1,
                    "contentType": "application/json",
                    "responseTopic": {
                        "type": "string",
                        "description": "Optional MQTT v5 Response Topic; default: the op's resp "
                        "topic. Must be under the terminal's own onecard/v1/t/{terminal_id}/.",
                    },
                    "correlationData": {"type": "string", "format": "binary"},
                }
            },
            "examples": [{"name": "example", "payload": request_example}],
        },
        f"{spec.op}_reply": {
            "name": f"{spec.op}_reply",
            "title": f"{spec.op} reply",
            "summary": f"Reply to {spec.op}"
            + (": always an error." if spec.refusal is not None else "."),
            "contentType": "application/json",
            "payload": _ref(key_map, spec.reply_envelope),
            "bindings": {
                "mqtt": {
                    "bindingVersion": "0.2.0",
                    "payloadFormatIndicator": 1,
                    "contentType": "application/json",
                }
            },
            "examples": reply_examples,
        },
    }


def _qos1(retain: bool) -> dict[str, Any]:
    return {"mqtt": {"bindingVersion": "0.2.0", "qos": 1, "retain": retain}}


def build_asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document as a JSON-ready dict (deterministic)."""
    schemas, key_map = _schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in OPERATIONS.values():
        op_messages = _op_messages(spec, key_map)
        messages.update(op_messages)
        req, resp = f"req_{spec.op}", f"resp_{spec.op}"
        channels[req] = {
            "address": f"{ROOT}/t/{{terminal_id}}/req/{spec.op}",
            "title": f"{spec.op} requests",
            "parameters": {"terminal_id": _TERMINAL_ID_PARAM},
            "messages": {
                f"{spec.op}_request": {"$ref": f"#/components/messages/{spec.op}_request"}
            },
        }
        channels[resp] = {
            "address": f"{ROOT}/t/{{terminal_id}}/resp/{spec.op}",
            "title": f"{spec.op} replies",
            "parameters": {"terminal_id": _TERMINAL_ID_PARAM},
            "messages": {f"{spec.op}_reply": {"$ref": f"#/components/messages/{spec.op}_reply"}},
        }
        operations[spec.op] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{req}"},
            "title": spec.op,
            "summary": spec.summary,
            "description": (
                "Allowed terminal kinds: "
                + ", ".join(sorted(k.value for k in spec.kinds))
                + ". Typical errors: "
                + (", ".join(f"`{c.value}`" for c in spec.errors) or "none beyond the envelope's")
                + "."
            ),
            "bindings": _qos1(retain=False),
            "messages": [{"$ref": f"#/channels/{req}/messages/{spec.op}_request"}],
            "reply": {
                "channel": {"$ref": f"#/channels/{resp}"},
                "messages": [{"$ref": f"#/channels/{resp}/messages/{spec.op}_reply"}],
            },
            "x-onecard-terminal-kinds": sorted(k.value for k in spec.kinds),
        }

    snapshot = make_snapshot(3, ["04A1B2C3D4E5F6", "04C0FFEE1234AB"], 1757385000000)
    delta = DenyDelta(
        from_version=3,
        to_version=5,
        changes=[
            DenyChange(version=4, card="04D00D0000AB12", kind=DenyChangeKind.LOST),
            DenyChange(version=5, card="04A1B2C3D4E5F6", kind=DenyChangeKind.UNLOCKED),
        ],
    )
    fixed: list[tuple[str, str, type[BaseModel], str, bool, str, dict[str, Any]]] = [
        (
            "terminal_status",
            f"{ROOT}/t/{{terminal_id}}/status",
            TerminalStatus,
            "receive",
            True,
            "Terminal presence: retained `online` after connecting; the last will (retained) "
            "says `offline`.",
            TerminalStatus(
                state=Presence.ONLINE, kind=TerminalKind.POS, firmware="acme-pos 2.4.1"
            ).model_dump(mode="json", exclude_none=True),
        ),
        (
            "gateway_status",
            GATEWAY_STATUS_TOPIC,
            GatewayStatus,
            "send",
            True,
            "Gateway presence, retained; `offline` on orderly shutdown and as last will. "
            "`denylist_version` is the newest version published (updated with every snapshot "
            "or delta, contract 1.1).",
            GatewayStatus(state=Presence.ONLINE, denylist_version=1043).model_dump(mode="json"),
        ),
        (
            "denylist_snapshot",
            DENYLIST_SNAPSHOT_TOPIC,
            DenySnapshot,
            "send",
            True,
            "The whole deny list at one version, retained, with a SHA-256 integrity hash over "
            "the canonical encoding `onecard-denylist/1\\n{version}\\n` + one sorted card per "
            "line, each followed by `\\n`.",
            snapshot.model_dump(mode="json"),
        ),
        (
            "denylist_delta",
            DENYLIST_DELTA_TOPIC,
            DenyDelta,
            "send",
            True,
            "Consecutive deny-list changes from_version+1 .. to_version, in order, retained and "
            "cumulative since the current snapshot (an empty retained payload: none). Skip "
            "changes at or below the version held; on a gap re-read the snapshot. Every change "
            "is published as a delta first unless the log has a hole (then a snapshot).",
            delta.model_dump(mode="json"),
        ),
    ]
    for name, address, model, action, retain, description, example in fixed:
        channel: dict[str, Any] = {
            "address": address,
            "title": name.replace("_", " "),
            "description": description,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        if "{terminal_id}" in address:
            channel["parameters"] = {"terminal_id": _TERMINAL_ID_PARAM}
        channels[name] = channel
        messages[name] = {
            "name": name,
            "title": name.replace("_", " "),
            "contentType": "application/json",
            "payload": _ref(key_map, model),
            "examples": [{"name": "example", "payload": example}],
        }
        operations[name] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{name}"},
            "title": name.replace("_", " "),
            "summary": description.split(";")[0].split(".")[0] + ".",
            "bindings": _qos1(retain=retain),
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
        }

    return {
        "asyncapi": "3.0.0",
        "id": "urn:onecard:terminal-contract:v1",
        "info": {
            "title": "onecard terminal contract",
            "version": f"{CONTRACT_VERSION}.0",
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "campus": {
                "host": "mqtt.onecard.campus.example:8883",
                "protocol": "mqtts",
                "protocolVersion": "5",
                "description": "Campus broker (Mosquitto 2). Username = client id = terminal id.",
                "security": [{"$ref": "#/components/securitySchemes/terminalPassword"}],
                "bindings": {
                    "mqtt": {"bindingVersion": "0.2.0", "cleanSession": False, "keepAlive": 60}
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "terminalPassword": {
                    "type": "userPassword",
                    "description": "Per-terminal password; the username is the terminal id.",
                }
            },
        },
    }


def render_json(document: dict[str, Any]) -> str:
    """Stable text form of the document (what ``docs/asyncapi.json`` holds)."""
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def main() -> None:
    """Print the document on stdout: ``python -m protocol.wire.asyncapi > docs/asyncapi.json``."""
    sys.stdout.write(render_json(build_asyncapi()))


if __name__ == "__main__":
    main()
