"""The leader killed with SIGKILL: the other gateway takes over its duties (issue 12).

Two ``onecard serve`` processes on one PostgreSQL registry; a watcher follows the retained deny
list as a terminal does. After ``kill -9`` of the leader the survivor takes the advisory lock,
publishes a snapshot, and a card reported lost afterwards reaches the watcher as the next version:
no version is skipped, and taps of one terminal are answered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.services.base import Context, FixedClock
from gateway.services.center import CardCenter
from storage.sql import SqlRegistry
from tests.broker import free_port
from tests.cli import ONECARD
from tests.ha import site

pytestmark = [pytest.mark.postgres, pytest.mark.broker, pytest.mark.slow]


class DenyFollower:
    """Applies the retained snapshot and deltas as a terminal does; records any hole."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.gaps: list[tuple[int, int]] = []
        self.statuses: list[str] = []  # the shared gateway status, as terminals see it
        self.changed = asyncio.Event()

    def on(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        if topic == "onecard/v1/gateway/status":
            self.statuses.append(str(json.loads(payload)["state"]))
            return
        body: dict[str, Any] = json.loads(payload)
        if topic.endswith("/snapshot"):
            if self.version is None or body["version"] >= self.version:
                self.version = int(body["version"])
        elif self.version is not None:
            if body["from_version"] > self.version:
                self.gaps.append((self.version, int(body["from_version"])))
            self.version = max(self.version, int(body["to_version"]))
        self.changed.set()

    async def reach(self, version: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.version is None or self.version < version:
                self.changed.clear()
                await self.changed.wait()


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def _serve(config: Path, log: Any) -> subprocess.Popen[bytes]:
    # no stray settings, but the personal-data key the seeding used (issue 15)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ONECARD_") or k.startswith("ONECARD_PII_KEY")
    }
    return subprocess.Popen(
        [ONECARD, "serve", "--config", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )


async def _report_loss(url: str, card: site.Card) -> None:
    registry = await SqlRegistry.open(url)
    try:
        center = CardCenter.build(Context(registry=registry, clock=FixedClock(datetime.now(UTC))))
        await center.cards.report_loss(site.ADMIN, card.serial, presented_id=card.number)
    finally:
        await registry.close()


@pytest.mark.asyncio
async def test_leader_killed_duties_taken_over(tmp_path: Path) -> None:
    async with site.pg_database() as url:
        cards, tids = await site.seed(url, students=4, pos=1)
        base = await site.ledger(url)
        mq = site.broker(tmp_path / "broker", tids)
        mq.start()
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        logs: list[Any] = []
        try:
            for name in site.GATEWAYS:
                http = free_port()
                cfg = site.gateway_settings(url, mq, name)
                config = tmp_path / f"{name}.toml"
                config.write_text(
                    f'db = "{url}"\nevent_loop = "asyncio"\nscheduler_interval_s = 0.5\n'
                    f'[mqtt]\nhost = "{mq.host}"\nport = {mq.port}\nusername = "{name}"\n'
                    f'password = "pw-{name}"\nclient_id = "{name}"\n'
                    f'shared_group = "{cfg["mqtt"]["shared_group"]}"\n'
                    f"[http]\nport = {http}\n[denylist]\npoll_interval_ms = 20\n"
                    "[ha]\nleader_retry_s = 0.2\n"
                )
                log = (tmp_path / f"{name}.log").open("wb")
                logs.append(log)
                procs[name] = (_serve(config, log), http)
            deadline = time.monotonic() + 20
            leaders: dict[str, float | None] = {}
            while time.monotonic() < deadline:
                leaders = {n: _metric(p, "onecard_gateway_leader") for n, (_, p) in procs.items()}
                if sorted(v or 0 for v in leaders.values()) == [0, 1]:
                    break
                await asyncio.sleep(0.1)
            assert sorted(v or 0 for v in leaders.values()) == [0, 1], leaders
            leader = next(n for n, v in leaders.items() if v == 1)
            survivor = next(n for n in procs if n != leader)

            follower = DenyFollower()
            watcher = aiomqtt.Client(
                mq.host,
                mq.port,
                username="watcher",
                password="pw-watcher",
                identifier="watcher",
                protocol=aiomqtt.ProtocolVersion.V5,
            )
            async with watcher, site.terminal(mq, tids[0]) as pos:
                await watcher.subscribe("onecard/v1/blacklist/#", qos=1)
                await watcher.subscribe("onecard/v1/gateway/status", qos=1)

                async def follow() -> None:
                    async for m in watcher.messages:
                        assert isinstance(m.payload, bytes)
                        follower.on(m.topic.value, m.payload)

                reader = asyncio.create_task(follow())
                try:
                    await _report_loss(url, cards[0])
                    await follower.reach(1)
                    assert (
                        await pos.request(
                            "purchase", "before", {"card": cards[1].uid, "amount_fen": 100}
                        )
                    )["ok"]

                    os.kill(procs[leader][0].pid, signal.SIGKILL)
                    procs[leader][0].wait(5)
                    killed_at = time.monotonic()
                    # every tap of the terminal is answered again (by the survivor)
                    for i in range(6):
                        reply = await pos.request(
                            "purchase", f"after-{i}", {"card": cards[1].uid, "amount_fen": 100}
                        )
                        assert reply["ok"], reply
                    answered_after = time.monotonic() - killed_at
                    async with asyncio.timeout(10):
                        while _metric(procs[survivor][1], "onecard_gateway_leader") != 1:
                            await asyncio.sleep(0.05)
                    await _report_loss(url, cards[2])
                    await follower.reach(2)
                    assert follower.gaps == []
                    # the dead leader's last will said `offline`; the survivor said `online` again
                    assert "offline" in follower.statuses, follower.statuses
                    assert follower.statuses[-1] == "online", follower.statuses
                    refused = await pos.request(
                        "purchase", "lost", {"card": cards[2].uid, "amount_fen": 100}
                    )
                    assert refused["error"]["code"] == "card_lost"
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            assert answered_after < 10
            count, fen, total = await site.ledger(url)
            assert (count, fen) == (7, 700)  # none lost, none doubled
            assert total == base[2]
        finally:
            for proc, _ in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc, _ in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for log in logs:
                log.close()
            mq.stop()
