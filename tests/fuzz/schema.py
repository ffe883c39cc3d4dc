"""The AsyncAPI document as the fuzzer reads it: request operations, and a schema walker that
turns each JSON schema of ``docs/asyncapi.json`` into a hypothesis strategy of *valid* values
(plus a small validator for the same subset, used to check the gateway's replies).

Only the subset of JSON Schema that :mod:`protocol.wire.asyncapi` emits is supported (``$ref``,
``type`` object/array/string/integer/boolean/null, ``properties``/``required``/
``additionalProperties: false``, ``anyOf``, ``enum``, ``const``, ``minimum``/``maximum``,
``minLength``/``maxLength``/``pattern``, ``minItems``/``maxItems``). Anything else raises
:class:`UnsupportedSchema`, so a contract change that the walker does not understand fails the
fuzz test loudly instead of fuzzing less.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "docs" / "asyncapi.json"

#: Per-field overrides: a strategy *mixed into* the schema's own for a property name (e.g. the
#: UIDs of real cards, so some valid requests reach the money paths, not only ``card_unknown``).
Hints = Mapping[str, st.SearchStrategy[Any]]

_KNOWN_KEYS = frozenset(
    {
        "$ref",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "anyOf",
        "enum",
        "const",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "minItems",
        "maxItems",
        "title",
        "description",
        "default",
        "examples",
        "format",
        "x-messages",
    }
)


class UnsupportedSchema(ValueError):
    """A schema keyword the walker does not know (the contract grew: teach the walker)."""


@dataclass(frozen=True, slots=True)
class RequestOp:
    """One request operation of the contract, as the AsyncAPI document describes it."""

    name: str
    kinds: frozenset[str]
    envelope: Mapping[str, Any]  # the request envelope schema ({"v", "request_id", "data"})
    reply: Mapping[str, Any]  # the reply envelope schema


@cache
def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ASYNCAPI.read_text(encoding="utf-8"))
    return doc


def resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow ``$ref`` (document-local JSON pointers) until a schema without one."""
    while "$ref" in schema:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            raise UnsupportedSchema(f"non-local $ref {ref!r}")
        node: Any = document()
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


@cache
def request_ops() -> dict[str, RequestOp]:
    """Every operation a terminal sends on ``.../req/{op}``, with the kinds allowed to send it."""
    doc = document()
    out: dict[str, RequestOp] = {}
    for name, op in doc["operations"].items():
        channel = resolve(op["channel"])
        if op["action"] != "receive" or "/req/" not in channel["address"]:
            continue
        message = resolve(op["messages"][0])
        reply_channel = resolve(op["reply"]["channel"])
        reply_message = resolve(next(iter(reply_channel["messages"].values())))
        out[name] = RequestOp(
            name=name,
            kinds=frozenset(op["x-onecard-terminal-kinds"]),
            envelope=resolve(message["payload"]),
            reply=resolve(reply_message["payload"]),
        )
    return out


# --------------------------------------------------------------------------- walker


def _check_keys(schema: Mapping[str, Any]) -> None:
    unknown = set(schema) - _KNOWN_KEYS
    if unknown:
        raise UnsupportedSchema(f"unsupported keywords {sorted(unknown)} in {schema}")


def _string(schema: Mapping[str, Any]) -> st.SearchStrategy[str]:
    lo = int(schema.get("minLength", 0))
    hi = schema.get("maxLength")
    pattern = schema.get("pattern")
    if pattern is None:
        return st.text(min_size=lo, max_size=hi if hi is not None else 80)
    strategy = st.from_regex(pattern, fullmatch=True)
    if lo or hi is not None:
        top = int(hi) if hi is not None else 1 << 30
        strategy = strategy.filter(lambda s: lo <= len(s) <= top)
    return strategy


def _integer(schema: Mapping[str, Any]) -> st.SearchStrategy[int]:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    strategy = st.integers(min_value=lo, max_value=hi)
    edges = [v for v in (lo, hi) if v is not None]
    # the bounds themselves, often: they are where off-by-one bugs live
    return st.one_of(st.sampled_from(edges), strategy) if edges else strategy


def strategy_for(schema: Mapping[str, Any], hints: Hints | None = None) -> st.SearchStrategy[Any]:
    """A strategy of JSON values (dicts, lists, str, int, bool, None) valid for ``schema``."""
    hints = hints or {}
    schema = resolve(schema)
    _check_keys(schema)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    if "anyOf" in schema:
        return st.one_of([strategy_for(s, hints) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        return _object(schema, hints)
    if kind == "array":
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", 5))
        # valid but small: the size boundaries come from the mutators, not from here
        return st.lists(strategy_for(schema["items"], hints), min_size=lo, max_size=min(hi, lo + 4))
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return _integer(schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    raise UnsupportedSchema(f"no strategy for {schema}")


def _object(schema: Mapping[str, Any], hints: Hints) -> st.SearchStrategy[dict[str, Any]]:
    if schema.get("additionalProperties", True) is not False:
        raise UnsupportedSchema("open objects are not in the request contract")
    props: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))

    def field(name: str) -> st.SearchStrategy[Any]:
        own = strategy_for(props[name], hints)
        hint = hints.get(name)
        return own if hint is None else st.one_of(hint, own)

    fixed = {name: field(name) for name in props if name in required}
    optional = {name: field(name) for name in props if name not in required}
    return st.fixed_dictionaries(fixed, optional=optional)


# --------------------------------------------------------------------------- validator

Problem = str


def problems(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[Problem]:
    """Where ``value`` breaks ``schema`` (empty when it conforms); same subset as the walker."""
    schema = resolve(schema)
    if "anyOf" in schema:
        options = [problems(value, s, path) for s in schema["anyOf"]]
        if any(not p for p in options):
            return []
        closest = min(options, key=len)
        return [f"{path}: matches no anyOf branch (closest: {'; '.join(closest[:3])})"]
    if "const" in schema and value != schema["const"]:
        return [f"{path}: {value!r} != const {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} not in enum"]
    check = _TYPE_CHECKS.get(str(schema.get("type")))
    if check is None:
        return []
    if not check(value):
        return [f"{path}: {type(value).__name__} is not {schema['type']}"]
    out: list[Problem] = []
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        out += [f"{path}: missing {k}" for k in schema.get("required", ()) if k not in value]
        if schema.get("additionalProperties", True) is False:
            out += [f"{path}: unknown {k}" for k in value if k not in props]
        for key, sub in value.items():
            if key in props:
                out += problems(sub, props[key], f"{path}.{key}")
    elif isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            out.append(f"{path}: {len(value)} items out of bounds")
        for i, item in enumerate(value):
            out += problems(item, schema.get("items", {}), f"{path}[{i}]")
    elif isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            out.append(f"{path}: length {len(value)} out of bounds")
        pattern = schema.get("pattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            out.append(f"{path}: {value[:40]!r} does not match {pattern}")
    elif isinstance(value, int) and not isinstance(value, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            out.append(f"{path}: {value} out of [{lo}, {hi}]")
    return out


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
