"""The fleet runner: pure helpers, then short runs against the real campus with zero invariant
breaks (LOSS-2 after kiosk loss reports, §6 one transfer per request id, §8.3 no lost sale)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from simulators.fleet import FleetConfig, FleetRunner, LiveStats, percentile, rush_shape
from simulators.terminals import Mode, Pos, TapResult
from tests.simulators.conftest import SimCampus


def test_percentile_and_rush_shape() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([], 50) == 0
    assert rush_shape(0.5) == pytest.approx(1.0)
    assert rush_shape(0.0) < 0.3
    assert rush_shape(1.0) < 0.3


def test_live_stats_window() -> None:
    stats = LiveStats(window_s=5)
    for ms in (1, 2, 3, 50):
        stats.record(TapResult("pos-1", "purchase", Mode.ONLINE, True, latency_s=ms / 1000))
    stats.record(TapResult("pos-1", "purchase", Mode.ONLINE, False, code="card_lost"))
    stats.record(TapResult("kiosk-1", "login", Mode.ONLINE, True))
    snap = stats.snapshot()
    assert snap["taps"] == 5
    assert snap["approvals"] == 4
    assert snap["declines_by_code"] == {"card_lost": 1}
    assert snap["latency_ms"]["p99"] == 50
    assert snap["taps_per_s"] > 0


def config(
    sim: SimCampus, duration: float, loss_per_minute: float = 30.0, timeout: float = 2.0
) -> FleetConfig:
    return FleetConfig(
        sim.host,
        sim.port,
        sim.all_creds(),
        sim.cards(),
        duration_s=duration,
        seed=7,
        rate=8.0,
        loss_per_minute=loss_per_minute,
        max_lost_fraction=0.3,
        heartbeat_interval_s=1.0,
        request_timeout_s=timeout,
        drain_timeout_s=15.0,
    )


@pytest.mark.broker
@pytest.mark.asyncio
async def test_fleet_of_ten_holds_the_invariants_and_lost_cards_stay_declined(
    sim: SimCampus,
) -> None:
    runner = FleetRunner(config(sim, 4.0))
    async with asyncio.timeout(60):
        result = await runner.run()
    assert result.ok, result.format()
    assert sum(result.terminals.values()) == 10
    assert result.taps >= 20
    assert result.approvals >= 10
    assert result.latency_ms["p50"] > 0
    assert result.loss_reports, result.format()
    # terminals heartbeat right after applying a change, so the kiosk hears they hold it
    # (the gateway waits at most applied_wait_ms, so a report under load may count fewer)
    assert any((r.terminals_applied or 0) >= 1 for r in result.loss_reports)
    assert result.offline_unresolved == 0
    # every card the kiosks reported lost is declined at a POS afterwards (LOSS-2)
    pos = Pos(sim.creds("pos-004"), sim.host, sim.port)
    async with asyncio.timeout(20), pos:
        await pos.wait_synced()
        for card in runner.lost:
            refused = await pos.sale(card.uid, 100)
            assert (refused.mode, refused.code) == (Mode.ONLINE, "card_lost")
            assert card.uid in pos.deny


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.asyncio
async def test_fleet_survives_a_gateway_restart_without_losing_offline_sales(
    sim: SimCampus,
) -> None:
    """The gateway goes away mid-run: POS terminals sell offline, then upload every sale once.

    A request sent just before the gateway said ``offline`` waits in the gateway's persistent
    session; with a short timeout it turns in doubt and is settled after the restart (§6)."""
    runner = FleetRunner(config(sim, 7.0, loss_per_minute=10.0, timeout=0.4))

    async def outage() -> None:
        await asyncio.sleep(2.0)
        await sim.stop()
        await asyncio.sleep(2.5)
        await sim.start()

    async with asyncio.timeout(90):
        result, _ = await asyncio.gather(runner.run(), outage())
    assert result.ok, result.format()
    assert result.modes.get("offline", 0) > 0
    assert result.offline_stored > 0
    assert result.offline_uploaded + result.offline_rejected == result.offline_stored
    async with sim.campus.registry.read() as tx:
        rows = await tx.rows("SELECT terminal_id, seq FROM offline_sales ORDER BY terminal_id, seq")
    by_pos: dict[str, list[int]] = {}
    for row in rows:
        by_pos.setdefault(row["terminal_id"], []).append(int(row["seq"]))
    for seqs in by_pos.values():
        assert seqs == list(range(1, len(seqs) + 1))  # no gaps, no doubles
    assert sum(len(s) for s in by_pos.values()) == result.offline_stored


@pytest.mark.broker
@pytest.mark.asyncio
async def test_cli_fleet_run(sim: SimCampus) -> None:
    terminals, cards = sim.write_files()
    out = sim.tmp_path / "result.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        "fleet",
        "--host",
        sim.host,
        "--port",
        str(sim.port),
        "--terminals",
        str(terminals),
        "--cards",
        str(cards),
        "--duration",
        "2",
        "--seed",
        "1",
        "--heartbeat",
        "1",
        "--json",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
    except TimeoutError:
        proc.kill()
        stdout, stderr = await proc.communicate()
        raise AssertionError((stdout.decode(), stderr.decode()[-3000:])) from None
    assert proc.returncode == 0, (stdout.decode(), stderr.decode()[-2000:])
    assert "invariants: all held" in stdout.decode()
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["taps"] > 0
