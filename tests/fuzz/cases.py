"""Fuzz cases: one MQTT publish each (topic, properties, payload) with what the contract says
must happen to it.

A case is built by hypothesis from the AsyncAPI schemas (:mod:`tests.fuzz.schema`): a valid
request envelope for an operation, then maybe one payload mutation (wrong types, boundary
numbers, long and odd unicode strings, missing and extra fields, deep nesting, truncation,
random bytes, duplicate keys, wrong ``v``, request-id edge cases, sizes around 16 KiB) and
topic-level mutations (unknown ops, ops of another terminal kind, malformed op names, other
terminals' topics, Response Topic values, Correlation Data sizes, retained requests).

The expectations are the contract's (docs/terminal-contract.md): a message on the sender's own
``.../req/{op}`` topic with a well-formed ``op`` gets exactly one reply; the reply carries the
request id when the payload is at most 16 KiB and the id can be read; the reply goes to the
Response Topic when it lies under the sender's own ``.../resp/`` and is a valid topic name,
otherwise to ``.../resp/{op}``; some wire problems map to one code (§9 table).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.schema import Hints, request_ops, strategy_for

MAX_PAYLOAD = 16 * 1024
ROOT = "onecard/v1"
OP_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
RID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: What may follow ``onecard/v1/t/{terminal_id}/resp/`` in an honoured Response Topic (§5).
RESPONSE_SUFFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}(?:/[A-Za-z0-9_.:-]{1,64}){0,3}")
RID_TEXT_RE = re.compile(rb'"request_id"\s*:\s*"([A-Za-z0-9_.:-]{1,64})"')
#: Replaced at send time by a live kiosk session of the sending terminal (if it has one), so
#: session-bound kiosk operations reach their real paths. Matches the session pattern.
SESSION_TOKEN = "FZsessionPLACEHOLDER"
#: Likewise a hold this water controller holds (``water_settle`` / ``water_release``) and a sale
#: this POS made (``void``), so those reach their money paths too.
HOLD_TOKEN = "FZholdPLACEHOLDER"
SALE_TOKEN = "FZsalePLACEHOLDER"
#: A ``sent_ms`` replaced at send time by the sender's clock (the corpus is drawn before the
#: run, so a drawn time is mostly stale: ``expired``, or ahead: ``clock_skew``).
NOW_MS_TOKEN = 3141592653589
#: Correlation Data of at least this many bytes carries the case's sequence number.
TAG_SIZE = 6


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What the generator may know about the site under test."""

    kinds: Mapping[str, str]  # fuzzing terminal id -> kind
    others: Sequence[str]  # terminal ids the fuzzers must not be able to touch
    cards: Sequence[str]  # UIDs of real cards (never the well-behaved terminal's)
    logins: Sequence[tuple[str, str]]  # (number, password) of real holders


@dataclass(frozen=True, slots=True)
class Case:
    terminal: str
    topic: str
    payload: bytes
    mutation: str
    op: str | None = None  # the op of an own request topic (None: no reply expected)
    response_topic: str | None = None
    corr_size: int | None = None  # None: no Correlation Data property
    retain: bool = False
    expect_codes: frozenset[str] | None = None  # the contract fixes the code
    forbid_codes: frozenset[str] = frozenset()
    notes: tuple[str, ...] = field(default=())

    @property
    def expects_reply(self) -> bool:
        return self.op is not None

    @property
    def tagged(self) -> bool:
        return self.corr_size is not None and self.corr_size >= TAG_SIZE

    def reply_topics(self) -> frozenset[str]:
        """Where the reply must be published (contract §5): on the Response Topic if it is the
        sender's own ``.../resp/`` followed by 1 to 4 levels of 1 to 64 characters from
        ``A-Z a-z 0-9 _ . : -``, else on ``.../resp/{op}``."""
        if self.op is None:
            return frozenset()
        own = f"{ROOT}/t/{self.terminal}/resp/"
        rt = self.response_topic
        if rt and rt.startswith(own) and RESPONSE_SUFFIX.fullmatch(rt[len(own) :]):
            return frozenset({rt})
        return frozenset({f"{own}{self.op}"})

    def allowed_request_ids(self) -> tuple[frozenset[str | None], bool]:
        """(request ids the reply may carry, strict); strict: the id is readable, so ``null``
        is not acceptable."""
        return readable_request_ids(self.payload)

    def describe(self, limit: int = 300) -> str:
        payload = self.payload[:limit]
        more = f"... ({len(self.payload)} bytes)" if len(self.payload) > limit else ""
        props = []
        if self.response_topic is not None:
            props.append(f"response_topic={self.response_topic[:120]!r}")
        if self.corr_size is not None:
            props.append(f"correlation_data={self.corr_size} bytes")
        if self.retain:
            props.append("retain")
        return (
            f"[{self.mutation}] {self.terminal} -> {self.topic[:160]} "
            f"{' '.join(props)} payload={payload!r}{more}"
        )


