"""Two gateways on one PostgreSQL registry behind a Mosquitto shared subscription (issue 12).

Mosquitto 2.0 deals ``$share`` messages round-robin, so one terminal's consecutive requests,
its retries and its offline batches land on both gateways; these tests make that happen on
purpose and check the registry: one debit per request id, equal replies, every offline sale
settled exactly once, balances conserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from gateway.bootstrap import open_gateway
from gateway.config import load_settings
from gateway.runtime import Gateway
from gateway.services.base import Context, FixedClock
from gateway.services.center import CardCenter
from protocol.wire.denylist import DenyDelta, DenySnapshot
from storage.listen import PgChangeListener
from storage.sql import SqlRegistry
from tests.broker import PrivateBroker
from tests.ha import site

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.broker,
    pytest.mark.asyncio(loop_scope="module"),
]


@dataclass
class Pair:
    url: str
    broker: PrivateBroker
    gateways: list[Gateway]
    cards: list[site.Card]
    tids: list[str]

    def jobs(self) -> list[int]:
        return [int(getattr(g.executor, "jobs", 0)) for g in self.gateways]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    directory: Path = tmp_path_factory.mktemp("ha")
    async with site.pg_database() as url:
        cards, tids = await site.seed(url, students=6, pos=2)
        mq = site.broker(directory / "broker", tids)
        mq.start()
        async with contextlib.AsyncExitStack() as stack:
            gateways = []
            for name in site.GATEWAYS:
                settings = load_settings(None, **site.gateway_settings(url, mq, name))
                gateways.append(await stack.enter_async_context(open_gateway(settings)))
            tasks = [
                asyncio.create_task(g.run(), name=f"gateway-{i}") for i, g in enumerate(gateways)
            ]
            try:
                async with asyncio.timeout(15):
                    while not all(g.ready for g in gateways) or not any(
                        g.leader.is_leader for g in gateways
                    ):
                        await asyncio.sleep(0.02)
                yield Pair(url, mq, gateways, cards, tids)
            finally:
                for g in gateways:
                    g.stop.set()
                async with asyncio.timeout(20):
                    await asyncio.gather(*tasks)
                mq.stop()


async def test_exactly_one_leader_and_both_take_requests(pair: Pair) -> None:
    leaders = [g.leader.is_leader for g in pair.gateways]
    assert leaders.count(True) == 1, leaders
    before = pair.jobs()
    card = pair.cards[0]
    async with site.terminal(pair.broker, "pos-001") as pos:
        balances = []
        for i in range(8):  # consecutive requests of one terminal alternate between gateways
            reply = await pos.request(
                "purchase", f"alt-{i}", {"card": card.uid, "amount_fen": 100 + i}
            )
            assert reply["ok"], reply
            balances.append(reply["data"]["balance_after_fen"])
    after = pair.jobs()
    assert all(a - b >= 3 for a, b in zip(after, before, strict=True)), (before, after)
    # each reply saw the debits of the requests before it, whichever gateway decided them
    expected = [site.START_FEN - sum(100 + j for j in range(i + 1)) for i in range(8)]
    assert balances == expected


async def test_same_request_id_on_both_gateways_debits_once(pair: Pair) -> None:
    card = pair.cards[1]
    before = await site.ledger(pair.url)
    async with site.terminal(pair.broker, "pos-002") as pos:
        for i in range(10):
            rid = f"dup-{i}"
            data = {"card": card.uid, "amount_fen": 250}
            # back to back: round-robin hands one copy to each gateway, decided concurrently
            await asyncio.gather(
                pos.publish("purchase", rid, data), pos.publish("purchase", rid, data)
            )
            replies = await pos.wait(rid, count=2)
            assert replies[0] == replies[1], replies
            assert replies[0]["ok"], replies
    count, fen, total = await site.ledger(pair.url)
    assert (count - before[0], fen - before[1]) == (10, 2500)
    assert total == before[2]  # conservation: every debit has its credit
    replays = sum(g.metrics.replays._value.get() for g in pair.gateways)
    assert replays >= 1


async def test_offline_batch_split_across_both_settles_each_sale_once(pair: Pair) -> None:
    card = pair.cards[2]
    now_ms = int(time.time() * 1000) - 60_000
    sales = [
        {
            "seq": seq,
            "card": card.uid,
            "amount_fen": 300,
            "at_ms": now_ms + seq,
            "denylist_version": 0,
        }
        for seq in range(1, 9)
    ]
    before = await site.ledger(pair.url)
    async with site.terminal(pair.broker, "pos-001") as pos:
        # the backlog in two halves and the whole again, all at once: two gateways race on it
        uploads = [("up-a", sales[:4]), ("up-b", sales[4:]), ("up-all", sales)]
        await asyncio.gather(
            *(pos.publish("offline_upload", rid, {"sales": part}) for rid, part in uploads)
        )
        replies = {rid: (await pos.wait(rid))[0] for rid, _ in uploads}
    accepted = sorted(seq for r in replies.values() if r["ok"] for seq in r["data"]["accepted"])
    assert accepted == list(range(1, 9)), replies
    duplicates = sorted(seq for r in replies.values() for seq in r["data"]["duplicates"])
    assert duplicates == list(range(1, 9))
    count, fen, total = await site.ledger(pair.url)
    assert (count - before[0], fen - before[1]) == (8, 2400)
    assert total == before[2]


async def test_a_counter_loss_report_reaches_both_gateways(pair: Pair) -> None:
    card = pair.cards[3]
    registry = await SqlRegistry.open(pair.url)
    try:
        center = CardCenter.build(Context(registry=registry, clock=FixedClock(datetime.now(UTC))))
        lost = await center.cards.report_loss(site.ADMIN, card.serial, presented_id=card.number)
    finally:
        await registry.close()
    async with asyncio.timeout(5):
        while any(g.deny.version < 1 for g in pair.gateways):
            await asyncio.sleep(0.02)
    before = pair.jobs()
    async with site.terminal(pair.broker, "pos-002") as pos:
        for i in range(4):  # alternating: each gateway refuses it
            reply = await pos.request("purchase", f"lost-{i}", {"card": card.uid, "amount_fen": 1})
            assert reply["error"]["code"] == "card_lost", reply
    assert all(a > b for a, b in zip(pair.jobs(), before, strict=True))
    assert lost.state.value == "lost"
    # the follower keeps no delta of its own: leading one day, it publishes a snapshot first
    follower = next(g for g in pair.gateways if not g.leader.is_leader)
    assert follower.deny.pending == [] and follower.deny.needs_snapshot
    assert follower.deny.cumulative_delta() is None


async def test_each_instance_has_its_retained_status_and_one_is_leader(pair: Pair) -> None:
    seen: dict[str, dict[str, Any]] = {}
    client = aiomqtt.Client(
        pair.broker.host,
        pair.broker.port,
        username="watcher",
        password="pw-watcher",
        identifier="watcher",
        protocol=aiomqtt.ProtocolVersion.V5,
    )
    async with client:
        await client.subscribe("onecard/v1/gateway/instance/+/status", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                seen[body["instance"]] = body
                if len(seen) == len(site.GATEWAYS):
                    break
    assert sorted(seen) == sorted(site.GATEWAYS)
    assert all(s["state"] == "online" for s in seen.values())
    assert [s["leader"] for s in seen.values()].count(True) == 1


def _decided(gateway: Gateway, op: str) -> float:
    """Requests of ``op`` this instance decided (its own metrics)."""
    return sum(
        sample.value
        for metric in gateway.metrics.registry.collect()
        if metric.name == "onecard_decisions"
        for sample in metric.samples
        if sample.name == "onecard_decisions_total" and sample.labels.get("op") == op
    )


async def test_a_kiosk_loss_answered_by_the_follower_reaches_a_pos_at_once(pair: Pair) -> None:
    """LOSS-1 at a kiosk whose report_loss the FOLLOWER decides: the leader hears of the commit
    through NOTIFY (LISTEN, not its poll), publishes the delta, and a POS holding the deny list
    has the card within the single-gateway budget (the reply within applied_wait_ms + margin,
    the POS's copy within 1 s of it; the single-gateway e2e test allows 5 s)."""
    card = pair.cards[4]
    leader = next(g for g in pair.gateways if g.leader.is_leader)
    follower = next(g for g in pair.gateways if not g.leader.is_leader)
    assert isinstance(leader.listener, PgChangeListener) and leader.listener.listening
    heard = leader.listener.notifications
    pos = aiomqtt.Client(
        pair.broker.host,
        pair.broker.port,
        username="pos-002",
        password="pw-pos-002",
        identifier="pos-002-deny",
        protocol=aiomqtt.ProtocolVersion.V5,
    )
    async with site.terminal(pair.broker, site.KIOSK) as kiosk, pos:
        await pos.subscribe("onecard/v1/blacklist/#", qos=1)
        # round-robin: after a login the leader decided, the next request goes to the follower
        for attempt in range(8):
            before = _decided(leader, "login")
            login = await kiosk.request(
                "login", f"login-{attempt}", {"number": card.number, "password": card.password}
            )
            assert login["ok"], login
            if _decided(leader, "login") > before:
                break
        else:
            pytest.fail("the leader decided none of 8 logins")
        start = time.monotonic()
        lost = await kiosk.request("report_loss", "loss-1", {"session": login["data"]["session"]})
        answered = time.monotonic() - start
        assert lost["ok"], lost
        assert _decided(follower, "report_loss") == 1 and _decided(leader, "report_loss") == 0
        version = lost["data"]["denylist_version"]
        assert answered < 0.3 + 0.7, answered  # applied_wait_ms 300 (site.gateway_settings)
        held: set[str] = set()
        async with asyncio.timeout(1.0):
            async for message in pos.messages:
                assert isinstance(message.payload, bytes)
                if b'"entries"' in message.payload:
                    snap = DenySnapshot.model_validate_json(message.payload)
                    if snap.version >= version:
                        held = set(snap.entries)
                else:
                    delta = DenyDelta.model_validate_json(message.payload)
                    held |= {c.card for c in delta.changes if c.kind.blocks}
                if card.uid in held:
                    break
    assert card.uid in held
    assert leader.listener.notifications > heard  # the commit reached the leader by NOTIFY
