"""Simulated terminals against the contract: deny-list handling and offline decisions (pure, no
broker), then online purchases, retries and deny-list propagation against the real campus."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from protocol.errors import ErrorCode
from protocol.wire import (
    DenyChange,
    DenyChangeKind,
    DenyDelta,
    PurchaseResponse,
    TerminalConfig,
    TerminalKind,
    make_snapshot,
)
from simulators.terminals import (
    Credentials,
    DoorReader,
    Kiosk,
    Mode,
    Pos,
    TapResult,
    WaterController,
)
from tests.simulators.conftest import SimCampus

A, B, C = "04A1B2C3D4E5F6", "04C0FFEE1234AB", "04D00D0000AB12"
CONFIG = TerminalConfig(
    heartbeat_interval_s=30,
    offline_max_age_s=600,
    offline_max_amount_fen=2000,
    offline_max_daily_fen=5000,
    offline_max_count=5,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.ms = 1_767_225_600_000  # 2026-01-01 08:00 campus time

    def monotonic(self) -> float:
        return self.t

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.ms += int(seconds * 1000)


def offline_pos(clock: FakeClock, config: TerminalConfig = CONFIG) -> Pos:
    """A POS that got a hello reply and a fresh deny list, then lost the gateway."""
    pos = Pos(Credentials("pos-001", TerminalKind.POS, "x"), "127.0.0.1", 1, clock=clock)
    pos.config = config
    pos._on_message(
        "onecard/v1/blacklist/snapshot", make_snapshot(3, [B], 0).model_dump_json().encode()
    )
    return pos


def delta(start: int, *changes: tuple[str, DenyChangeKind]) -> bytes:
    items = [DenyChange(version=start + i + 1, card=c, kind=k) for i, (c, k) in enumerate(changes)]
    d = DenyDelta(from_version=start, to_version=start + len(items), changes=items)
    return d.model_dump_json().encode()


# --------------------------------------------------------------------------- deny list (§8.1, §8.2)


def test_snapshot_then_retained_cumulative_delta_and_redelivery() -> None:
    pos = offline_pos(FakeClock())
    assert pos.deny.version == 3
    assert B in pos.deny
    cumulative = delta(3, (A, DenyChangeKind.LOST), (B, DenyChangeKind.UNLOCKED))
    pos._on_message("onecard/v1/blacklist/delta", cumulative)
    pos._on_message("onecard/v1/blacklist/delta", cumulative)  # QoS 1 redelivery: no-op
    pos._on_message("onecard/v1/blacklist/delta", b"")  # retained delta cleared: ignored
    assert pos.deny.version == 5
    assert A in pos.deny
    assert B not in pos.deny
    assert pos.deny_reasons[A] is ErrorCode.CARD_LOST
    # an older snapshot does not roll the list back
    pos._on_message(
        "onecard/v1/blacklist/snapshot", make_snapshot(3, [B], 0).model_dump_json().encode()
    )
    assert pos.deny.version == 5


def test_gap_waits_for_the_snapshot_and_bad_snapshots_are_ignored() -> None:
    pos = offline_pos(FakeClock())
    pos._on_message("onecard/v1/blacklist/delta", delta(7, (C, DenyChangeKind.FROZEN)))
    assert pos.deny.version == 3  # gap: keep what we hold (§8.2)
    assert C not in pos.deny
    bad = make_snapshot(7, [A], 0).model_dump_json().replace(A, C).encode()  # hash mismatch
    pos._on_message("onecard/v1/blacklist/snapshot", bad)
    assert pos.deny.version == 3
    pos._on_message(
        "onecard/v1/blacklist/snapshot", make_snapshot(7, [A], 0).model_dump_json().encode()
    )
    assert pos.deny.version == 8  # the snapshot, then the delta that waited
    assert A in pos.deny
    assert C in pos.deny
    assert pos.deny_reasons[C] is ErrorCode.CARD_FROZEN


# --------------------------------------------------------------------------- offline rules (§8.3)


@pytest.mark.asyncio
async def test_offline_sales_within_limits_get_consecutive_seqs() -> None:
    clock = FakeClock()
    pos = offline_pos(clock)
    first = await pos.sale(A.lower(), 2000)
    second = await pos.meal(C, 1500)
    assert (first.mode, first.approved, first.seq) == (Mode.OFFLINE, True, 1)
    assert (second.approved, second.seq) == (True, 2)
    assert [s.seq for s in pos.backlog] == [1, 2]
    assert pos.backlog[0].card == A  # normalised to upper case (§1)
    assert pos.unresolved_offline() == [1, 2]


@pytest.mark.asyncio
async def test_offline_refusals_limits_deny_list_and_stale_list() -> None:
    clock = FakeClock()
    pos = offline_pos(clock)
    lost = await pos.sale(B, 100)
    assert (lost.approved, lost.code) == (False, ErrorCode.CARD_VOID.value)  # reason unknown
    assert (await pos.sale(A, 2001)).code == "offline_over_sale_limit"
    assert (await pos.sale(A, 2000)).approved
    assert (await pos.sale(A, 2000)).approved
    assert (await pos.sale(A, 1001)).code == "offline_over_daily_limit"  # 5000 per card per day
    assert (await pos.sale(A, 1000)).approved
    assert (await pos.sale(C, 100)).approved
    assert (await pos.sale(C, 100)).approved
    assert (await pos.sale(C, 100)).code == "offline_backlog_full"  # offline_max_count = 5
    pos.backlog.clear()
    clock.advance(24 * 3600)  # next campus day, but the list is now a day old
    assert (await pos.sale(A, 100)).code == "offline_stale"
    pos._on_message("onecard/v1/blacklist/delta", delta(3, (C, DenyChangeKind.LOST)))
    assert (await pos.sale(A, 1000)).approved  # fresh again, and a new day for card A
    refused = await pos.sale(C, 100)
    assert refused.code == ErrorCode.CARD_LOST.value
    assert pos.next_seq == 7  # seqs 1..6, never reused
    disabled = offline_pos(clock, CONFIG.model_copy(update={"offline_max_amount_fen": 0}))
    assert (await disabled.sale(A, 1)).code == "offline_over_sale_limit"


@pytest.mark.asyncio
async def test_offline_door_and_kiosk() -> None:
    clock = FakeClock()
    door = DoorReader(Credentials("door-001", TerminalKind.DOOR, "x"), "127.0.0.1", 1, clock=clock)
    assert (await door.access(A)).code == "offline_stale"  # no hello yet: approve nothing
    door.config = CONFIG
    door._on_message(
        "onecard/v1/blacklist/snapshot", make_snapshot(1, [B], 0).model_dump_json().encode()
    )
    assert (await door.access(A)).approved
    assert not (await door.access(B)).approved
    kiosk = Kiosk(Credentials("kiosk-001", TerminalKind.KIOSK, "x"), "127.0.0.1", 1)
    assert (await kiosk.login("2026000001", "123456")).code == "offline_offline"


# --------------------------------------------------------------------------- against the campus


@pytest.mark.broker
@pytest.mark.asyncio
async def test_online_sale_then_in_doubt_retry_with_same_request_id_debits_once(
    sim: SimCampus,
) -> None:
    """§6: no reply (the registry is locked) -> in doubt; back online the same request id is
    retried before any new sale, and the purse is debited once."""
    s = sim.campus.students[0]
    seen: list[TapResult] = []
    pos = Pos(
        sim.creds("pos-001"),
        sim.host,
        sim.port,
        request_timeout_s=0.3,
        retries=2,
        heartbeat_interval_s=0.5,
        observer=seen.append,
    )
    async with asyncio.timeout(30), pos:
        await pos.wait_synced()
        ok = await pos.sale(s.uid, 500)
        assert (ok.mode, ok.approved, ok.balance_after_fen) == (Mode.ONLINE, True, 9500)
        lock = sqlite3.connect(sim.tmp_path / "campus.sqlite3")
        lock.execute("BEGIN IMMEDIATE")  # the gateway cannot commit: no reply in time
        try:
            doubt = await pos.sale(s.uid, 1234)
            assert doubt.mode is Mode.IN_DOUBT
            assert not doubt.approved
            assert pos.in_doubt == 1
            assert not pos.online
        finally:
            lock.rollback()
            lock.close()
        await pos.wait_synced(10)
        assert pos.in_doubt == 0
        late = [r for r in seen if r.mode is Mode.LATE]
        assert len(late) == 1
        assert late[0].request_id == doubt.request_id
        assert late[0].approved
        assert isinstance(late[0].data, PurchaseResponse)
        after = await pos.sale(s.uid, 100)
        assert after.balance_after_fen == 10_000 - 500 - 1234 - 100
    assert pos.violations == []
    assert await sim.campus.balance(s) == 10_000 - 500 - 1234 - 100
    async with sim.campus.registry.read() as tx:
        rows = await tx.find("transfers", terminal_id="pos-001", kind="purchase")
    assert len(rows) == 3
    assert sim.gateway.metrics.replays._value.get() >= 1


@pytest.mark.broker
@pytest.mark.asyncio
async def test_deny_list_changes_reach_terminals_and_they_heartbeat(sim: SimCampus) -> None:
    """A counter loss report (LOSS-2) reaches a running POS as a delta (it heartbeats at once)
    and a POS started later from the retained snapshot + cumulative delta."""
    s = sim.campus.students[1]
    pos = Pos(sim.creds("pos-001"), sim.host, sim.port, heartbeat_interval_s=60)
    async with asyncio.timeout(30), pos:
        await pos.wait_synced()
        beats = pos.heartbeats
        await sim.campus.center.cards.report_loss(sim.campus.admin, s.serial, presented_id=s.number)
        async with asyncio.timeout(5):
            while s.uid not in pos.deny or pos.heartbeats == beats:
                await asyncio.sleep(0.02)
        assert pos.deny_reasons[s.uid] is ErrorCode.CARD_LOST
        assert sim.gateway.fleet.terminals["pos-001"].version == pos.deny.version
        refused = await pos.sale(s.uid, 100)
        assert (refused.mode, refused.code) == (Mode.ONLINE, "card_lost")
        late = Pos(sim.creds("pos-002"), sim.host, sim.port)
        async with late:
            await late.wait_synced()
            assert s.uid in late.deny
            assert late.deny.version == pos.deny.version


@pytest.mark.broker
@pytest.mark.asyncio
async def test_kiosk_door_water_online(sim: SimCampus) -> None:
    s = sim.campus.students[2]
    kiosk = Kiosk(sim.creds("kiosk-001"), sim.host, sim.port)
    door = DoorReader(sim.creds("door-001"), sim.host, sim.port)
    water = WaterController(sim.creds("water-001"), sim.host, sim.port)
    async with asyncio.timeout(30), kiosk, door, water:
        await asyncio.gather(kiosk.wait_synced(), door.wait_synced(), water.wait_synced())
        assert (await door.access(s.uid)).approved
        held = await water.hold(s.uid, 300)
        assert held.approved
        settled = await water.settle(held.data.hold_id, 120)
        assert settled.data.charged_fen == 120
        topped = await kiosk.topup(1000, "sim-test-1", card=s.uid)
        assert topped.balance_after_fen == 10_000 - 120 + 1000
        balance = await kiosk.login_and_balance(s.number, s.password)
        assert balance.data.balance_fen == 10_000 - 120 + 1000
        wrong = await kiosk.login(s.number, "nope-nope")
        assert wrong.code == "auth_failed"
        lost = await kiosk.login_and_report_loss(s.number, s.password)
        assert lost.approved
        assert lost.data.terminals_applied >= 1
        denied = await door.access(s.uid)
        assert (denied.approved, denied.code) == (False, "card_lost")


@pytest.mark.asyncio
async def test_pos_state_file_keeps_seq_and_backlog_across_restarts(tmp_path: Path) -> None:
    """§8.3: seq is stored persistently and never reused; unsent sales survive a restart."""
    clock = FakeClock()
    creds = Credentials("pos-001", TerminalKind.POS, "x")
    first = Pos(creds, "127.0.0.1", 1, clock=clock, state_path=tmp_path / "pos-001.json")
    first.config = CONFIG
    first.fresh_at = clock.monotonic()
    assert (await first.sale(A, 100)).seq == 1
    assert (await first.sale(A, 200)).seq == 2
    again = Pos(creds, "127.0.0.1", 1, clock=clock, state_path=tmp_path / "pos-001.json")
    assert [s.amount_fen for s in again.backlog] == [100, 200]
    assert again.next_seq == 3
    assert again.next_request_id() != first.next_request_id()  # a new start token
