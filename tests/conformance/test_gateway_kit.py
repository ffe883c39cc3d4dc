"""``conformance gateway`` against the real gateway (``onecard serve``'s runtime on a real SQLite
registry behind a private Mosquitto with the production ACL): every step passes, the report is
written, and the kit's exit status tells CI. One campus for the whole module (test time)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from conformance import Report, Site, run_gateway_suite
from conformance.__main__ import main
from conformance.mqtt import Broker
from protocol.wire import DenyDelta, DenySnapshot
from tests.e2e.campus import TERMINALS, Campus, build_campus

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="module")]


def site_of(campus: Campus, cards: int = 2) -> dict[str, Any]:
    wanted = {"pos": "pos-001", "kiosk": "kiosk-001", "door": "door-001", "water": "water-001"}
    return {
        "terminals": {
            kind: {"id": tid, "password": campus.broker.password(tid)}
            for kind, tid in wanted.items()
        },
        "cards": [
            {"uid": s.uid, "number": s.number, "password": s.password}
            for s in campus.students[:cards]
        ],
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def campus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Campus]:
    c = await build_campus(tmp_path_factory.mktemp("kit-campus"))
    assert set(TERMINALS) >= {"pos-001", "kiosk-001", "door-001", "water-001"}
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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def result(campus: Campus) -> Report:
    report = Report("gateway", "campus")
    broker = Broker(campus.broker.host, campus.broker.port)
    return await run_gateway_suite(broker, Site.from_dict(site_of(campus)), report)


async def test_onecard_serve_passes_every_step(result: Report) -> None:
    failed = [f"{s.id} {s.title}: {s.detail}" for s in result.steps if s.status == "failed"]
    assert not failed, "\n".join(failed)
    ids = [s.id for s in result.steps]
    assert ids == [f"G{n:02d}" for n in range(1, 41) if n not in (39,)]
    assert result.counts()["not_applicable"] == 0


async def test_loss_report_comes_as_a_delta_and_within_budget(result: Report) -> None:
    """Contract 1.1 §8.5: the loss reached the kit's POS as a delta, the gateway status named
    the version, and the kiosk reply counted the kit's acknowledging terminals."""
    steps = {s.id: s for s in result.steps}
    assert steps["G34"].status == "passed"
    assert any("blacklist/delta" in e.topic for e in steps["G34"].evidence)
    assert steps["G35"].status == "passed"
    assert steps["G36"].status == "passed"


async def test_evidence_has_topics_payloads_and_no_secrets(result: Report) -> None:
    login = next(s for s in result.steps if s.id == "G28")
    sent = [e.payload for e in login.evidence if e.topic.endswith("/req/login")]
    assert sent
    assert all('"password": "***"' in p for p in sent)
    replies = [e.payload for e in login.evidence if e.topic.endswith("/resp/login")]
    assert replies
    assert all('"session": "***"' in p.replace('":"', '": "') for p in replies)
    everything = json.dumps(result.as_dict(), ensure_ascii=False)
    assert "s_conformanceNoSuchSession" not in everything  # a session field, redacted too


async def test_readme_command_on_a_demo_directory(campus: Campus, tmp_path: Path) -> None:
    """The README's one command, ``python -m conformance gateway --demo var/demo-live``, on a
    directory laid out as ``make demo`` writes it (ports.json, conformance.json)."""
    readme = README.read_text(encoding="utf-8")
    assert ".venv/bin/python -m conformance gateway --demo var/demo-live\n" in readme
    demo = tmp_path / "demo-live"
    demo.mkdir()
    (demo / "ports.json").write_text(json.dumps({"mqtt": campus.broker.port}))
    site = site_of(campus, cards=1)  # no spare card for a loss: G33..G38 not applicable
    (demo / "conformance.json").write_text(json.dumps(site))
    out = tmp_path / "out"
    status = await asyncio.to_thread(main, ["gateway", "--demo", str(demo), "--out", str(out)])
    assert status == 0
    data = json.loads((out / "conformance-gateway.json").read_text())
    assert data["result"] == "passed"
    assert data["contract"] == "1.1"
    assert data["summary"]["not_applicable"] == 6
    html = (out / "conformance-gateway.html").read_text()
    assert "onecard conformance report" in html
    assert "<script" not in html


