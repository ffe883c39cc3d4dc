"""The tap engine (gateway/tapengine.py): SQLite tap decisions in a process of their own. Driven
here through its parent handle with raw request bytes, on a real registry; the gateway's own
use of it (MQTT in, replies out) is exercised by every test that runs ``onecard serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.services.taps import Outcome
from gateway.tapengine import TapEngine
from protocol.errors import OnecardError
from tests.e2e.campus import Campus, build_campus


@pytest_asyncio.fixture
async def engine_campus(tmp_path: Path) -> AsyncIterator[tuple[Campus, TapEngine]]:
    campus = await build_campus(tmp_path)
    engine = TapEngine(campus.gateway.settings)
    await engine.start()
    try:
        yield campus, engine
    finally:
        await engine.close()
        campus.broker.stop()
        if campus.writer is not None:
            await campus.writer.close()
        await campus.registry.close()


def _purchase(rid: str, card: str, amount: int = 100) -> bytes:
    return json.dumps(
        {"v": 1, "request_id": rid, "data": {"card": card, "amount_fen": amount}}
    ).encode()


def _reply(result: Outcome | BaseException) -> dict[str, Any]:
    assert isinstance(result, Outcome), result
    doc: dict[str, Any] = json.loads(result.payload)
    return doc


def _alive(engine: TapEngine) -> bool:
    return engine.alive


async def _decide(engine: TapEngine, *items: tuple[str, str, bytes, str | None]) -> list[Any]:
    give_up = time.monotonic() + 5
    return await engine.decide_many([(*item, None) for item in items], give_up=give_up)


@pytest.mark.asyncio
async def test_decisions_are_durable_idempotent_and_answered_whole(
    engine_campus: tuple[Campus, TapEngine],
) -> None:
    campus, engine = engine_campus
    alice, bob = campus.students[0].uid, campus.students[1].uid
    results = await _decide(
        engine,
        ("pos-001", "purchase", _purchase("p-1", alice), "pos"),
        ("pos-001", "purchase", _purchase("p-2", bob, 20_000), "pos"),  # more than Bob has
        ("pos-001", "purchase", b'{"v":1,"request_id":"bad-1","data":{"card":7}}', "pos"),
        ("door-001", "purchase", _purchase("p-3", alice), "door"),  # not a door's operation
        ("pos-999", "purchase", _purchase("p-4", alice), None),  # no such terminal
    )
    approved = _reply(results[0])
    assert approved["ok"] and approved["data"]["balance_after_fen"] == 9_900
    codes = [_reply(r)["error"]["code"] for r in results[1:]]
    assert codes == ["insufficient_funds", "malformed", "unsupported", "terminal_unknown"]
    assert [_reply(r)["request_id"] for r in results[1:]] == ["p-2", "bad-1", "p-3", "p-4"]
    async with campus.registry.read() as tx:  # committed before the answer came back
        assert await tx.balance(f"purse:{campus.students[0].holder_id}") == 9_900

    again, conflict = await _decide(
        engine,
        ("pos-001", "purchase", _purchase("p-1", alice), "pos"),
        ("pos-001", "purchase", _purchase("p-1", alice, 101), "pos"),
    )
    assert isinstance(again, Outcome) and again.replayed
    assert _reply(again)["data"] == approved["data"]  # the same transfer, not a second debit
    assert _reply(conflict)["error"]["code"] == "idempotency_conflict"
    async with campus.registry.read() as tx:
        assert await tx.balance(f"purse:{campus.students[0].holder_id}") == 9_900


@pytest.mark.asyncio
async def test_a_loss_reported_at_the_counter_is_refused_at_once(
    engine_campus: tuple[Campus, TapEngine],
) -> None:
    campus, engine = engine_campus
    student = campus.students[2]
    (first,) = await _decide(engine, ("pos-001", "purchase", _purchase("l-1", student.uid), "pos"))
    assert _reply(first)["ok"]  # the engine has this card cached now
    await campus.center.cards.report_loss(campus.admin, student.serial, presented_id=student.number)
    (refused,) = await _decide(
        engine, ("pos-001", "purchase", _purchase("l-2", student.uid), "pos")
    )
    assert _reply(refused)["error"]["code"] == "card_lost"


@pytest.mark.asyncio
async def test_a_dead_engine_answers_unavailable_and_is_not_alive(
    engine_campus: tuple[Campus, TapEngine],
) -> None:
    campus, engine = engine_campus
    assert engine.alive and engine.pid is not None
    os.kill(engine.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while _alive(engine):
            await asyncio.sleep(0.05)
    with pytest.raises(OnecardError) as refused:
        await _decide(
            engine, ("pos-001", "purchase", _purchase("d-1", campus.students[0].uid), "pos")
        )
    assert refused.value.code.value == "unavailable"


def test_the_engine_dies_with_a_killed_gateway(tmp_path: Path) -> None:
    """kill -9 of the gateway must not leave a decision process holding the registry."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from gateway.config import load_settings
        from gateway.tapengine import TapEngine
        from storage.sql import SqlRegistry

        async def main():
            registry = await SqlRegistry.open({str(tmp_path / "r.sqlite3")!r}, migrate=True)
            await registry.close()
            engine = TapEngine(load_settings(None, db={str(tmp_path / "r.sqlite3")!r}))
            await engine.start()
            print(engine.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return
            with open(f"/proc/{child}/stat") as fh:  # a zombie is gone for our purpose
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            time.sleep(0.05)
        pytest.fail(f"the tap engine {child} outlived its gateway")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
