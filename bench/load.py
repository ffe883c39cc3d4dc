"""Load generator: POS terminals speaking the real contract (``purchase`` over MQTT v5, QoS 1).

Two shapes:

- **closed loop**: every terminal sends one purchase, waits for its reply, sends the next (the
  next request leaves from the reply callback: no task or future per request);
- **open loop**: purchases leave at a fixed rate, round robin over the terminals, whatever the
  replies do; latency is measured from the *intended* send time, so a stalled responder shows up
  as latency instead of silently lowering the offered load (no coordinated omission).

Every request has a unique ``request_id`` (``{terminal}-{run tag}-{seq}``); replies are matched by
it. A request unanswered for ``timeout_s`` is re-sent with the **same** ``request_id`` (terminal
contract §6). After the run, a sample of approved requests is re-sent unchanged: the gateway must
replay the stored reply (same ``transfer_id``), never debit twice.

Run as its own process: ``python -m bench.load SPEC.json OUT.json``; the spec is written by
:mod:`bench.run`. Every phase is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.mqtt_fast import MqttClient, connect_many

NS = 1_000_000_000


@dataclass(slots=True)
class Pending:
    terminal: int
    topic: str
    payload: bytes
    amount: int
    t0: int  # intended (open) or actual (closed) send time, perf_counter_ns
    last_sent: int
    retries: int = 0


@dataclass
class Stats:
    sent: int = 0
    answered: int = 0
    approved: int = 0
    approved_amount: int = 0
    declined: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    unavailable: int = 0
    stray: int = 0
    in_window: int = 0
    latencies_ns: list[int] = field(default_factory=list)


def percentiles(values_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/p999/max/mean in milliseconds (nearest-rank)."""
    if not values_ns:
        return {}
    ordered = sorted(values_ns)
    n = len(ordered)

    def rank(q: float) -> float:
        index = min(n - 1, max(0, int(q * n + 0.5) - 1))
        return ordered[index] / 1e6

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": ordered[-1] / 1e6,
        "mean": sum(ordered) / n / 1e6,
        "n": n,
    }


