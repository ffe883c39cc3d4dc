"""High availability on PostgreSQL (issue 12): one vs two gateways, and a kill -9 failover.

``python -m bench.ha [--quick]`` (its own command, not part of ``make bench``):

1. **One vs two gateways** on one fresh PostgreSQL database, both runs in the same invocation:
   ``onecard serve`` processes in one MQTT shared-subscription group on a private Mosquitto, a
   closed loop of POS terminals (``bench/load.py``) — decisions/s, p50/p99, and CPU µs per
   decision of each gateway process (from /proc), PostgreSQL's backends not included.
2. **Failover**: two gateways, an open loop at 1,000 taps/s; the leader is killed with SIGKILL a
   few seconds in. Terminals re-send an unanswered request after ``RETRY_S`` with the same
   request id (contract §6). Reported: the time from the kill until the last request that was
   outstanding at the kill or sent after it was answered ("every terminal answered again"), how
   many requests needed a re-send, and the registry check: approved replies = purchase transfers,
   their sum = the purse drop (zero lost, zero doubled debits), as bench/run.py verifies.

Writes ``bench/results/ha-<time>.json`` and prints a Markdown summary for docs/benchmarks.md.
Loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.fixture import (
    LOOPBACK,
    ROOT,
    GatewayProcess,
    cpu_seconds,
    pos_ids,
    seed_tap_campus,
    terminal_password,
)
from bench.run import _run_child, _verify, log, machine
from tests.broker import PrivateBroker

PG = os.environ.get("ONECARD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
GATEWAYS = ("gw1", "gw2")
#: terminals re-send an unanswered request after this (contract 1.1 §6.1: 5 s)
RETRY_S = 5.0


async def _fresh_database(name: str) -> str:
    conn = await asyncpg.connect(f"{PG}/postgres", timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{PG}/{name}"


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres", timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _seed(url: str, *, cards: int, pos: int) -> list[str]:
    seeded, _ = await seed_tap_campus(url, cards=cards, pos=pos)
    return [str(c["uid"]) for c in seeded]


async def _ledger(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        count, amount = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(amount), 0) FROM transfers WHERE kind = 'purchase'"
        )
        purses = await conn.fetchval(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE kind = 'purse'"
        )
        idem = await conn.fetchval("SELECT count(*) FROM idempotency WHERE op = 'purchase'")
        return {
            "purchases": int(count),
            "purchase_fen": int(amount),
            "purse_fen": int(purses),
            "idempotency": int(idem),
        }
    finally:
        await conn.close()


def _gateway(
    workdir: Path, url: str, broker: PrivateBroker, name: str, group: str
) -> GatewayProcess:
    gw = GatewayProcess(workdir / name, Path("unused"), broker)
    gw.config.write_text(
        f'db = "{url}"\nlog_level = "WARNING"\nscheduler_interval_s = 3600.0\n'
        f'[mqtt]\nhost = "{LOOPBACK}"\nport = {broker.port}\nusername = "{name}"\n'
        f'password = "{terminal_password(name)}"\nclient_id = "{name}"\n'
        f'shared_group = "{group}"\n'
        f'[http]\nhost = "{LOOPBACK}"\nport = {gw.http_port}\n'
        "[ha]\nleader_retry_s = 0.5\n"
    )
    return gw


def _leader(gateways: list[GatewayProcess]) -> GatewayProcess:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for gw in gateways:
            for line in gw.metrics().splitlines():
                if line.startswith("onecard_gateway_leader{") and line.endswith(" 1.0"):
                    return gw
        time.sleep(0.1)
    raise TimeoutError("no leader")


def _spec(
    broker: PrivateBroker, uids: list[str], tids: list[str], *, mode: str, **extra: Any
) -> dict[str, Any]:
    return {
        "host": LOOPBACK,
        "port": broker.port,
        "terminals": [{"id": t, "password": terminal_password(t)} for t in tids],
        "cards": uids,
        "tag": secrets.token_hex(3),
        "mode": mode,
        "timeout_s": RETRY_S,
        "drain_s": 30.0,
        "max_pending": 3000,
        "amount_fen": 1,
        "replays": 50,
        "seed": 7,
        **extra,
    }


def _throughput_point(
    workdir: Path,
    url: str,
    broker: PrivateBroker,
    uids: list[str],
    tids: list[str],
    count: int,
    *,
    seconds: float,
) -> dict[str, Any]:
    group = "bench-" + secrets.token_hex(4)
    gateways = [_gateway(workdir / f"x{count}", url, broker, n, group) for n in GATEWAYS[:count]]
    for gw in gateways:
        gw.start()
    try:
        for gw in gateways:
            gw.wait_ready(60)
        before = asyncio.run(_ledger(url))
        cpu0 = [cpu_seconds(gw.pid) for gw in gateways]
        spec = _spec(broker, uids, tids, mode="closed", seconds=seconds, warmup_s=2.0)
        result = _run_child("bench.load", spec, workdir, seconds + 120)
        cpu1 = [cpu_seconds(gw.pid) for gw in gateways]
        after = asyncio.run(_ledger(url))
    finally:
        for gw in gateways:
            gw.stop()
    decisions = max(1, int(result["answered"]))
    return {
        "gateways": count,
        "terminals": len(tids),
        "throughput": result["throughput"],
        "latency_ms": result["latency_ms"],
        "cpu_us_per_decision": [
            round((b - a) / decisions * 1e6 * count, 1) for a, b in zip(cpu0, cpu1, strict=True)
        ],
        "cpu_note": "each process's CPU over the whole run / its share (1/N) of the decisions",
        "verify": _verify(before, after, result),
        "retries": result["retries"],
        "unavailable_replies": result["unavailable_replies"],
    }


def _failover_point(
    workdir: Path,
    url: str,
    broker: PrivateBroker,
    uids: list[str],
    tids: list[str],
    *,
    seconds: float,
    kill_after: float,
    rate: int,
) -> dict[str, Any]:
    group = "bench-" + secrets.token_hex(4)
    gateways = [_gateway(workdir / "failover", url, broker, n, group) for n in GATEWAYS]
    for gw in gateways:
        gw.start()
    try:
        for gw in gateways:
            gw.wait_ready(60)
        leader = _leader(gateways)
        before = asyncio.run(_ledger(url))
        spec = _spec(
            broker, uids, tids, mode="open", rate=rate, seconds=seconds, warmup_s=1.0, timeline=True
        )
        spec_path = workdir / "failover-spec.json"
        out_path = workdir / "failover-out.json"
        spec_path.write_text(json.dumps(spec))
        child = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "bench.load", str(spec_path), str(out_path)], cwd=ROOT
        )
        time.sleep(kill_after + 3.0)  # connect (~2 s for 100 clients) + warm-up + kill_after
        killed_ns = time.perf_counter_ns()
        assert leader.proc is not None
        os.kill(leader.pid, signal.SIGKILL)
        leader.proc.wait(10)
        child.wait(seconds + 120)
        result = json.loads(out_path.read_text())
        after = asyncio.run(_ledger(url))
    finally:
        for gw in gateways:
            gw.stop()
    timeline: list[list[int]] = result.pop("timeline_ns")
    affected = [
        (t0, done, retries)
        for t0, done, retries in timeline
        if done >= killed_ns and (t0 < killed_ns or retries)
    ]
    last = max((done for _, done, _ in affected), default=killed_ns)
    return {
        "rate": rate,
        "terminals": len(tids),
        "retry_s": RETRY_S,
        "killed": "leader",
        "all_answered_after_kill_s": round((last - killed_ns) / 1e9, 3),
        "requests_resent": sum(1 for *_, r in timeline if r),
        "max_latency_ms": round(max((d - t) for t, d, _ in timeline) / 1e6, 1),
        "latency_ms": result["latency_ms"],
        "unanswered": result["unanswered"],
        "unavailable_replies": result["unavailable_replies"],
        "verify": _verify(before, after, result),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ha", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short points (~2 minutes)")
    args = parser.parse_args(argv)
    seconds = 8.0 if args.quick else 20.0
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M%S")
    workdir = ROOT / "var" / "bench-ha" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"onecard_bench_ha_{secrets.token_hex(3)}"
    url = asyncio.run(_fresh_database(name))
    tids = pos_ids(100)
    users = {t: terminal_password(t) for t in tids}
    users.update({g: terminal_password(g) for g in GATEWAYS})
    broker = PrivateBroker(workdir / "broker", users=users, gateway_users=GATEWAYS)
    broker.start()
    try:
        log("seeding PostgreSQL")
        uids = asyncio.run(_seed(url, cards=2000, pos=len(tids)))
        points = []
        for count in (1, 2):
            log(f"closed loop, {count} gateway(s)")
            points.append(
                _throughput_point(workdir, url, broker, uids, tids[:50], count, seconds=seconds)
            )
        log("failover at 1,000 taps/s")
        failover = _failover_point(
            workdir, url, broker, uids, tids, seconds=seconds + 4, kill_after=3.0, rate=1000
        )
    finally:
        broker.stop()
        asyncio.run(_drop_database(name))
    report = {
        "command": "python -m bench.ha" + (" --quick" if args.quick else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "took_s": round(time.perf_counter() - started, 1),
        "throughput": points,
        "failover": failover,
    }
    out = ROOT / "bench" / "results" / f"ha-{stamp}.json"
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
