"""The schema-driven fuzzer (issue 8): the walker against the wire models, then a short run at
rate through the real broker and ``onecard serve`` (the long run is ``make fuzz``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.wire.registry import OPERATIONS
from tests.fuzz.cases import MAX_PAYLOAD, Case, readable_request_ids, valid_envelope
from tests.fuzz.runner import Options, run_fuzz
from tests.fuzz.schema import UnsupportedSchema, problems, request_ops, strategy_for

OPS = sorted(request_ops())


def test_the_document_lists_every_operation_of_the_code() -> None:
    assert set(OPS) == set(OPERATIONS)
    for name, op in request_ops().items():
        assert {k.value for k in OPERATIONS[name].kinds} == op.kinds


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_requests_from_the_schema_pass_the_gateway_codec(
    op: str, data: st.DataObject
) -> None:
    """What the walker builds from docs/asyncapi.json is what protocol/wire accepts: the
    document and the models agree (and the walker is sound)."""
    envelope = data.draw(valid_envelope(op))
    assert problems(envelope, request_ops()[op].envelope) == []
    OPERATIONS[op].request_envelope.model_validate_json(json.dumps(envelope))


def test_the_walker_refuses_what_it_does_not_understand() -> None:
    with pytest.raises(UnsupportedSchema):
        strategy_for({"type": "object", "additionalProperties": False, "patternProperties": {}})
    with pytest.raises(UnsupportedSchema):
        strategy_for({"type": "number"})


def test_the_validator_finds_contract_breaks() -> None:
    schema = request_ops()["purchase"].envelope
    good = {"v": 1, "request_id": "r-1", "data": {"card": "04A1B2C3D4E5F6", "amount_fen": 1}}
    assert problems(good, schema) == []
    bad = {"v": 1, "request_id": "r/1", "data": {"card": "04a1b2c3", "amount_fen": 0, "x": 1}}
    found = "; ".join(problems(bad, schema))
    for part in ("request_id", "card", "amount_fen", "unknown x"):
        assert part in found


@pytest.mark.parametrize(
    ("payload", "allowed", "strict"),
    [
        (b'{"v":1,"request_id":"a-1","data":{}}', {"a-1"}, True),
        (b'{"v":1,"request_id":"a/1"}', {None}, True),
        (b'{"request_id":"a","request_id":"b"}', {None, "a", "b"}, False),
        (b'{"v":1,"request_id":"a-1","data":{', {None, "a-1"}, False),
        (b"[1]", {None}, True),
        (b'{"request_id":"big","pad":"' + b"x" * MAX_PAYLOAD + b'"}', {None}, True),
    ],
)
def test_which_request_id_a_reply_may_carry(
    payload: bytes, allowed: set[str | None], strict: bool
) -> None:
    assert readable_request_ids(payload) == (frozenset(allowed), strict)


def test_reply_topic_rules() -> None:
    def case(rt: str | None) -> Case:
        return Case("pos-fz1", "onecard/v1/t/pos-fz1/req/purchase", b"", "t", "purchase", rt)

    default = "onecard/v1/t/pos-fz1/resp/purchase"
    assert case(None).reply_topics() == {default}
    assert case("onecard/v1/t/pos-fz1/resp/x/y").reply_topics() == {"onecard/v1/t/pos-fz1/resp/x/y"}
    dotted = "onecard/v1/t/pos-fz1/resp/../a.b/c:d/e-f"
    assert case(dotted).reply_topics() == {dotted}
    for bad in (
        "#",
        "onecard/v1/t/pos-fz1/resp/#",
        "onecard/v1/t/pos-good/resp/purchase",
        "",
        "onecard/v1/t/pos-fz1/resp/卡",
        "onecard/v1/t/pos-fz1/resp/",
        "onecard/v1/t/pos-fz1/resp/a/b/c/d/e",
        "onecard/v1/t/pos-fz1/resp/" + "x" * 65,
    ):
        assert case(bad).reply_topics() == {default}


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.asyncio
async def test_fuzz_at_rate_through_the_broker_and_the_gateway(tmp_path: Path) -> None:
    """A short run: every oracle of tests/fuzz/runner.py must hold."""
    report = await run_fuzz(
        Options(duration=12, rate=150, corpus=500, seed=8, directory=tmp_path / "fuzz")
    )
    assert report.sent >= 1500
    assert report.good.get("taps", 0) > 50
    assert report.ok, report.render()
