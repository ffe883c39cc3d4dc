"""Deny-list propagation: from a kiosk loss report to every connected terminal holding it.

Terminals (role ``terminals``, spread over a few processes) subscribe to the retained snapshot
and the delta topic (QoS 1) and keep a :class:`protocol.wire.DenyList` each, as the contract
says (snapshot, then deltas in order; a gap waits for the next snapshot); each records when it
first held every version. A kiosk (role ``kiosk``, its own process) logs a student in and sends
``report_loss``; the reply names the deny-list version. Timestamps are ``time.monotonic_ns``
(CLOCK_MONOTONIC: one clock for every process on the machine); :func:`combine` joins them.

Two clocks start per round: the kiosk's *send* (the whole path: decision, commit, the gateway's
deny-list watcher, publish, fan-out, parse, apply) and the kiosk's *reply* (the issue's
definition; the gateway publishes before it replies, so terminals can be earlier than the reply
and the figure can be negative). Beside each round, the fan-out floor: another client on the
same broker publishes a payload of the delta's size to the same terminals (topic
``onecard/v1/blacklist/bench-floor``); its last arrival is what no gateway can beat.

``python -m bench.propagation terminals|kiosk SPEC.json OUT.json`` (specs from
:mod:`bench.run`). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.load import percentiles
from bench.mqtt_fast import MqttClient, connect_many
from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    DenyDelta,
    DenyList,
    DenySnapshot,
)
from protocol.wire.exceptions import DenyListGap

FLOOR_TOPIC = "onecard/v1/blacklist/bench-floor"


class Terminal:
    """One terminal's deny-list copy; records when each version was reached."""

    def __init__(self, terminal_id: str, password: str) -> None:
        self.id = terminal_id
        self.deny = DenyList()
        self.history: list[tuple[int, int]] = []  # (version, monotonic_ns)
        self.floor: dict[int, int] = {}  # floor round -> arrival
        self.gaps = 0
        self.last_delta_bytes = 0
        self.client = MqttClient(
            terminal_id,
            username=terminal_id,
            password=password,
            keepalive=60,
            on_message=self.on_message,
        )

    def on_message(self, topic: str, payload: bytes) -> None:
        now = time.monotonic_ns()
        if topic == FLOOR_TOPIC:
            self.floor[int(json.loads(payload)["floor"])] = now
            return
        if not payload:
            return  # a cleared retained delta
        before = self.deny.version
        if topic == DENYLIST_SNAPSHOT_TOPIC:
            snapshot = DenySnapshot.model_validate_json(payload)
            if snapshot.version > self.deny.version:
                self.deny = DenyList.from_snapshot(snapshot)
        elif topic == DENYLIST_DELTA_TOPIC:
            self.last_delta_bytes = len(payload)
            delta = DenyDelta.model_validate_json(payload)
            try:
                self.deny.apply(delta)
            except DenyListGap:
                self.gaps += 1  # the next snapshot brings us back
        if self.deny.version > before:
            self.history.append((self.deny.version, time.monotonic_ns()))

    def reached(self, version: int) -> int | None:
        for held, at in self.history:
            if held >= version:
                return at
        return None


class Kiosk:
    def __init__(self, kiosk_id: str, password: str) -> None:
        self.id = kiosk_id
        self.client = MqttClient(
            kiosk_id, username=kiosk_id, password=password, on_message=self.on_message
        )
        self.waiting: dict[str, asyncio.Future[tuple[dict[str, Any], int]]] = {}
        self.seq = 0
        self.tag = f"{int(time.time()) % 100_000:05d}"

    def on_message(self, topic: str, payload: bytes) -> None:  # noqa: ARG002
        now = time.monotonic_ns()
        body = json.loads(payload)
        future = self.waiting.pop(str(body.get("request_id")), None)
        if future is not None and not future.done():
            future.set_result((body, now))

    async def request(
        self, op: str, data: dict[str, Any], limit_s: float = 10.0
    ) -> tuple[dict[str, Any], int, int]:
        """(reply, sent at, replied at) in monotonic_ns (system-wide)."""
        self.seq += 1
        rid = f"{self.id}-p{self.tag}-{self.seq:05d}"
        future: asyncio.Future[tuple[dict[str, Any], int]] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiting[rid] = future
        body = json.dumps({"v": 1, "request_id": rid, "data": data}).encode()
        sent = time.monotonic_ns()
        self.client.publish(f"onecard/v1/t/{self.id}/req/{op}", body, qos=1)
        async with asyncio.timeout(limit_s):
            reply, at = await future
        return reply, sent, at


async def _until(predicate: Any, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.002)
    return bool(predicate())


