"""The well-behaved terminal: a POS that keeps tapping (1 fen purchases on its own card) while
the fuzzers run, in its own process so its latency is the gateway's, not the fuzzer's CPU.

``python -m tests.fuzz.tapper --port P --terminal pos-good --password X --card UID
--duration 30 --out result.json`` — one request at a time, as the contract asks (§4): publish,
wait for the reply (5 s), then the next tap after ``--interval``. A tap without a reply within
5 s is a failure and is retried with the same request id, as a real terminal does. Any message
on its resp/ topics that answers none of its requests is counted as *unsolicited* (a reply the
gateway routed to the wrong terminal); a second reply to a retried request is only *late*.
Writes a JSON summary to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
REPLY_TIMEOUT_S = 5.0


async def tap_loop(args: argparse.Namespace) -> dict[str, Any]:
    tid = args.terminal
    latencies: list[float] = []
    failures: list[str] = []
    unsolicited: list[str] = []
    asked: set[str] = set()  # every request id sent: a late reply to a retry is not unsolicited
    late = 0
    debited = 0
    waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
    client = aiomqtt.Client(
        args.host,
        args.port,
        username=tid,
        password=args.password,
        identifier=tid,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    )

    async def read() -> None:
        nonlocal late
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            rid = None
            try:
                body = json.loads(payload)
                rid = str(body.get("request_id"))
                future = waiting.pop(rid, None)
            except (ValueError, AttributeError):
                future = None
            if future is None or future.done():
                if rid in asked:
                    late += 1  # the first reply to a request that was retried meanwhile
                else:
                    unsolicited.append(f"{message.topic.value}: {payload[:200]!r}")
                continue
            future.set_result(body)

    async def request(op: str, rid: str, data: dict[str, Any]) -> dict[str, Any] | None:
        body = json.dumps({"v": 1, "request_id": rid, "data": data})
        for attempt in range(3):
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            waiting[rid] = future
            asked.add(rid)
            start = time.perf_counter()
            await client.publish(f"onecard/v1/t/{tid}/req/{op}", body, qos=1)
            try:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    reply = await future
            except TimeoutError:
                failures.append(f"{op} {rid}: no reply within {REPLY_TIMEOUT_S} s (try {attempt})")
                continue
            latencies.append(time.perf_counter() - start)
            return reply
        return None

    async with client:
        await client.subscribe(f"onecard/v1/t/{tid}/resp/+", qos=1)
        reader = asyncio.create_task(read())
        try:
            hello = await request(
                "hello",
                f"{tid}-hello",
                {"kind": "pos", "firmware": "fz-good 1", "denylist_version": 0},
            )
            if hello is None or not hello.get("ok"):
                failures.append(f"hello: {hello}")
            latencies.clear()
            deadline = time.monotonic() + args.duration
            n = 0
            while time.monotonic() < deadline:
                n += 1
                rid = f"{tid}-{n:08d}"
                reply = await request("purchase", rid, {"card": args.card, "amount_fen": 1})
                if reply is not None:
                    if reply.get("ok"):
                        debited += 1
                    else:
                        failures.append(f"purchase {rid}: {reply.get('error')}")
                await asyncio.sleep(args.interval)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    latencies.sort()
    return {
        "taps": len(latencies),
        "debited_fen": debited,
        "failures": failures,
        "unsolicited": unsolicited,
        "late_replies": late,
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--terminal", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--card", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = asyncio.run(tap_loop(args))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
