"""An in-process campus for end-to-end tests: a real SQLite registry, a private Mosquitto with
per-terminal passwords and the production ACL, the gateway running in the test's event loop, and
terminal clients speaking the published contract over MQTT v5."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.bootstrap import session_factory
from gateway.config import load_settings
from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.runtime import Gateway
from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from protocol.cards.identity import default_password
from protocol.types import CardKind, HolderKind, Permission
from protocol.wire import TerminalKind
from storage.sql import SqlRegistry
from storage.tapwriter import SqliteTapWriter
from tests.broker import PrivateBroker
from tests.conftest import student_rows

TERMINALS = {
    "pos-001": (TerminalKind.POS, "canteen1"),
    "pos-002": (TerminalKind.POS, "canteen1"),
    "door-001": (TerminalKind.DOOR, None),
    "kiosk-001": (TerminalKind.KIOSK, None),
    "water-001": (TerminalKind.WATER, "water1"),
}
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@dataclass
class Student:
    holder_id: int
    number: str
    national_id: str
    serial: str
    uid: str

    @property
    def password(self) -> str:
        return default_password(self.national_id)


@dataclass
class Campus:
    registry: SqlRegistry
    center: CardCenter
    clock: FixedClock
    broker: PrivateBroker
    gateway: Gateway
    admin: Actor
    students: list[Student]
    writer: SqliteTapWriter | None = None
    task: asyncio.Task[None] | None = None
    clients: list[TerminalClient] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def terminal(
        self, terminal_id: str, *, extra: tuple[str, ...] = ()
    ) -> AsyncIterator[TerminalClient]:
        client = TerminalClient(self.broker, terminal_id, self.broker.password(terminal_id))
        async with client.connected(extra):
            yield client

    async def balance(self, student: Student) -> int:
        async with self.registry.read() as tx:
            return await tx.balance(f"purse:{student.holder_id}")

    async def wait_ready(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.gateway.ready:
                await asyncio.sleep(0.02)


class TerminalClient:
    """A terminal: request/response over MQTT v5 on its own topics, QoS 1."""

    def __init__(self, broker: PrivateBroker, terminal_id: str, password: str) -> None:
        self.id = terminal_id
        self.client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=terminal_id,
            password=password,
            identifier=terminal_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=NODELAY,
        )
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.other: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def connected(self, extra: tuple[str, ...] = ()) -> AsyncIterator[TerminalClient]:
        async with self.client:
            await self.client.subscribe(f"onecard/v1/t/{self.id}/resp/#", qos=1)
            for topic in extra:
                await self.client.subscribe(topic, qos=1)
            self._reader = asyncio.create_task(self._read())
            try:
                yield self
            finally:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader

    async def _read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            topic = message.topic.value
            if "/resp/" in topic:
                body = json.loads(payload)
                future = self.replies.pop(str(body.get("request_id")), None)
                if future is not None and not future.done():
                    future.set_result(body)
                    continue
            await self.other.put((topic, payload))

    async def send(
        self, op: str, payload: bytes | str, request_id: str, timeout: float = 5.0
    ) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        await self.client.publish(f"onecard/v1/t/{self.id}/req/{op}", payload, qos=1)
        async with asyncio.timeout(timeout):
            return await future

    async def request(
        self, op: str, data: dict[str, Any], request_id: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        rid = request_id or f"{self.id}-{uuid.uuid4().hex[:12]}"
        body = json.dumps({"v": 1, "request_id": rid, "data": data})
        return await self.send(op, body, rid, timeout)

    async def next_deny(self, timeout: float = 5.0) -> tuple[str, bytes]:
        """The next non-empty deny-list publication (snapshot or delta): its topic and payload."""
        async with asyncio.timeout(timeout):
            while True:
                topic, payload = await self.other.get()
                if "/blacklist/" in topic and payload:
                    return topic, payload

    async def next_other(self, topic_part: str, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                topic, payload = await self.other.get()
                if topic_part in topic and payload:
                    return payload


async def build_campus(tmp_path: Path, *, students: int = 4) -> Campus:
    registry = await SqlRegistry.open(tmp_path / "campus.sqlite3", migrate=True)
    clock = FixedClock(datetime.now(UTC))
    center = CardCenter.build(Context(registry=registry, clock=clock))
    admin = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
    await center.stock.purchase(admin, CardKind.TEMP, 100, "2026")
    await center.stock.requisition(admin, CardKind.TEMP, 50, issued_by="科长", usage_note="测试")
    await center.receipts.add_book(admin, "B1", 1, 100)
    await center.merchants.add(admin, "canteen1", "第一食堂")
    await center.merchants.add(admin, "water1", "开水房")
    rows = student_rows(students)
    for row in rows:
        row.valid_until = date(2030, 7, 31)
    report = await center.holders.import_roster(admin, HolderKind.STUDENT, rows)
    people: list[Student] = []
    for holder_id, row in zip(report.holder_ids, rows, strict=True):
        result = await center.cards.issue_temp(admin, holder_id)
        await center.money.topup(admin, result.card.serial, 10_000)
        assert result.card.uid is not None and row.student_number and row.national_id
        people.append(
            Student(
                holder_id, row.student_number, row.national_id, result.card.serial, result.card.uid
            )
        )
    users = {tid: f"pw-{tid}" for tid in TERMINALS}
    users["gateway"] = "pw-gateway"
    for tid, (kind, merchant) in TERMINALS.items():
        await center.terminals.add(
            admin,
            tid,
            kind,
            password_hash=mosquitto_password_hash(users[tid]),
            merchant_id=merchant,
        )
    broker = PrivateBroker(tmp_path / "broker", users=users)
    broker.start()
    settings = load_settings(
        None,
        db=str(tmp_path / "campus.sqlite3"),
        mqtt={
            "host": broker.host,
            "port": broker.port,
            "username": "gateway",
            "password": "pw-gateway",
            "client": os.environ.get("ONECARD_TEST_MQTT_CLIENT", "aiomqtt"),
        },
        http={"port": 0},
        scheduler_interval_s=0.2,
        denylist={"poll_interval_ms": 20, "applied_wait_ms": 500},
    )
    writer = SqliteTapWriter(tmp_path / "campus.sqlite3")
    writer.start()
    gateway = Gateway(
        settings,
        Context(registry=registry, clock=clock),
        executor=writer,
        session_factory=session_factory(settings),
    )
    return Campus(registry, center, clock, broker, gateway, admin, people, writer=writer)