async def _terminals(spec: dict[str, Any]) -> dict[str, Any]:
    """Role ``terminals``: connect, sync, print ``ready``, hold the lists until stdin says
    ``stop`` (or ``max_seconds``), then write every terminal's version history."""
    host, port = spec["host"], int(spec["port"])
    terminals = [Terminal(t["id"], t["password"]) for t in spec["terminals"]]
    started = time.perf_counter()
    async with asyncio.timeout(120):
        await connect_many([t.client for t in terminals], host, port)
        gate = asyncio.Semaphore(50)

        async def sub(t: Terminal) -> None:
            async with gate:
                await t.client.subscribe(
                    [DENYLIST_SNAPSHOT_TOPIC, DENYLIST_DELTA_TOPIC, FLOOR_TOPIC], qos=1
                )

        await asyncio.gather(*(sub(t) for t in terminals))
    connect_s = time.perf_counter() - started
    synced = await _until(lambda: all(t.history for t in terminals), 30.0)
    sys.stdout.write(f"ready {int(synced)}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(float(spec.get("max_seconds", 600))):
            while (line := await reader.readline()) and line.strip() != b"stop":
                pass
    await asyncio.gather(*(t.client.disconnect() for t in terminals), return_exceptions=True)
    return {
        "connect_s": connect_s,
        "terminals": {
            t.id: {"history": t.history, "floor": t.floor, "gaps": t.gaps} for t in terminals
        },
    }


async def _kiosk(spec: dict[str, Any]) -> dict[str, Any]:
    """Role ``kiosk``: per round, log a student in, report the card lost (timestamps of send
    and reply), let it settle, then publish the floor marker of the delta's size."""
    host, port = spec["host"], int(spec["port"])
    kiosk = Kiosk(spec["kiosk"]["id"], spec["kiosk"]["password"])
    delta_size = [200]

    def on_message(topic: str, payload: bytes) -> None:
        if topic == DENYLIST_DELTA_TOPIC and payload:
            delta_size[0] = len(payload)
        elif "/resp/" in topic:
            kiosk.on_message(topic, payload)

    kiosk.client.on_message = on_message
    publisher = MqttClient(
        spec["publisher"]["id"],
        username=spec["publisher"]["id"],
        password=spec["publisher"]["password"],
    )
    async with asyncio.timeout(60):
        await kiosk.client.connect(host, port)
        await kiosk.client.subscribe(
            [f"onecard/v1/t/{kiosk.id}/resp/+", DENYLIST_DELTA_TOPIC], qos=1
        )
        await publisher.connect(host, port)
    settle = float(spec.get("settle_s", 1.0))
    rounds: list[dict[str, Any]] = []
    for index, student in enumerate(spec["students"][: int(spec["rounds"])]):
        login, _, _ = await kiosk.request(
            "login", {"number": student["number"], "password": student["password"]}
        )
        if not login.get("ok"):
            rounds.append({"round": index, "error": login.get("error")})
            continue
        await asyncio.sleep(0.05)
        reply, sent, replied = await kiosk.request(
            "report_loss", {"session": login["data"]["session"], "card_serial": None}
        )
        if not reply.get("ok"):
            rounds.append({"round": index, "error": reply.get("error")})
            continue
        await asyncio.sleep(settle)
        marker = json.dumps({"floor": index, "pad": "x" * max(0, delta_size[0] - 25)}).encode()
        published = time.monotonic_ns()
        publisher.publish(FLOOR_TOPIC, marker, qos=1)
        await asyncio.sleep(settle)
        rounds.append(
            {
                "round": index,
                "version": int(reply["data"]["denylist_version"]),
                "sent": sent,
                "replied": replied,
                "floor_published": published,
                "delta_bytes": delta_size[0],
                "terminals_applied_in_reply": reply["data"].get("terminals_applied"),
            }
        )
    await asyncio.gather(kiosk.client.disconnect(), publisher.disconnect(), return_exceptions=True)
    return {"rounds": rounds}


def _reached(history: list[list[int]], version: int) -> int | None:
    for held, at in history:
        if held >= version:
            return int(at)
    return None


def combine(kiosk: dict[str, Any], workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-terminal latencies from the kiosk's rounds and the terminals' histories."""
    terminals: dict[str, Any] = {}
    for worker in workers:
        terminals.update(worker["terminals"])
    from_reply: list[int] = []
    from_send: list[int] = []
    floor: list[int] = []
    rounds: list[dict[str, Any]] = []
    incomplete = 0
    for r in kiosk["rounds"]:
        if "error" in r:
            rounds.append(r)
            continue
        arrivals = [
            a for a in (_reached(t["history"], r["version"]) for t in terminals.values()) if a
        ]
        floors = [
            int(t["floor"][str(r["round"])]) - r["floor_published"]
            for t in terminals.values()
            if str(r["round"]) in t["floor"]
        ]
        if len(arrivals) < len(terminals) or len(floors) < len(terminals):
            incomplete += 1
        from_reply += [a - r["replied"] for a in arrivals]
        from_send += [a - r["sent"] for a in arrivals]
        floor += floors
        last = max(arrivals, default=r["replied"])
        rounds.append(
            {
                "round": r["round"],
                "version": r["version"],
                "applied": len(arrivals),
                "reply_ms": (r["replied"] - r["sent"]) / 1e6,
                "last_from_send_ms": (last - r["sent"]) / 1e6,
                "last_from_reply_ms": (last - r["replied"]) / 1e6,
                "floor_last_ms": max(floors) / 1e6 if floors else None,
                "delta_bytes": r["delta_bytes"],
            }
        )
    good = [r for r in rounds if "error" not in r]
    return {
        "terminals": len(terminals),
        "processes": len(workers),
        "rounds": len(rounds),
        "rounds_ok": len(good),
        "incomplete_rounds": incomplete,
        "connect_s": max((w["connect_s"] for w in workers), default=0.0),
        "from_reply_ms": percentiles(from_reply),
        "from_send_ms": percentiles(from_send),
        "floor_ms": percentiles(floor),
        "reply_ms": percentiles([int(r["reply_ms"] * 1e6) for r in good]),
        "round_last_from_reply_ms": percentiles([int(r["last_from_reply_ms"] * 1e6) for r in good]),
        "gaps": sum(t["gaps"] for t in terminals.values()),
        "per_round": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in ("terminals", "kiosk"):
        sys.stderr.write("usage: python -m bench.propagation terminals|kiosk SPEC.json OUT.json\n")
        return 64
    spec = json.loads(Path(args[1]).read_text())
    if spec["host"] not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write("benchmarks use loopback addresses only\n")
        return 64
    role = _terminals if args[0] == "terminals" else _kiosk
    result = asyncio.run(role(spec))
    Path(args[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