def readable_request_ids(payload: bytes) -> tuple[frozenset[str | None], bool]:
    if len(payload) > MAX_PAYLOAD:
        return frozenset({None}), True  # §2: answered `malformed` with "request_id": null
    top: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        top.append(pairs)
        return dict(pairs)

    try:
        doc = json.loads(payload, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return frozenset({None, *_regex_ids(payload)}), False
    if not isinstance(doc, dict) or not top:
        return frozenset({None}), True
    values = [v for k, v in top[-1] if k == "request_id"]
    valid = [v for v in values if isinstance(v, str) and RID_RE.fullmatch(v)]
    if len(values) == 1 and len(valid) == 1:
        return frozenset(valid), True
    if not valid:
        return frozenset({None}), True
    return frozenset({None, *valid}), False  # duplicate keys: either reading is defensible


def _regex_ids(payload: bytes) -> set[str]:
    return {m.group(1).decode() for m in RID_TEXT_RE.finditer(payload[: MAX_PAYLOAD * 2])}


# --------------------------------------------------------------------------- cross-field rules
# The JSON schemas cannot say these; the model validators (protocol/wire/messages.py) do and the
# operation descriptions say them in prose. Valid requests must respect them.


def _topup_one_purse(data: dict[str, Any]) -> bool:
    return (data.get("session") is None) != (data.get("card") is None)


def _sales_in_order(data: dict[str, Any]) -> bool:
    seqs = [s["seq"] for s in data["sales"]]
    return all(a < b for a, b in itertools.pairwise(seqs))


REFINEMENTS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "topup": _topup_one_purse,
    "offline_upload": _sales_in_order,
}


