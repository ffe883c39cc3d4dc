"""Counter + terminal scenarios (issue #4): the counter through the `onecard` CLI with business
time moved by ONECARD_NOW, the effect checked at real MQTT terminals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gateway.services.base import Actor
from simulators.counter_scenarios import COUNTER_SCENARIOS, CounterCli
from simulators.scenarios import ScenarioContext
from tests.simulators.conftest import SimCampus

pytestmark = [pytest.mark.broker, pytest.mark.asyncio, pytest.mark.slow]


async def _counter(sim: SimCampus) -> CounterCli:
    center = sim.campus.center
    await center.operators.bootstrap("chief", "王科长", "First-pass-1")
    await center.operators.change_password(
        (await center.operators.login("chief", "First-pass-1")).token,
        "First-pass-1",
        "Counter-2026",
    )
    session = await center.operators.login("chief", "Counter-2026")
    assert isinstance(session.actor, Actor)
    path = sim.tmp_path / "session.json"
    path.write_text(json.dumps({"token": session.token, "user": "chief"}))
    return CounterCli(
        executable=str(Path(sys.executable).parent / "onecard"),
        env={"ONECARD_DB": str(sim.tmp_path / "campus.sqlite3"), "ONECARD_SESSION": str(path)},
    )


@pytest.mark.parametrize("name", sorted(COUNTER_SCENARIOS))
async def test_counter_scenario(sim: SimCampus, name: str) -> None:
    ctx = ScenarioContext(
        host=sim.host,
        port=sim.port,
        terminals=sim.all_creds(),
        cards=sim.cards(),
        heartbeat_interval_s=1.0,
        extra={
            "counter": await _counter(sim),
            "college": "计算机学院",
            "class_name": "计科2026-1班",
        },
    )
    result = await COUNTER_SCENARIOS[name](ctx)
    assert result.ok, result.format()
    assert len(result.checks) >= 6
