"""Scale: a registry with 1,000,000 cards and 100,000 deny entries.

The registry is bulk-loaded with stdlib ``sqlite3.executemany`` into a migrated schema
(:func:`bench.fixture.bulk_scale_registry`). Then the gateway runs as its own process
(``onecard serve``) on a private broker and we measure:

- start-to-ready: from ``Popen`` to the first ``/readyz`` 200 (it loads the deny log, builds the
  in-memory set, connects and publishes the retained snapshot before it is ready);
- RSS (VmRSS after ready, and the VmHWM peak) from ``/proc``;
- snapshot bytes: the retained ``onecard/v1/blacklist/snapshot`` payload a terminal receives;
- delta bytes: one more loss appended to the deny log from outside; the delta the gateway
  publishes for it (and how long that took from the commit).

The baseline in the same run is the same gateway on an *empty* migrated registry: ready time
and RSS ratios against it separate the data's cost from Python's start-up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.fixture import (
    GatewayProcess,
    add_deny_change,
    bulk_scale_registry,
    door_ids,
    rss_kib,
    start_broker,
    terminal_password,
)
from bench.mqtt_fast import MqttClient
from protocol.wire import DENYLIST_DELTA_TOPIC, DENYLIST_SNAPSHOT_TOPIC


async def _watch(port: int, db: Path, card_id: int | None, limit_s: float = 60.0) -> dict[str, Any]:
    """Read the retained snapshot; optionally append one loss and read the delta it causes."""
    tid = door_ids(1)[0]
    got: dict[str, tuple[int, int]] = {}  # topic -> (bytes, perf_counter_ns)
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        if payload:
            got[topic] = (len(payload), time.perf_counter_ns())
            arrived.set()

    client = MqttClient(tid, username=tid, password=terminal_password(tid), on_message=on_message)
    await client.connect("127.0.0.1", port)
    await client.subscribe([DENYLIST_SNAPSHOT_TOPIC, DENYLIST_DELTA_TOPIC], qos=1)
    out: dict[str, Any] = {}
    try:
        async with asyncio.timeout(limit_s):
            while DENYLIST_SNAPSHOT_TOPIC not in got:
                arrived.clear()
                await arrived.wait()
        out["snapshot_bytes"] = got[DENYLIST_SNAPSHOT_TOPIC][0]
        if card_id is not None:
            committed = time.perf_counter_ns()
            await asyncio.to_thread(add_deny_change, db, card_id)
            async with asyncio.timeout(limit_s):
                while DENYLIST_DELTA_TOPIC not in got:
                    arrived.clear()
                    await arrived.wait()
            size, at = got[DENYLIST_DELTA_TOPIC]
            out["delta_bytes"] = size
            out["delta_after_commit_ms"] = (at - committed) / 1e6
    finally:
        await client.disconnect()
    return out


def _gateway_run(workdir: Path, db: Path, card_id: int | None) -> dict[str, Any]:
    broker = start_broker(workdir / "broker", door_ids(1))
    gateway = GatewayProcess(workdir / "gateway", db, broker)
    try:
        gateway.start()
        ready = gateway.wait_ready(timeout=180.0)
        rss = rss_kib(gateway.pid)
        watched = asyncio.run(_watch(broker.port, db, card_id))
        rss_after = rss_kib(gateway.pid)
        return {
            "ready_s": ready,
            "rss_mib": rss.get("VmRSS", 0) / 1024,
            "rss_peak_mib": max(rss.get("VmHWM", 0), rss_after.get("VmHWM", 0)) / 1024,
            **watched,
        }
    finally:
        gateway.stop()
        broker.stop()


def run(workdir: Path, *, cards: int, denied: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("empty.sqlite3", "scale.sqlite3"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{workdir / name}{suffix}").unlink(missing_ok=True)
    empty = workdir / "empty.sqlite3"
    bulk_scale_registry(empty, cards=0, denied=0)
    baseline = _gateway_run(workdir / "baseline", empty, None)
    db = workdir / "scale.sqlite3"
    seeded = bulk_scale_registry(db, cards=cards, denied=denied)
    measured = _gateway_run(workdir / "scaled", db, card_id=denied + 1)
    return {
        "cards": cards,
        "denied": denied,
        "seed": seeded,
        "baseline_empty": baseline,
        **measured,
        "snapshot_bytes_per_card": measured.get("snapshot_bytes", 0) / cards if cards else 0,
        "snapshot_bytes_per_entry": measured.get("snapshot_bytes", 0) / denied if denied else 0,
        "ready_vs_empty": measured["ready_s"] / baseline["ready_s"],
        "rss_vs_empty": measured["rss_mib"] / baseline["rss_mib"] if baseline["rss_mib"] else None,
    }