async def test_cli_exit_status_2_without_a_usable_site(tmp_path: Path) -> None:
    (tmp_path / "site.json").write_text('{"terminals": {}, "cards": []}')
    args = ["gateway", "--port", "1", "--site", str(tmp_path / "site.json")]
    assert await asyncio.to_thread(main, args) == 2


async def test_kit_fails_a_gateway_with_1_0_error_messages(
    campus: Campus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kit's checks can fail: a gateway that sends a refusal's own words without the code's
    default text (1.0, finding 8) fails the steps that see one, and the §9 summary step."""
    from protocol.errors import OnecardError
    from protocol.wire import ErrorBody, codec

    def old_error_body(error: object, *, detail: str | None = None) -> ErrorBody:
        assert isinstance(error, OnecardError)
        message = f"{error.message_zh} / {error.message_en}" + (f": {detail}" if detail else "")
        return ErrorBody(code=error.code, message=message[:500], rule=None)

    monkeypatch.setattr(codec, "error_body", old_error_body)
    report = Report("gateway", "campus with 1.0 messages")
    broker = Broker(campus.broker.host, campus.broker.port)
    await run_gateway_suite(broker, Site.from_dict(site_of(campus, cards=1)), report)
    failed = {s.id for s in report.steps if s.status == "failed"}
    assert {"G29", "G31", "G40"} <= failed  # unlock (LOSS-3) and the expired session
    assert "G16" not in failed  # a plain code's default text was always right


async def test_kit_fails_a_gateway_that_sends_a_loss_as_a_snapshot(
    campus: Campus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1.0 re-snapshotted on a change when the last snapshot was older than 10 s (finding 2):
    the kit sees the loss arrive as a snapshot and fails G34, and only G34."""
    gateway = campus.gateway

    async def always_snapshot(session: object, *, compact: bool = False) -> None:
        await gateway._publish_snapshot(session)  # type: ignore[arg-type]

    monkeypatch.setattr(gateway, "_publish_changes", always_snapshot)
    site = site_of(campus, cards=2)
    site["cards"][1] = site_of(campus, cards=3)["cards"][2]  # a card no other test lost
    report = Report("gateway", "campus sending snapshots")
    broker = Broker(campus.broker.host, campus.broker.port)
    await run_gateway_suite(broker, Site.from_dict(site), report)
    assert {s.id for s in report.steps if s.status == "failed"} == {"G34"}


async def test_compaction_snapshot_repeats_the_delta_version(
    campus: Campus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract 1.1 §8.5: a counter change goes out as a delta at once; once the delta is
    `snapshot_max_age_s` old with no change since, a snapshot at the **same** version replaces
    it (compaction)."""
    monkeypatch.setattr(campus.gateway.settings.denylist, "snapshot_max_age_s", 0.4)
    lost = campus.students[3]
    topics = ("onecard/v1/blacklist/snapshot", "onecard/v1/blacklist/delta")
    async with campus.terminal("pos-002", extra=topics) as pos:
        await asyncio.sleep(0.6)  # the retained messages, and any earlier delta compacted
        while not pos.other.empty():
            pos.other.get_nowait()
        await campus.center.cards.report_loss(campus.admin, lost.serial, presented_id=lost.number)
        seen: list[tuple[str, bytes]] = []
        async with asyncio.timeout(5):
            while not seen or "snapshot" not in seen[-1][0] or not seen[-1][1]:
                seen.append(await pos.other.get())
    kinds = [t.rsplit("/", 1)[-1] for t, p in seen if p]
    assert kinds[0] == "delta", kinds  # the change itself came as a delta
    delta = DenyDelta.model_validate_json(next(p for t, p in seen if t.endswith("delta") and p))
    assert [c.card for c in delta.changes][-1] == lost.uid
    snapshot = DenySnapshot.model_validate_json(seen[-1][1])
    assert snapshot.version == delta.to_version  # nothing new: the same version, compacted
    assert lost.uid in snapshot.entries
