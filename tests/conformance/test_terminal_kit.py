"""``conformance terminal`` against the project's simulators: a POS and a door reader pass; for
each rule the kit checks, a deliberately broken simulator fails exactly the matching step.

One private Mosquitto (production ACL, per-terminal passwords) for the whole module; no gateway:
the kit plays it. Runs are short: heartbeat every 2 s, offline_max_age 2 s, request timeout
0.5 s, and a broken variant runs only the start-up steps and its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from conformance import Report, TapOutcome, TerminalPlan, run_terminal_suite
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
        heartbeat_interval_s=2,  # the 1 s acknowledgement must beat the periodic one
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


#: (variant, the step it must fail, other steps it fails for the same fault)
BROKEN: dict[str, tuple[type[Pos], str, set[str]]] = {
    # the hello of T03 is retried under a new id as well: the same rule, found twice
    "new-id-on-retry": (rigs.NewIdOnRetry, "T09", {"T03"}),
    # T03 retries T02's hello, which never came first
    "heartbeat-before-hello": (rigs.HeartbeatBeforeHello, "T02", {"T03"}),
    "no-ack-heartbeat": (rigs.SilentOnChange, "T06", set()),
    "bad-hash-accepted": (rigs.TrustsAnySnapshot, "T07", set()),
    "gap-applied": (rigs.AppliesAcrossGaps, "T08", set()),
    "unavailable-final": (rigs.UnavailableIsFinal, "T11", set()),
    "deny-list-ignored-offline": (rigs.IgnoresDenyListOffline, "T12", set()),
    "no-offline-sale-limit": (rigs.NoOfflineSaleLimit, "T13", set()),
    "never-stale": (rigs.NeverStale, "T16", set()),
    "upload-out-of-order": (rigs.UploadsNewestFirst, "T18", set()),
    "no-last-will": (rigs.NoLastWill, "T22", set()),
}
#: steps a variant's own step builds on
_NEEDS = {"T12": {"T06"}, "T18": {"T14"}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broken(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Report]]:
    """Every broken variant at once, each on its own private broker (the kit publishes the
    retained gateway status and deny list, so two runs cannot share one): the runs mostly wait
    on timers, so together they take about as long as the longest."""
    with contextlib.ExitStack() as stack:
        brokers = {
            key: stack.enter_context(
                PrivateBroker(tmp_path_factory.mktemp(f"kit-{key}"), users=USERS)
            )
            for key in BROKEN
        }
        runs = [
            run(brokers[key], cls, TerminalKind.POS, only={step} | _NEEDS.get(step, set()))
            for key, (cls, step, _) in BROKEN.items()
        ]
        yield dict(zip(BROKEN, await asyncio.gather(*runs), strict=True))


@pytest.mark.parametrize("key", list(BROKEN))
async def test_a_broken_rule_fails_its_step(broken: dict[str, Report], key: str) -> None:
    variant, step, also = BROKEN[key]
    failed = failures(broken[key])
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
        *("--terminal-id", "pos-101", "--kind", "pos", "--hook", hook, "--heartbeat", "2"),
        *("--only", "T06,T20", "--out", str(tmp_path / "out")),
    ]
    assert await asyncio.to_thread(main, args) == 0
    data = json.loads((tmp_path / "out" / "conformance-terminal.json").read_text())
    assert [s["id"] for s in data["steps"]] == ["T01", "T02", "T03", "T04", "T05", "T06", "T20"]
    assert data["result"] == "passed"


class HostileRig:
    """Not a terminal: a client under the terminal's account that sends what an attacker would
    (nested JSON that breaks parsers, markup for the report, a huge payload)."""

    def __init__(self, broker: PrivateBroker) -> None:
        self.broker = broker
        self.client: aiomqtt.Client | None = None

    async def start(self) -> None:
        self.client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username="pos-101",
            password=USERS["pos-101"],
            identifier="pos-101",
            protocol=aiomqtt.ProtocolVersion.V5,
        )
        await self.client.__aenter__()
        status = b'{"v":1,"state":"online","firmware":"<script>alert(1)</script>"}'
        await self.client.publish("onecard/v1/t/pos-101/status", status, qos=1, retain=True)
        for payload in (b"[" * 16_000, b"<script>alert(2)</script>", b"{" + b" " * 200_000):
            await self.client.publish("onecard/v1/t/pos-101/req/hello", payload, qos=1)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.publish("onecard/v1/t/pos-101/status", b"", qos=1, retain=True)
            await self.client.__aexit__(None, None, None)
            self.client = None

    async def power_cut(self) -> bool:
        return False

    async def tap(self, card: str, amount_fen: int) -> TapOutcome:
        return TapOutcome(True)


async def test_a_hostile_device_gets_failed_steps_and_an_escaped_report(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    plan = TerminalPlan(
        "pos-101",
        TerminalKind.POS,
        heartbeat_interval_s=1,
        retry_within_s=1.0,
        start_within_s=3.0,
        only=frozenset({"T20"} | STARTUP),
    )
    report = Report("terminal", "hostile")
    rig = HostileRig(broker)
    broker_at = Broker(broker.host, broker.port)
    await run_terminal_suite(broker_at, "gateway", USERS["gateway"], plan, rig, report)
    failed = failures(report)
    assert {"T02", "T20"} <= set(failed)
    assert "malformed" in failed["T02"]
    report.write_html(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(2)" in html
    evidence = [e.payload for s in report.steps for e in s.evidence]
    assert all(len(p) < 700 for p in evidence)  # a 200 kB payload is cut in the report