def valid_envelope(op: str, hints: Hints | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Valid request envelopes for ``op`` from the AsyncAPI document (plus cross-field rules)."""
    strategy: st.SearchStrategy[dict[str, Any]] = strategy_for(request_ops()[op].envelope, hints)
    rule = REFINEMENTS.get(op)
    if rule is not None:
        strategy = strategy.filter(lambda env: rule(env["data"]))
    return strategy


# --------------------------------------------------------------------------- payload mutators

_MARK = "\x01FZRAW\x01"
_MARK_JSON = json.dumps(_MARK)
BOUNDARY_NUMBERS = (
    "0",
    "-1",
    "1",
    "-0",
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "1" + "0" * 400,
    "1.0",
    "0.5",
    "1e3",
    "1E400",
    "-1e-400",
    "NaN",
    "Infinity",
    "-Infinity",
    "01",
    "0x10",
    "1_000",
    "253402300800000",
    "2147483647",
    "2147483648",
    "1000000",
    "1000001",
    "1000000000",
    "1000000001",
)
ODD_STRINGS = (
    "",
    " ",
    "\x00",
    "\ud800",  # lone surrogate: json.dumps escapes it; valid JSON, not valid Unicode
    "\u202e04A1B2C3",  # right-to-left override
    "04A1\u200bB2C3D4",  # zero-width space
    "０４Ａ１Ｂ２Ｃ３",  # full-width
    "04a1b2c3d4e5f6",  # lower-case UID
    "张三",
    "🀄️💳",
    "e\u0301" * 40,
    "\n",
    "null",
    "../../etc/passwd",
    "'; DROP TABLE cards; --",
    "%s%s%s%n",
    "${jndi:ldap://x}",
    "\\u0000",
    "A" * 65,
)
WRONG_VALUES: tuple[Any, ...] = (None, True, False, 0, -1, 1.5, "1", "", [], {}, [1], {"a": 1})


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            out.append((*prefix, key))
            out += _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out.append((*prefix, i))
            out += _paths(sub, (*prefix, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _delete(doc: Any, path: tuple[Any, ...]) -> None:
    del _get(doc, path[:-1])[path[-1]]


def _dumps(doc: Any, raw: str | None = None, *, ascii_only: bool = True) -> bytes:
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":"))
    if raw is not None:
        text = text.replace(_MARK_JSON, raw)
    return text.encode("utf-8", "surrogatepass")


Draw = Callable[[st.SearchStrategy[Any]], Any]
Mutated = tuple[bytes, str, frozenset[str] | None, frozenset[str]]  # payload, label, expect, forbid


def _copy(env: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(env))
    return copied


def m_valid(draw: Draw, env: dict[str, Any]) -> Mutated:
    spaced = draw(st.booleans())
    text = json.dumps(
        env, ensure_ascii=draw(st.booleans()), separators=(", ", ": ") if spaced else (",", ":")
    )
    return text.encode(), "valid", None, frozenset({"malformed", "unsupported"})


def m_wrong_type(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    path = draw(st.sampled_from(_paths(doc)))
    current = _get(doc, path)
    wrong = draw(st.sampled_from([v for v in WRONG_VALUES if type(v) is not type(current)]))
    _set(doc, path, wrong)
    return _dumps(doc), f"wrong_type:{'.'.join(map(str, path[-2:]))}", None, frozenset()


def m_boundary_number(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    numeric = [p for p in _paths(doc) if isinstance(_get(doc, p), int)]
    path = draw(st.sampled_from(numeric or _paths(doc)))
    raw = draw(st.sampled_from(BOUNDARY_NUMBERS))
    _set(doc, path, _MARK)
    return _dumps(doc, raw), f"boundary_number:{path[-1]}={raw[:24]}", None, frozenset()


def m_odd_string(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    strings = [p for p in _paths(doc) if isinstance(_get(doc, p), str)]
    path = draw(st.sampled_from(strings or _paths(doc)))
    size = draw(st.sampled_from([0, 1, 64, 65, 256, 4096, 15000]))
    alphabet = draw(st.sampled_from(["A", "卡", "💳", "\u0301", "\x00", "9"]))
    value = draw(st.one_of(st.sampled_from(ODD_STRINGS), st.just(alphabet * size), st.text()))
    _set(doc, path, value)
    payload = _dumps(doc, ascii_only=draw(st.booleans()))
    return payload, f"odd_string:{path[-1]}", None, frozenset()


def m_missing_field(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    keys = [p for p in _paths(doc) if isinstance(_get(doc, p[:-1]), dict)]
    path = draw(st.sampled_from(keys))
    _delete(doc, path)
    return _dumps(doc), f"missing:{path[-1]}", None, frozenset()


def m_extra_field(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    objects = [()] + [p for p in _paths(doc) if isinstance(_get(doc, p), dict)]
    where = draw(st.sampled_from(objects))
    name = draw(st.sampled_from(["extra", "terminal_id", "ok", "__proto__", "", "v2", "卡号"]))
    _get(doc, where)[name] = draw(st.sampled_from(WRONG_VALUES))
    return _dumps(doc), f"extra:{name}", None, frozenset()


def m_nested(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    depth = draw(st.sampled_from([32, 100, 255, 256, 257, 999, 1000, 1001, 3000, 8000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nest = opener * depth + "1" + closer * depth
    target = draw(st.sampled_from([("data",), *_paths(doc)]))
    _set(doc, target, _MARK)
    payload = _dumps(doc, nest)
    if len(payload) > MAX_PAYLOAD:
        payload = (opener * depth + closer * depth).encode()[:MAX_PAYLOAD]
    return payload, f"nested:{opener[0]}{depth}", None, frozenset()


def m_truncated(draw: Draw, env: dict[str, Any]) -> Mutated:
    payload = _dumps(env)
    cut = draw(st.integers(min_value=0, max_value=len(payload) - 1))
    return payload[:cut], "truncated", None, frozenset()


def m_random_bytes(draw: Draw, env: dict[str, Any]) -> Mutated:
    prefix = draw(st.sampled_from([b"", b"{", b'{"v":1,', _dumps(env)[:20]]))
    return prefix + draw(st.binary(max_size=300)), "random_bytes", None, frozenset()


def m_duplicate_keys(draw: Draw, env: dict[str, Any]) -> Mutated:
    body = _dumps(env)[1:]
    extra = draw(
        st.sampled_from(
            [
                b'"request_id":"fz-dup-first",',
                b'"v":2,',
                b'"v":1,',
                b'"data":{},',
                b'"data":null,',
                b'"request_id":null,',
                b'"request_id":"' + b"x" * 65 + b'",',
            ]
        )
    )
    after = draw(st.booleans())
    payload = b"{" + body[:-1] + b"," + extra[:-1] + b"}" if after else b"{" + extra + body
    return payload, f"duplicate_key:{extra[:14].decode()}", None, frozenset()


def m_wrong_v(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    v = draw(st.sampled_from([0, 2, -1, 255, 2**53, 2**64, "1", 1.0, 1.5, True, None, "missing"]))
    if v == "missing":
        del doc["v"]
        return _dumps(doc), "wrong_v:missing", None, frozenset()
    doc["v"] = v
    integer = isinstance(v, int) and not isinstance(v, bool)
    # contract §9: "`v` other than 1 -> unsupported" (an integer other than 1)
    expect = frozenset({"unsupported"}) if integer else None
    return _dumps(doc), f"wrong_v:{v!r}"[:40], expect, frozenset()


def m_request_id(draw: Draw, env: dict[str, Any]) -> Mutated:
    doc = _copy(env)
    rid = draw(
        st.one_of(
            st.sampled_from(
                [
                    "",
                    "a" * 64,
                    "a" * 65,
                    "a/b",
                    "a b",
                    "a+b",
                    "#",
                    "零",
                    "\x00",
                    ".",
                    ":",
                    "-",
                    "_" * 64,
                    "A\n",
                    "a" * 10000,
                    None,
                    12,
                    [],
                    {"x": 1},
                    "fz-reused-1",  # the same id with other content: idempotency_conflict
                ]
            ),
            st.from_regex(RID_RE, fullmatch=True),
        )
    )
    doc["request_id"] = rid
    label = f"request_id:{rid!r}"[:40]
    return _dumps(doc, ascii_only=draw(st.booleans())), label, None, frozenset()


def m_size(draw: Draw, env: dict[str, Any]) -> Mutated:
    """A valid envelope padded with JSON whitespace (still valid) or an extra field (invalid) to
    a size around the 16 KiB limit; multi-byte padding puts fewer characters than bytes."""
    target = draw(
        st.sampled_from(
            [
                MAX_PAYLOAD - 1,
                MAX_PAYLOAD,
                MAX_PAYLOAD + 1,
                MAX_PAYLOAD + 2,
                MAX_PAYLOAD + 100,
                20000,
                65536,
                1 << 20,
            ]
        )
    )
    how = draw(st.sampled_from(["whitespace", "field", "multibyte"]))
    base = _dumps(env)
    if how == "whitespace":
        payload = b"{" + b" " * max(0, target - len(base)) + base[1:]
    elif how == "field":
        doc = _copy(env)
        doc["pad"] = ""
        room = max(0, target - len(_dumps(doc)))
        doc["pad"] = "x" * room
        payload = _dumps(doc)
    else:
        doc = _copy(env)
        doc["pad"] = ""
        room = max(0, target - len(_dumps(doc, ascii_only=False)))
        doc["pad"] = "卡" * (room // 3) + "x" * (room % 3)
        payload = _dumps(doc, ascii_only=False)
    expect: frozenset[str] | None = None
    forbid: frozenset[str] = frozenset()
    if len(payload) > MAX_PAYLOAD:
        expect = frozenset({"malformed"})
    elif how == "whitespace":
        forbid = frozenset({"malformed"})  # a valid request of at most 16 KiB is read
    return payload, f"size:{how}:{len(payload)}", expect, forbid


def m_not_an_object(draw: Draw, env: dict[str, Any]) -> Mutated:
    payload = draw(
        st.sampled_from(
            [b"", b" ", b"[]", b'"x"', b"1", b"null", b"true", b"{}", b"[{}]", b"\xef\xbb\xbf{}"]
        )
    )
    return payload, f"not_an_object:{payload[:8]!r}", frozenset({"malformed"}), frozenset()


def m_encoding(draw: Draw, env: dict[str, Any]) -> Mutated:
    text = json.dumps(env, ensure_ascii=False)
    how = draw(st.sampled_from(["bom", "utf16", "gbk_string", "invalid_utf8", "latin1"]))
    if how == "bom":
        payload = b"\xef\xbb\xbf" + text.encode()
    elif how == "utf16":
        payload = text.encode("utf-16")
    elif how == "gbk_string":
        doc = _copy(env)
        doc["data"]["note"] = _MARK
        payload = _dumps(doc).replace(_MARK_JSON.encode(), b'"' + "饭卡".encode("gbk") + b'"')
    elif how == "invalid_utf8":
        payload = text.encode()[:-2] + b"\xff\xfe" + text.encode()[-2:]
    else:
        payload = text.encode() + b"\xe9"
    return payload, f"encoding:{how}", None, frozenset()


MUTATORS: tuple[tuple[int, Callable[[Draw, dict[str, Any]], Mutated]], ...] = (
    (30, m_valid),
    (8, m_wrong_type),
    (8, m_boundary_number),
    (7, m_odd_string),
    (5, m_missing_field),
    (5, m_extra_field),
    (5, m_nested),
    (4, m_truncated),
    (4, m_random_bytes),
    (4, m_duplicate_keys),
    (4, m_wrong_v),
    (6, m_request_id),
    (6, m_size),
    (2, m_not_an_object),
    (2, m_encoding),
)


def _weighted(items: Sequence[tuple[int, Any]]) -> st.SearchStrategy[Any]:
    return st.sampled_from([item for weight, item in items for _ in range(weight)])


# --------------------------------------------------------------------------- topics & properties


def _response_topics(tid: str, op: str, info: SiteInfo) -> st.SearchStrategy[str | None]:
    """Response Topic values: mostly none; own ones; wildcards; other terminals' topics; the
    gateway's own topics; empty; very long."""
    own = f"{ROOT}/t/{tid}/resp/"
    victim = info.others[0] if info.others else "pos-001"
    return _weighted(
        [
            (60, None),
            (6, f"{own}{op}"),
            (6, f"{own}fz/{op}/x"),
            (2, own),  # empty last level: a valid topic name
            (2, f"{own}卡/√"),
            (2, f"{own}../../{victim}/resp/{op}"),
            (3, "#"),
            (3, "+"),
            (3, f"{own}#"),
            (3, f"{own}+"),
            (2, f"{own}a/+/b"),
            (2, f"{ROOT}/t/+/resp/{op}"),
            (3, f"{ROOT}/t/{victim}/resp/{op}"),
            (2, f"{ROOT}/gateway/status"),
            (2, f"{ROOT}/blacklist/snapshot"),
            (2, f"{ROOT}/t/{tid}/req/{op}"),
            (2, ""),
            (1, "$SYS/broker/x"),
            (2, own + "x" * 1000),
            (1, own + "y" * 60000),
            (1, "z" * 3000),
            (1, f"{ROOT}/t/{tid}/respX/{op}"),
        ]
    )


def cases(info: SiteInfo) -> st.SearchStrategy[Case]:
    """Fuzz cases: a terminal, a topic, MQTT v5 properties and a payload."""
    ops = request_ops()
    hints: dict[str, st.SearchStrategy[Any]] = {
        "session": st.just(SESSION_TOKEN),
        "hold_id": st.just(HOLD_TOKEN),
        "original_request_id": st.just(SALE_TOKEN),
        "sent_ms": st.just(NOW_MS_TOKEN),
    }
    if info.cards:
        hints["card"] = st.sampled_from(list(info.cards))
    envelopes = {op: valid_envelope(op, hints) for op in ops}
    response_topics = {
        (tid, op): _response_topics(tid, op, info) for tid in info.kinds for op in ops
    }
    return _cases(info, envelopes, response_topics)


@st.composite
def _cases(
    draw: Draw,
    info: SiteInfo,
    envelopes: Mapping[str, st.SearchStrategy[dict[str, Any]]],
    response_topics: Mapping[tuple[str, str], st.SearchStrategy[str | None]],
) -> Case:
    ops = request_ops()
    tid = draw(st.sampled_from(sorted(info.kinds)))
    kind = info.kinds[tid]
    mine = sorted(name for name, spec in ops.items() if kind in spec.kinds)
    theirs = sorted(name for name, spec in ops.items() if kind not in spec.kinds)
    route = draw(
        _weighted(
            [(75, "own"), (7, "other_kind"), (6, "unknown_op"), (6, "bad_op"), (6, "foreign")]
        )
    )
    if route == "own":
        op = draw(st.sampled_from(mine))
    elif route == "other_kind":
        op = draw(st.sampled_from(theirs))
    else:
        op = draw(
            st.from_regex(OP_RE, fullmatch=True).filter(lambda name: name not in ops)
            if route == "unknown_op"
            else st.sampled_from(mine)
        )
    schema_op = op if op in ops else draw(st.sampled_from(sorted(ops)))
    env = draw(envelopes[schema_op])
    if schema_op == "login" and info.logins and draw(st.booleans()):
        number, password = draw(st.sampled_from(list(info.logins)))
        env["data"] = {"number": number, "password": password}
    mutator = draw(_weighted(MUTATORS))
    payload, label, expect, forbid = mutator(draw, env)
    if mutator is m_valid and schema_op == "unlock":
        expect = frozenset({"permission_denied"})
    reply_op: str | None = op
    if route == "own":
        topic = f"{ROOT}/t/{tid}/req/{op}"
    elif route in ("other_kind", "unknown_op"):
        topic = f"{ROOT}/t/{tid}/req/{op}"
        # contract §9: unknown op / other kind -> unsupported; a broken payload may be found
        # first (the table gives no precedence), so then either code will do
        if len(payload) <= MAX_PAYLOAD and mutator in (m_valid, m_size):
            expect = frozenset({"unsupported"})
        elif expect is not None:
            expect = expect | {"unsupported"}
        label = f"{route}:{label}"
    elif route == "bad_op":
        bad = draw(
            st.sampled_from(
                [
                    op.upper(),
                    "a" * 33,
                    "卡",
                    "",
                    f"{op}/x",
                    f"{op} ",
                    "9op",
                    "op-1",
                    "$op",
                ]
            )
        )
        topic = f"{ROOT}/t/{tid}/req/{bad}"
        reply_op = None
        label = f"bad_op:{bad[:12]!r}:{label}"
    else:
        victim = draw(
            st.sampled_from([*(o for o in info.others if o != tid), "ghost-01", "gateway"])
        )
        where = draw(st.sampled_from(["req", "resp", "status"]))
        topic = f"{ROOT}/t/{victim}/{where}" + (f"/{op}" if where != "status" else "")
        extra = draw(st.sampled_from([None, f"{ROOT}/gateway/status", f"{ROOT}/blacklist/delta"]))
        topic = extra if extra is not None and where == "status" else topic
        reply_op = None
        label = f"foreign:{where}:{label}"
    if route == "own" and draw(_weighted([(98, False), (2, True)])):
        # publishing on the own resp/ or status topic: the ACL allows only req/ and status
        topic = f"{ROOT}/t/{tid}/" + draw(st.sampled_from([f"resp/{op}", "status"]))
        reply_op = None
        label = f"own_other_topic:{label}"
    response_topic = draw(response_topics[(tid, schema_op)])
    corr = draw(
        _weighted(
            [
                (6, None),
                (1, 0),
                (1, 1),
                (1, 5),
                (10, 6),
                (4, 8),
                (8, 16),
                (3, 64),
                (2, 255),
                (2, 256),
                (2, 1024),
                (1, 4096),
                (1, 65535),
            ]
        )
    )
    retain = draw(_weighted([(98, False), (2, True)]))
    return Case(
        terminal=tid,
        topic=topic,
        payload=payload,
        mutation=label,
        op=reply_op,
        response_topic=response_topic,
        corr_size=corr,
        retain=retain,
        expect_codes=expect if reply_op is not None else None,
        forbid_codes=forbid if reply_op is not None and route == "own" else frozenset(),
    )
