"""The lean adapter under uvloop, the gateway's default event loop (``event_loop = "uvloop"``):
uvloop's transports are not ``asyncio.Transport`` subclasses, and an isinstance check in
``connection_made`` once refused every connection there while the asyncio-loop tests passed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from gateway.mqtt.client import Inbound, MqttSettings
from gateway.mqtt.client_lean import LeanSession
from tests.broker import PrivateBroker
from tests.gateway.test_mqtt_lean import take

pytestmark = [pytest.mark.broker]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path / "broker", anonymous=True)
    b.start()
    try:
        yield b
    finally:
        with contextlib.suppress(Exception):
            b.stop()


def test_round_trip_under_uvloop(broker: PrivateBroker) -> None:
    def settings(client_id: str) -> MqttSettings:
        return MqttSettings(host="127.0.0.1", port=broker.port, client_id=client_id)

    async def main() -> tuple[Inbound, Inbound]:
        async with LeanSession(settings("gw")) as gw, LeanSession(settings("pos-1")) as term:
            await gw.subscribe(["req/#"])
            await term.subscribe(["resp/#"])
            await term.publish("req/pos-1/purchase", b'{"a":1}')
            (request,) = await take(gw, 1)
            assert await gw.publish_many([("resp/pos-1/purchase", b"ok", b"c1")]) == [None]
            (reply,) = await take(term, 1)
            return request, reply

    request, reply = uvloop.run(main())
    assert (request.topic, request.payload) == ("req/pos-1/purchase", b'{"a":1}')
    assert (reply.payload, reply.correlation_data) == (b"ok", b"c1")
