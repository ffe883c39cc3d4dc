"""Bad data in the registry and repeated kiosk requests never take terminals offline (issue 8,
items 9, 10, 12): real Mosquitto, real SQLite, the gateway in the test's loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from protocol.wire import DenyDelta, DenyList, DenySnapshot
from tests.e2e.campus import Campus, build_campus

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]


def _sql(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with sqlite3.connect(path) as db:
        for sql, params in statements:
            db.execute(sql, params)


_COPY_LAST_CHANGE = (
    "INSERT INTO deny_changes (version, card_id, serial, uid, change, denied, at)"
    " SELECT version + 1, card_id, serial, ?, change, denied, at FROM deny_changes"
    " WHERE version = (SELECT max(version) FROM deny_changes)"
)


@pytest_asyncio.fixture
async def dirty_campus(tmp_path: Path) -> AsyncIterator[Campus]:
    """A registry written before UIDs were validated: a lost card stored with a lower-case UID,
    then a change row with a garbage UID and one without a UID."""
    c = await build_campus(tmp_path)
    db = tmp_path / "campus.sqlite3"
    lost = c.students[1]
    _sql(db, ("UPDATE cards SET uid = lower(uid) WHERE serial = ?", (lost.serial,)))
    await c.center.cards.report_loss(c.admin, lost.serial, presented_id=lost.number)
    _sql(db, (_COPY_LAST_CHANGE, ("zz:not-hex",)), (_COPY_LAST_CHANGE, (None,)))
    c.task = asyncio.create_task(c.gateway.run(), name="gateway")
    try:
        await c.wait_ready()
        yield c
    finally:
        c.gateway.stop.set()
        try:
            async with asyncio.timeout(15):
                await c.task
        finally:
            c.broker.stop()
            if c.writer is not None:
                await c.writer.close()
            await c.registry.close()


async def test_bad_uid_rows_do_not_stop_the_gateway(dirty_campus: Campus) -> None:
    """Used to fail at start: the snapshot refused the lower-case UID (DenySnapshot validation)."""
    c = dirty_campus
    ok, lost = c.students[0], c.students[1]
    assert c.gateway.deny.version == 3
    async with c.terminal("pos-001", extra=("onecard/v1/blacklist/snapshot",)) as pos:
        snapshot = DenySnapshot.model_validate_json(await pos.next_other("blacklist/snapshot"))
        assert snapshot.version == 3
        assert snapshot.entries == [lost.uid.upper()]
        sale = await pos.request("purchase", {"card": ok.uid, "amount_fen": 100})
        assert sale["ok"], sale
        refused = await pos.request("purchase", {"card": lost.uid.upper(), "amount_fen": 100})
        assert refused["ok"] is False


async def test_log_rows_without_uid_advance_the_published_version(campus: Campus) -> None:
    """A change row without a UID, then a real loss: a terminal following the list reaches the
    newest version (the watcher used to stop at the hole and later raise on the gap). The hole
    is published as a snapshot (a delta cannot express it); the loss after it arrives in that
    snapshot or as a delta on top of it, depending on whether the watcher read both rows in
    one poll (contract 1.1 §8.2) — a terminal must reach version 3 either way."""
    s = campus.students[2]
    db = Path(campus.gateway.settings.db)
    async with campus.terminal("pos-001", extra=("onecard/v1/blacklist/#",)) as pos:
        await campus.center.cards.report_loss(campus.admin, s.serial, presented_id=s.number)
        _sql(db, (_COPY_LAST_CHANGE, (None,)))
        other = campus.students[3]
        await campus.center.cards.report_loss(campus.admin, other.serial, presented_id=other.number)
        held: DenyList | None = None
        snapshots: list[int] = []
        deadline = asyncio.get_running_loop().time() + 5
        while held is None or held.version < 3:
            assert asyncio.get_running_loop().time() < deadline, (snapshots, held)
            topic, payload = await pos.next_deny()
            if topic.endswith("/snapshot"):
                snapshot = DenySnapshot.model_validate_json(payload)
                snapshots.append(snapshot.version)
                held = DenyList.from_snapshot(snapshot)
            elif held is not None:
                held.apply(DenyDelta.model_validate_json(payload))
        assert held.version == 3
        assert held.entries == {s.uid, other.uid}
        assert snapshots and snapshots[-1] >= 2, snapshots  # the hole came as a snapshot
        assert campus.gateway.deny.version == 3
        refused = await pos.request("purchase", {"card": other.uid, "amount_fen": 100})
        assert refused["error"]["code"] == "card_lost"


async def test_second_kiosk_loss_report_is_a_proper_refusal(campus: Campus) -> None:
    """A second report_loss on a lost card answered ``internal`` (rule "LIFECYCLE" is no RuleId)."""
    s = campus.students[0]
    async with campus.terminal("kiosk-001") as kiosk:
        login = await kiosk.request("login", {"number": s.number, "password": s.password})
        assert login["ok"], login
        session = login["data"]["session"]
        first = await kiosk.request("report_loss", {"session": session})
        assert first["ok"], first
        second = await kiosk.request("report_loss", {"session": session})
        assert second["ok"] is False
        assert second["error"]["code"] == "transition_not_allowed", second
        assert "rule" not in second["error"] or second["error"]["rule"] != "LIFECYCLE"
        assert "卡" in second["error"]["message"]
