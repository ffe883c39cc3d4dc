"""The echo floor: the least a responder on the same Mosquitto can do per tap.

It subscribes to every terminal request (``onecard/v1/t/+/req/+``, QoS 1) like the gateway,
decodes the JSON request, and publishes a reply of the purchase-reply shape on
``onecard/v1/t/{terminal}/resp/{op}`` at QoS 1, all from the receive callback of
:mod:`bench.mqtt_fast` (the fastest Python MQTT client measured here, FIELD-NOTES). No
decision, no database: gateway throughput divided by this is the share of the floor we reach.

Run as its own process: ``python -m bench.floor --port P [--username U --password W]``. It
prints ``ready`` once subscribed and exits on SIGTERM/SIGINT or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from bench.mqtt_fast import MqttClient

REQUEST_FILTER = "onecard/v1/t/+/req/+"


class EchoFloor:
    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.answered = 0
        self.balance = 10_000_000
        client.on_message = self.on_message

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 6 or parts[4] != "req":
            return
        body = json.loads(payload)
        rid = body.get("request_id")
        data = body.get("data") or {}
        self.answered += 1
        self.balance -= int(data.get("amount_fen", 0) or 0)
        reply = {
            "v": 1,
            "request_id": rid,
            "ok": True,
            "data": {
                "balance_after_fen": self.balance,
                "transfer_id": str(self.answered),
            },
        }
        out = json.dumps(reply, separators=(",", ":")).encode()
        self.client.publish(f"onecard/v1/t/{parts[3]}/resp/{parts[5]}", out, qos=1)


async def serve(
    host: str, port: int, username: str | None, password: str | None, max_seconds: float
) -> int:
    client = MqttClient("bench-floor", username=username, password=password, keepalive=30)
    floor = EchoFloor(client)
    await client.connect(host, port)
    await client.subscribe(REQUEST_FILTER, qos=1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    assert client.closed is not None
    closed: asyncio.Future[None] = client.closed
    stopper: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
    waits: set[asyncio.Future[Any]] = {closed, stopper}
    await asyncio.wait(waits, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    await client.disconnect()
    sys.stdout.write(f"answered {floor.answered}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("benchmarks use loopback addresses only")
    return asyncio.run(serve(args.host, args.port, args.username, args.password, args.max_seconds))


if __name__ == "__main__":
    raise SystemExit(main())
