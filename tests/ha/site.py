"""Several gateways on one PostgreSQL registry behind a private Mosquitto (issue 12).

A site is a fresh PostgreSQL database (created and dropped by the test module), seeded through the
real services, a private broker whose ACL gives each gateway account the gateway section, and
terminal clients that keep *every* reply (two gateways may both answer one request id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg

from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from protocol.cards.identity import default_password
from protocol.types import CardKind, HolderKind, Permission
from protocol.wire import TerminalKind
from storage.sql import SqlRegistry
from tests.broker import PrivateBroker
from tests.conftest import student_rows

PG_HOST = os.environ.get("ONECARD_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ONECARD_PG_PORT", "5432"))
PG_USER = os.environ.get("ONECARD_PG_USER", "postgres")
GATEWAYS = ("gw1", "gw2")
GROUP = "onecard-gw-" + secrets.token_hex(4)  # a secret share group (broker_files.py)
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
ADMIN = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
START_FEN = 10_000
KIOSK = "kiosk-001"  # a self-service kiosk (seeded beside the POS terminals)


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
    )


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh database for one test module: its URL; dropped afterwards."""
    name = f"onecard_ha_{secrets.token_hex(4)}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        conn = await _admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class Card:
    holder_id: int
    uid: str
    serial: str
    number: str
    password: str = ""  # LOSS-1's default (the ID number's last six) for the kiosk


async def seed(url: str, *, students: int, pos: int) -> tuple[list[Card], list[str]]:
    """Migrate and seed: ``students`` temp cards with START_FEN each, ``pos`` POS terminals
    (``pos-001``…) of one canteen. Returns the cards and the terminal ids."""
    registry = await SqlRegistry.open(url, migrate=True)
    try:
        center = CardCenter.build(Context(registry=registry, clock=FixedClock(datetime.now(UTC))))
        await center.stock.purchase(ADMIN, CardKind.TEMP, students + 10, "2026")
        await center.stock.requisition(
            ADMIN, CardKind.TEMP, students + 5, issued_by="科长", usage_note="测试"
        )
        await center.receipts.add_book(ADMIN, "B1", 1, 10_000)
        await center.merchants.add(ADMIN, "canteen1", "第一食堂")
        rows = student_rows(students)
        for row in rows:
            row.valid_until = date(2030, 7, 31)
        report = await center.holders.import_roster(ADMIN, HolderKind.STUDENT, rows)
        cards = []
        for holder_id, row in zip(report.holder_ids, rows, strict=True):
            issued = await center.cards.issue_temp(ADMIN, holder_id)
            await center.money.topup(ADMIN, issued.card.serial, START_FEN)
            assert issued.card.uid is not None and row.student_number
            assert row.national_id is not None
            password = default_password(row.national_id)
            cards.append(
                Card(holder_id, issued.card.uid, issued.card.serial, row.student_number, password)
            )
        tids = [f"pos-{i:03d}" for i in range(1, pos + 1)]
        for tid in tids:
            await center.terminals.add(
                ADMIN,
                tid,
                TerminalKind.POS,
                password_hash=mosquitto_password_hash(f"pw-{tid}"),
                merchant_id="canteen1",
            )
        await center.terminals.add(
            ADMIN, KIOSK, TerminalKind.KIOSK, password_hash=mosquitto_password_hash(f"pw-{KIOSK}")
        )
        return cards, tids
    finally:
        await registry.close()


def broker(directory: Path, tids: list[str]) -> PrivateBroker:
    users = {tid: f"pw-{tid}" for tid in (*tids, KIOSK)}
    users.update({gw: f"pw-{gw}" for gw in GATEWAYS})
    users["watcher"] = "pw-watcher"
    # the watcher is a read-only operator account: it reads the instances' own statuses too
    return PrivateBroker(directory, users=users, gateway_users=GATEWAYS, monitor_users=("watcher",))


def gateway_settings(url: str, mq: PrivateBroker, name: str) -> dict[str, Any]:
    """``load_settings`` overrides for gateway ``name`` (gw1, gw2) in the share group."""
    return {
        "db": url,
        "event_loop": "asyncio",
        "mqtt": {
            "host": mq.host,
            "port": mq.port,
            "username": name,
            "password": f"pw-{name}",
            "client_id": name,
            "shared_group": GROUP,
        },
        "http": {"port": 0},
        "scheduler_interval_s": 0.5,
        "denylist": {"poll_interval_ms": 20, "applied_wait_ms": 300},
        "ha": {"leader_retry_s": 0.2},
    }


@dataclass
class Terminal:
    """A POS that keeps every reply per request id (two gateways may both answer one)."""

    id: str
    client: aiomqtt.Client
    replies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            body = json.loads(payload)
            self.replies.setdefault(str(body.get("request_id")), []).append(body)
            self.arrived.set()

    async def publish(self, op: str, request_id: str, data: dict[str, Any]) -> None:
        body = json.dumps({"v": 1, "request_id": request_id, "data": data})
        await self.client.publish(f"onecard/v1/t/{self.id}/req/{op}", body, qos=1)

    async def wait(self, request_id: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.replies.get(request_id, [])) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.replies[request_id]

    async def request(
        self, op: str, request_id: str, data: dict[str, Any], *, retry_s: float = 2.0
    ) -> dict[str, Any]:
        """Send, and re-send the same request id while unanswered (contract §6.1; shorter than
        its 5 s here): a copy dealt to a gateway that just died is lost with its session."""
        for _ in range(4):
            await self.publish(op, request_id, data)
            with contextlib.suppress(TimeoutError):
                return dict((await self.wait(request_id, timeout=retry_s))[0])
        return dict((await self.wait(request_id))[0])


@contextlib.asynccontextmanager
async def terminal(mq: PrivateBroker, tid: str) -> AsyncIterator[Terminal]:
    client = aiomqtt.Client(
        mq.host,
        mq.port,
        username=tid,
        password=f"pw-{tid}",
        identifier=tid,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    )
    async with client:
        await client.subscribe(f"onecard/v1/t/{tid}/resp/#", qos=1)
        t = Terminal(tid, client)
        reader = asyncio.create_task(t.read())
        try:
            yield t
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def ledger(url: str) -> tuple[int, int, int]:
    """(purchases, their fen, sum of all balances) straight from the registry."""
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        row = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(amount), 0) FROM transfers WHERE kind = 'purchase'"
        )
        total = await conn.fetchval("SELECT coalesce(sum(balance), 0) FROM accounts")
        return int(row[0]), int(row[1]), int(total)
    finally:
        await conn.close()