class Load:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.mode: str = spec["mode"]
        self.rng = random.Random(spec.get("seed", 1))
        self.cards: list[str] = spec["cards"]
        self.amount: int = int(spec.get("amount_fen", 1))
        self.tag: str = spec["tag"]
        self.timeout_ns = int(float(spec.get("timeout_s", 5.0)) * NS)
        self.terminals: list[dict[str, str]] = spec["terminals"]
        self.clients: list[MqttClient] = []
        self.topics: list[str] = []
        self.seq = [0] * len(self.terminals)
        self.pending: dict[str, Pending] = {}
        self.stats = Stats()
        self.sending = False
        self.window = (0, 0)  # perf_counter_ns bounds of the measured window
        self.approved: dict[str, tuple[bytes, str, str]] = {}  # rid -> (payload, topic, tid)
        self.transfer_ids: set[str] = set()
        self.duplicate_transfer_ids = 0
        self.replay_phase = False
        self.replay_results: dict[str, str] = {}
        self.idle = asyncio.Event()

    # ------------------------------------------------------------------ connections

    async def connect(self) -> None:
        host, port = self.spec["host"], int(self.spec["port"])
        for index, term in enumerate(self.terminals):
            client = MqttClient(
                term["id"],
                username=term["id"],
                password=term.get("password"),
                keepalive=60,
                on_message=self._callback(index),
            )
            self.clients.append(client)
            self.topics.append(f"onecard/v1/t/{term['id']}/req/purchase")
        await connect_many(self.clients, host, port)
        gate = asyncio.Semaphore(50)

        async def sub(client: MqttClient) -> None:
            async with gate:
                await client.subscribe(f"onecard/v1/t/{client.client_id}/resp/+", qos=1)

        await asyncio.gather(*(sub(c) for c in self.clients))

    async def close(self) -> None:
        await asyncio.gather(*(c.disconnect() for c in self.clients), return_exceptions=True)

    def _callback(self, index: int) -> Any:
        def on_message(topic: str, payload: bytes) -> None:
            self.on_reply(index, topic, payload)

        return on_message

    # ------------------------------------------------------------------ requests

    def send_new(self, index: int, t0: int | None = None) -> None:
        seq = self.seq[index] = self.seq[index] + 1
        tid = self.terminals[index]["id"]
        rid = f"{tid}-{self.tag}-{seq:07d}"
        card = self.rng.choice(self.cards)
        payload = (
            f'{{"v":1,"request_id":"{rid}","data":{{"card":"{card}","amount_fen":{self.amount}}}}}'
        ).encode()
        now = time.perf_counter_ns()
        topic = self.topics[index]
        self.pending[rid] = Pending(index, topic, payload, self.amount, t0 or now, now)
        self.clients[index].publish(topic, payload, qos=1)
        self.stats.sent += 1

    def on_reply(self, index: int, _topic: str, payload: bytes) -> None:
        now = time.perf_counter_ns()
        body = json.loads(payload)
        rid = body.get("request_id")
        if self.replay_phase:
            self._on_replay(rid, body)
            return
        if not body.get("ok") and (body.get("error") or {}).get("code") == "unavailable":
            # contract §6.1: not a decision, like no reply: the watchdog re-sends the same
            # request id (another copy may already be decided, e.g. by another gateway)
            self.stats.unavailable += 1
            return
        pending = self.pending.pop(rid, None) if isinstance(rid, str) else None
        if pending is None:
            self.stats.stray += 1  # a duplicate reply (QoS 1 is at least once)
            return
        stats = self.stats
        stats.answered += 1
        if self.timeline is not None:
            self.timeline.append((pending.t0, now, pending.retries))
        if self.window[0] <= now < self.window[1]:
            stats.in_window += 1
        if self.window[0] <= pending.t0 < self.window[1] and not pending.retries:
            stats.latencies_ns.append(now - pending.t0)
        if body.get("ok"):
            stats.approved += 1
            stats.approved_amount += pending.amount
            transfer = str((body.get("data") or {}).get("transfer_id"))
            if transfer in self.transfer_ids:
                self.duplicate_transfer_ids += 1
            self.transfer_ids.add(transfer)
            self.approved[rid] = (pending.payload, pending.topic, transfer)
        else:
            stats.declined += 1
            code = str((body.get("error") or {}).get("code"))
            stats.codes[code] = stats.codes.get(code, 0) + 1
        if self.mode == "closed" and self.sending:
            self.send_new(index)
        elif not self.pending:
            self.idle.set()

    async def watchdog(self) -> None:
        """Re-send (same request_id) what has waited longer than the timeout."""
        while True:
            await asyncio.sleep(0.5)
            now = time.perf_counter_ns()
            for pending in list(self.pending.values()):
                if now - pending.last_sent > self.timeout_ns:
                    pending.last_sent = now
                    pending.retries += 1
                    self.stats.retries += 1
                    self.clients[pending.terminal].publish(pending.topic, pending.payload, qos=1)

    # ------------------------------------------------------------------ shapes

    async def run_closed(self, warmup_s: float, seconds: float) -> None:
        start = time.perf_counter_ns()
        self.window = (start + int(warmup_s * NS), start + int((warmup_s + seconds) * NS))
        self.sending = True
        for index in range(len(self.clients)):
            self.send_new(index)
        await asyncio.sleep(warmup_s + seconds)
        self.sending = False

    async def run_open(
        self, rate: float, warmup_s: float, seconds: float, max_pending: int
    ) -> dict[str, float]:
        start = time.perf_counter_ns()
        self.window = (start + int(warmup_s * NS), start + int((warmup_s + seconds) * NS))
        total = int(rate * (warmup_s + seconds))
        interval_ns = NS / rate
        sent = 0
        max_lag_ns = 0
        count = len(self.clients)
        shed = 0
        while sent < total:
            now = time.perf_counter_ns()
            due = min(total, int((now - start) / interval_ns) + 1)
            while sent < due:
                intended = start + int(sent * interval_ns)
                max_lag_ns = max(max_lag_ns, now - intended)
                if len(self.pending) >= max_pending:
                    shed += 1  # the responder is this far behind: do not bury it further
                else:
                    self.send_new(sent % count, intended)
                sent += 1
            await asyncio.sleep(0.0005)
        return {"offered": total, "shed": shed, "max_send_lag_ms": max_lag_ns / 1e6}

    async def drain(self, seconds: float) -> None:
        if not self.pending:
            return
        self.idle.clear()
        try:
            async with asyncio.timeout(seconds):
                await self.idle.wait()
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ idempotency check

    def _on_replay(self, rid: Any, body: dict[str, Any]) -> None:
        if not isinstance(rid, str) or rid not in self.approved or rid in self.replay_results:
            return
        original = self.approved[rid][2]
        got = str((body.get("data") or {}).get("transfer_id")) if body.get("ok") else "refused"
        self.replay_results[rid] = "same" if got == original else f"differs:{got}"
        if len(self.replay_results) >= self._replay_target:
            self.idle.set()

    async def replay(self, count: int, seconds: float) -> dict[str, int]:
        """Re-send ``count`` approved requests unchanged; every reply must name the same
        transfer (the stored reply is replayed, nothing is debited again)."""
        sample = self.rng.sample(sorted(self.approved), min(count, len(self.approved)))
        self._replay_target = len(sample)
        if not sample:
            return {"sent": 0, "same": 0, "differs": 0, "unanswered": 0}
        self.replay_phase = True
        self.idle.clear()
        index_of = {t["id"]: i for i, t in enumerate(self.terminals)}
        for rid in sample:
            payload, topic, _ = self.approved[rid]
            tid = topic.split("/")[3]
            self.clients[index_of[tid]].publish(topic, payload, qos=1)
        try:
            async with asyncio.timeout(seconds):
                await self.idle.wait()
        except TimeoutError:
            pass
        same = sum(1 for v in self.replay_results.values() if v == "same")
        return {
            "sent": len(sample),
            "same": same,
            "differs": len(self.replay_results) - same,
            "unanswered": len(sample) - len(self.replay_results),
        }

    _replay_target = 0
    #: (first intended send, answered, retries) of every request, when the spec asks for it
    #: (bench/ha.py: how long after a gateway's kill -9 every terminal was answered again)
    timeline: list[tuple[int, int, int]] | None = None


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    load = Load(spec)
    if spec.get("timeline"):
        load.timeline = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with asyncio.timeout(float(spec.get("connect_timeout_s", 60))):
        await load.connect()
    dog = asyncio.create_task(load.watchdog())
    warmup = float(spec.get("warmup_s", 1.0))
    seconds = float(spec["seconds"])
    extra: dict[str, float] = {}
    wall0 = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if load.mode == "closed":
        await load.run_closed(warmup, seconds)
    else:
        extra = await load.run_open(
            float(spec["rate"]), warmup, seconds, int(spec.get("max_pending", 3000))
        )
    cpu2 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    # let in-flight requests finish; the watchdog keeps re-sending with the same request_id
    await load.drain(float(spec.get("drain_s", 20.0)))
    dog.cancel()
    replay = await load.replay(int(spec.get("replays", 50)), 10.0)
    await load.close()
    stats = load.stats
    window_s = (load.window[1] - load.window[0]) / NS
    return {
        "mode": load.mode,
        "terminals": len(load.terminals),
        "rate": spec.get("rate"),
        "warmup_s": warmup,
        "window_s": window_s,
        "sent": stats.sent,
        "answered": stats.answered,
        "throughput": stats.in_window / window_s if window_s else 0.0,
        "latency_ms": percentiles(stats.latencies_ns),
        "approved": stats.approved,
        "approved_amount_fen": stats.approved_amount,
        "declined": stats.declined,
        "codes": stats.codes,
        "retries": stats.retries,
        "unavailable_replies": stats.unavailable,
        "stray_replies": stats.stray,
        "unanswered": len(load.pending),
        "unique_transfer_ids": len(load.transfer_ids),
        "duplicate_transfer_ids": load.duplicate_transfer_ids,
        "replay": replay,
        "generator_cpu_s": (cpu2.ru_utime + cpu2.ru_stime) - (cpu1.ru_utime + cpu1.ru_stime),
        "generator_setup_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "wall_s": wall,
        **extra,
        **({"timeline_ns": load.timeline} if load.timeline is not None else {}),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m bench.load SPEC.json OUT.json\n")
        return 64
    spec = json.loads(Path(args[0]).read_text())
    if spec["host"] not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write("benchmarks use loopback addresses only\n")
        return 64
    result = asyncio.run(run(spec))
    Path(args[1]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
