"""Issue 15: retention in the leader gateway's scheduler (``[privacy]``, gateway/retention.py).

The gateway of the composition root (``open_gateway``, real SQLite, no broker: only the
scheduler task runs) plans daily: audited, logged masked, ``onecard_retention_due_holders``;
it archives and purges only with ``enabled`` and an ``archive_dir``; a follower does nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import stat
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.bootstrap import open_gateway
from gateway.config import PrivacyConfig, Settings, load_settings
from gateway.leader import Leadership
from gateway.runtime import Gateway
from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from gateway.services.privacy import PURGED_NAME
from protocol.cards.identity import make_national_id
from protocol.types import HolderCategory, Permission
from storage import pii
from storage.sql import SqlRegistry

pytestmark = pytest.mark.asyncio
NOW = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
NAMES = ("退休甲", "退休乙")  # the first left five years ago, the second last month


async def _seed(db: Path) -> list[tuple[int, str]]:
    registry = await SqlRegistry.open(db, migrate=True)
    try:
        center = CardCenter.build(Context(registry=registry, clock=FixedClock(NOW)))
        admin = Actor(name="setup", permissions=frozenset(Permission))
        people = []
        for i, name in enumerate(NAMES):
            nid = make_national_id("110105", date(1950, 3, 4 + i), 300 + i)
            holder = await center.cards.register_temporary_holder(
                admin,
                name=name,
                national_id=nid,
                category=HolderCategory.RETIRED_STAFF,
                valid_through=date(2027, 6, 30),
                application_ref=f"离退休处 {i}",
            )
            people.append((holder.id, nid))
    finally:
        await registry.close()
    with sqlite3.connect(db) as con:  # deregistered by the counter back then
        for (hid, _), left in zip(people, ("2021-01-01", "2026-10-30"), strict=True):
            con.execute(
                "UPDATE holders SET status = 'deregistered', deregistered_at = ? WHERE id = ?",
                (f"{left} 00:00:00.000000", hid),
            )
    con.close()
    return people


async def _rounds(gateway: Gateway, until: asyncio.Event | None = None, n: int = 3) -> None:
    """Run the scheduler task for ``n`` rounds of 20 ms (or until ``until`` is set)."""
    task = asyncio.create_task(gateway._scheduler())
    for _ in range(n * 5):
        await asyncio.sleep(0.02)
        if until is not None and until.is_set():
            break
    gateway.stop.set()
    await task
    gateway.stop.clear()


def _settings(db: Path, archive: Path | None = None) -> Settings:
    """A scheduler round every 20 ms; with ``archive``: retention enabled, archiving there."""
    privacy = {"enabled": True, "archive_dir": str(archive)} if archive else {}
    return load_settings(None, db=str(db), scheduler_interval_s=0.02, privacy=privacy)


def _audit(db: Path, action: str) -> list[tuple[str, dict[str, object]]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT actor, after FROM audit_log WHERE action = ? ORDER BY id", (action,)
        ).fetchall()
    con.close()
    return [(str(a), json.loads(b)) for a, b in rows]


async def test_enabled_needs_an_archive_dir() -> None:
    with pytest.raises(ValidationError, match="archive_dir"):
        PrivacyConfig(enabled=True)
    assert load_settings(None, privacy={"after_graduation_days": 400}).privacy.interval_s == 86_400


async def test_leader_plans_daily_masked_then_purges_only_when_enabled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "r.sqlite3"
    (gone, gone_nid), (recent, _) = await _seed(db)
    plan_only = _settings(db)
    caplog.set_level(logging.INFO, logger="onecard.retention")
    async with open_gateway(plan_only, clock=FixedClock(NOW)) as gateway:
        await _rounds(gateway)  # several rounds, one plan (the interval is a day)
        assert gateway.metrics.retention_due._value.get() == 1
    plans = _audit(db, "pii.retention_plan")
    assert plans == [
        ("system", {"due": [gone], "apply": False, "channel": "scheduler", "days": [1095, 1095]})
    ]
    logged = caplog.text
    assert f"#{gone} 退*" in logged and "dry run: 1 holders due" in logged
    assert NAMES[0] not in logged and gone_nid not in logged and f"#{recent}" not in logged
    assert _audit(db, "pii.purge") == []  # planning purges nothing

    archive = tmp_path / "archive"
    async with open_gateway(_settings(db, archive), clock=FixedClock(NOW)) as gateway:
        await _rounds(gateway)
        assert gateway.metrics.retention_due._value.get() == 0
        assert gateway.metrics.retention_purged._value.get() == 1
    (run,) = _audit(db, "pii.retention_run")
    assert run[1]["due"] == [gone] and run[1]["apply"] is True
    ((who, _),) = _audit(db, "pii.purge")
    assert who == "system"
    (sealed,) = archive.iterdir()
    assert sealed.name == f"holder-{gone}.json.pii1"
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    body = sealed.read_text().strip()
    assert gone_nid not in body
    assert json.loads(pii.open_bytes(body, pii.AAD_EXPORT))["holder"]["national_id"] == gone_nid
    with sqlite3.connect(db) as con:
        names = dict(con.execute("SELECT id, name FROM holders").fetchall())
    con.close()
    assert names[gone] == PURGED_NAME and names[recent] == NAMES[1]
    raw = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    assert NAMES[0].encode() not in raw  # checkpointed after the purge


async def test_a_follower_runs_no_retention(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    await _seed(db)

    async with open_gateway(_settings(db), clock=FixedClock(NOW)) as gateway:
        gateway.leader = Leadership()  # a follower: not (yet) the leader
        await _rounds(gateway)
    assert _audit(db, "pii.retention_plan") == []


async def test_an_unwritable_archive_purges_nothing_and_the_gateway_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "r.sqlite3"
    (gone, _), _ = await _seed(db)
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    async with open_gateway(_settings(db, blocked), clock=FixedClock(NOW)) as gateway:
        await _rounds(gateway)  # the scheduler task ends only because it was stopped
    assert "retention round failed (FileExistsError)" in caplog.text
    assert _audit(db, "pii.purge") == []
    with sqlite3.connect(db) as con:
        (name,) = con.execute("SELECT name FROM holders WHERE id = ?", (gone,)).fetchone()
    con.close()
    assert name == NAMES[0]  # archived first or not purged at all
