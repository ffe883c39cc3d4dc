"""A campus for the simulator tests: the e2e campus (real SQLite registry, a private Mosquitto with
per-terminal passwords and the production ACL, the gateway in the test's event loop) with five
more terminals, and a gateway that can be stopped and started again on the same registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio

from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.runtime import Gateway
from gateway.services.base import Context
from protocol.wire import TerminalKind
from simulators.fleet import CardInfo
from simulators.terminals import Credentials
from tests.e2e.campus import TERMINALS, Campus, build_campus

EXTRA = {
    "pos-003": (TerminalKind.POS, "canteen1"),
    "pos-004": (TerminalKind.POS, "canteen1"),
    "door-002": (TerminalKind.DOOR, None),
    "water-002": (TerminalKind.WATER, "water1"),
    "kiosk-002": (TerminalKind.KIOSK, None),
}


@dataclass
class SimCampus:
    campus: Campus
    tmp_path: Path
    task: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        return self.campus.broker.host

    @property
    def port(self) -> int:
        return self.campus.broker.port

    @property
    def gateway(self) -> Gateway:
        return self.campus.gateway

    def creds(self, terminal_id: str) -> Credentials:
        kind = {**TERMINALS, **EXTRA}[terminal_id][0]
        return Credentials(terminal_id, kind, self.campus.broker.password(terminal_id))

    def all_creds(self) -> list[Credentials]:
        return [self.creds(tid) for tid in sorted({**TERMINALS, **EXTRA})]

    def cards(self) -> list[CardInfo]:
        return [CardInfo(s.uid, s.number, s.password) for s in self.campus.students]

    def write_files(self) -> tuple[Path, Path]:
        """The JSON files the CLI reads (what the integrator writes from the registry)."""
        terminals = self.tmp_path / "terminals.json"
        cards = self.tmp_path / "cards.json"
        terminals.write_text(
            json.dumps(
                [
                    {"id": c.id, "kind": c.kind.value, "password": c.password}
                    for c in self.all_creds()
                ]
            )
        )
        cards.write_text(
            json.dumps(
                [{"uid": c.uid, "number": c.number, "password": c.password} for c in self.cards()]
            )
        )
        return terminals, cards

    async def start(self) -> None:
        """(Re)start a gateway on the same registry and broker (GatewayControl)."""
        old = self.campus.gateway
        assert self.campus.writer is not None
        self.campus.gateway = Gateway(
            old.settings,
            Context(registry=self.campus.registry, clock=self.campus.clock),
            executor=self.campus.writer,
        )
        self.task = asyncio.create_task(self.campus.gateway.run(), name="gateway")
        await self.campus.wait_ready()

    async def stop(self) -> None:
        """Graceful stop: drain, retained ``offline`` gateway status, disconnect."""
        if self.task is None:
            return
        self.campus.gateway.stop.set()
        async with asyncio.timeout(15):
            await self.task
        self.task = None


@pytest_asyncio.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimCampus]:
    campus = await build_campus(tmp_path, students=8)
    for tid, (kind, merchant) in EXTRA.items():
        password = f"pw-{tid}"
        await campus.center.terminals.add(
            campus.admin,
            tid,
            kind,
            password_hash=mosquitto_password_hash(password),
            merchant_id=merchant,
        )
        campus.broker.add_user(tid, password)
    s = SimCampus(campus, tmp_path)
    try:
        await s.start()
        yield s
    finally:
        try:
            await s.stop()
        finally:
            campus.broker.stop()
            if campus.writer is not None:
                await campus.writer.close()
            await campus.registry.close()
