"""``conformance terminal`` against the project's simulators: a POS and a door reader pass; for
each rule the kit checks, a deliberately broken simulator fails exactly the matching step.

One private Mosquitto (production ACL, per-terminal passwords) for the whole module; no gateway:
the kit plays it. Runs are short: heartbeat every 1 s, offline_max_age 2 s, request timeout
0.5 s, and a broken variant runs only the start-up steps and its own."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance import Report, TerminalPlan, run_terminal_suite
from conformance.__main__ import main
from conformance.mqtt import Broker
from protocol.wire import TerminalKind
from simulators.terminals import Credentials, DoorReader, Pos, Terminal
from tests.broker import PrivateBroker
from tests.conformance import rigs

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="module")]

STARTUP = {"T01", "T02", "T03", "T04", "T05"}
USERS = {"gateway": "pw-gateway", "pos-101": "pw-pos", "door-101": "pw-door"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    with PrivateBroker(tmp_path_factory.mktemp("kit-broker"), users=USERS) as b:
        yield b


async def run(
    broker: PrivateBroker,
    cls: type[Terminal],
    kind: TerminalKind,
    only: set[str] | None = None,
) -> Report:
    tid = f"{kind.value}-101"
    creds = Credentials(tid, kind, USERS[tid])
    rig = rigs.SimRig(rigs.factory(cls, creds, broker.host, broker.port))
    plan = TerminalPlan(
        tid,
        kind,
        heartbeat_interval_s=1,
        offline_max_age_s=2,
        retry_within_s=5.0,
        start_within_s=10.0,
        will_within_s=3.0,  # the rig drops the TCP connection: the broker sees it at once
        only=None if only is None else frozenset(only | STARTUP),
    )
    report = Report("terminal", tid)
    return await run_terminal_suite(
        Broker(broker.host, broker.port), "gateway", USERS["gateway"], plan, rig, report
    )


def failures(report: Report) -> dict[str, str]:
    return {s.id: s.detail for s in report.steps if s.status == "failed"}


async def test_simulated_pos_passes(broker: PrivateBroker, tmp_path: Path) -> None:
    report = await run(broker, Pos, TerminalKind.POS)
    assert failures(report) == {}
    ids = {s.id: s.status.value for s in report.steps}
    assert set(ids) == {f"T{n:02d}" for n in range(1, 23)}
    assert set(ids.values()) == {"passed"}  # T22 too: the rig pulls the plug
    report.write_html(tmp_path / "r.html")
    assert "T18" in (tmp_path / "r.html").read_text()


async def test_simulated_door_passes(broker: PrivateBroker) -> None:
    """The door's own steps (the deny-list steps T07/T08 are the POS's, same code)."""
    door_steps = {"T06", "T09", "T10", "T11", "T12", "T16", "T17", "T20", "T21", "T22"}
    report = await run(broker, DoorReader, TerminalKind.DOOR, only=door_steps)
    assert failures(report) == {}
    assert {s.id for s in report.steps if s.status == "passed"} == door_steps | STARTUP


BROKEN = [
    # the hello of T03 is retried under a new id as well: the same rule, found twice
    pytest.param(rigs.NewIdOnRetry, "T09", {"T03"}, id="new-id-on-retry"),
    # T03 retries T02's hello, which never came first
    pytest.param(rigs.HeartbeatBeforeHello, "T02", {"T03"}, id="heartbeat-before-hello"),
    pytest.param(rigs.SilentOnChange, "T06", set(), id="no-ack-heartbeat"),
    pytest.param(rigs.TrustsAnySnapshot, "T07", set(), id="bad-hash-accepted"),
    pytest.param(rigs.AppliesAcrossGaps, "T08", set(), id="gap-applied"),
    pytest.param(rigs.UnavailableIsFinal, "T11", set(), id="unavailable-final"),
    pytest.param(rigs.IgnoresDenyListOffline, "T12", set(), id="deny-list-ignored-offline"),
    pytest.param(rigs.NoOfflineSaleLimit, "T13", set(), id="no-offline-sale-limit"),
    pytest.param(rigs.NeverStale, "T16", set(), id="never-stale"),
    pytest.param(rigs.UploadsNewestFirst, "T18", set(), id="upload-out-of-order"),
    pytest.param(rigs.NoLastWill, "T22", set(), id="no-last-will"),
]


@pytest.mark.parametrize(("variant", "step", "also"), BROKEN)
async def test_a_broken_rule_fails_its_step(
    broker: PrivateBroker, variant: type[Pos], step: str, also: set[str]
) -> None:
    needs = {"T12": {"T06"}, "T13": set(), "T16": set(), "T18": {"T14"}}.get(step, set())
    report = await run(broker, variant, TerminalKind.POS, only={step} | needs)
    failed = failures(report)
    assert step in failed, f"{variant.__name__} passed {step}"
    assert set(failed) == {step} | also, failed


async def test_cli_with_the_simulator_behind_a_hook(broker: PrivateBroker, tmp_path: Path) -> None:
    """The README's way: ``python -m conformance terminal --hook "python -m simulators rig"``;
    a short run (start-up and the acknowledgement step), JSON and HTML written, exit 0."""
    (tmp_path / "gw").write_text(USERS["gateway"])
    (tmp_path / "pos").write_text(USERS["pos-101"])
    hook = (
        f"{sys.executable} -m simulators rig --port {broker.port} --id pos-101 --kind pos"
        f" --password-file {tmp_path / 'pos'} --timeout 0.5"
    )
    args = [
        "terminal",
        *("--port", str(broker.port), "--gateway-password-file", str(tmp_path / "gw")),
        *("--terminal-id", "pos-101", "--kind", "pos", "--hook", hook, "--heartbeat", "1"),
        *("--only", "T06,T20", "--out", str(tmp_path / "out")),
    ]
    assert await asyncio.to_thread(main, args) == 0
    data = json.loads((tmp_path / "out" / "conformance-terminal.json").read_text())
    assert [s["id"] for s in data["steps"]] == ["T01", "T02", "T03", "T04", "T05", "T06", "T20"]
    assert data["result"] == "passed"
