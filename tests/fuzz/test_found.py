"""Defects the fuzzer found, each reduced to its smallest reproduction (issue 8).

A test here that still fails on purpose is marked ``xfail(strict=True)`` with the defect: it stays
green while the defect is there and turns red (XPASS) the day it is fixed, so the marker is
removed then and the test guards the fix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from tests.fuzz.runner import NODELAY
from tests.fuzz.site import GOOD, Site, build_site

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.asyncio]

#: The receive maximum the gateway announces (gateway/mqtt/client.py ``max_inflight``).
GATEWAY_RECEIVE_MAXIMUM = 1000


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = await build_site(tmp_path / "site", students=2)
    try:
        await asyncio.to_thread(s.start_gateway)
        yield s
    finally:
        await asyncio.to_thread(s.close)


def _client(site: Site, tid: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        site.broker.host,
        site.broker.port,
        username=tid,
        password=site.passwords[tid],
        identifier=tid,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    )


async def _tap(site: Site) -> dict[str, object] | None:
    """One purchase from the well-behaved POS; its reply, or None after 5 s."""
    async with _client(site, GOOD) as good:
        await good.subscribe(f"onecard/v1/t/{GOOD}/resp/+", qos=1)
        body = {"v": 1, "request_id": "g-1", "data": {"card": site.good_card.uid, "amount_fen": 1}}
        await good.publish(f"onecard/v1/t/{GOOD}/req/purchase", json.dumps(body), qos=1)
        try:
            async with asyncio.timeout(5):
                async for message in good.messages:
                    reply: dict[str, object] = json.loads(bytes(message.payload))
                    return reply
        except TimeoutError:
            return None
    return None


async def test_a_thousand_oversized_requests_do_not_starve_every_terminal(site: Site) -> None:
    """One terminal publishes requests of 40 KiB (accepted by the broker's 8 MiB limit, over the
    contract's 16 KiB): they must cost no one else anything. Found by `make fuzz` (seed 7,
    600/s) when the gateway announced a 32 KiB Maximum Packet Size: Mosquitto 2.0.11 kept an
    in-flight slot for each QoS 1 message it dropped for the gateway and after 1,000 delivered
    nothing more. Fixed: no Maximum Packet Size; the gateway reads big packets in linear time
    and answers `malformed` (gateway/mqtt/client.py)."""
    big = b'{"v":1,"request_id":"big","data":{},"pad":"' + b"x" * 40_000 + b'"}'
    async with _client(site, "pos-fz1") as hostile:
        for _ in range(GATEWAY_RECEIVE_MAXIMUM + 10):
            await hostile.publish("onecard/v1/t/pos-fz1/req/purchase", big, qos=1)
    reply = await _tap(site)
    assert reply is not None, "the well-behaved POS got no reply within 5 s"
    assert reply["ok"] is True


async def _ask(site: Site, tid: str, op: str, data: dict[str, object]) -> dict[str, object] | None:
    """One request from ``tid``; its reply, or None after 5 s."""
    async with _client(site, tid) as terminal:
        await terminal.subscribe(f"onecard/v1/t/{tid}/resp/+", qos=1)
        body = {"v": 1, "request_id": f"{op}-1", "data": data}
        await terminal.publish(f"onecard/v1/t/{tid}/req/{op}", json.dumps(body), qos=1)
        try:
            async with asyncio.timeout(5):
                async for message in terminal.messages:
                    reply: dict[str, object] = json.loads(bytes(message.payload))
                    return reply
        except TimeoutError:
            return None
    return None


@pytest.mark.parametrize("op", ["water_release", "water_settle"])
async def test_a_hold_id_beyond_64_bits_is_not_found_not_internal(site: Site, op: str) -> None:
    data: dict[str, object] = {"hold_id": str(2**63)}  # the contract allows 1-64 such characters
    if op == "water_settle":
        data["used_fen"] = 1
    reply = await _ask(site, "water-fz1", op, data)
    assert reply is not None, "no reply within 5 s"
    error = reply.get("error")
    assert isinstance(error, dict)
    assert error["code"] == "not_found", reply
