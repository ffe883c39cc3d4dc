"""What contract 1.1 asks of a terminal that the simulators implement without a broker (pure):
a compaction snapshot at the version held changes nothing and sends no heartbeat; a gateway
status naming a newer deny-list version for 5 s makes the terminal re-read the list (§8.5)."""

from __future__ import annotations

from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    DenyChangeKind,
    GatewayStatus,
    Presence,
    make_snapshot,
)
from simulators.terminals import LAG_RESYNC_S
from tests.simulators.test_terminals import B, FakeClock, delta, offline_pos

LOST = "04C0FFEE1234AB"


def status(version: int) -> bytes:
    return GatewayStatus(state=Presence.ONLINE, denylist_version=version).model_dump_json().encode()


def test_a_compaction_snapshot_at_the_version_held_sends_no_heartbeat() -> None:
    pos = offline_pos(FakeClock())  # holds snapshot 3
    pos._wake.clear()
    pos._on_message(DENYLIST_DELTA_TOPIC, delta(3, (LOST, DenyChangeKind.LOST)))
    assert pos.deny.version == 4
    assert pos._wake.is_set()  # the acknowledgement heartbeat (§8.5)
    pos._wake.clear()
    same = make_snapshot(4, sorted([B, LOST]), 0).model_dump_json().encode()
    pos._on_message(DENYLIST_SNAPSHOT_TOPIC, same)
    assert pos.deny.version == 4
    assert LOST in pos.deny
    assert not pos._wake.is_set()  # nothing changed: nothing to acknowledge


def test_behind_the_gateway_status_for_5_s_rereads_the_list() -> None:
    clock = FakeClock()
    pos = offline_pos(clock)  # holds 3
    reread: list[str] = []
    pos.link.resubscribe = reread.append  # type: ignore[method-assign,assignment]
    pos._on_message(GATEWAY_STATUS_TOPIC, status(3))
    pos._on_message(GATEWAY_STATUS_TOPIC, status(5))  # a delta to 5 was lost
    assert reread == []
    clock.advance(LAG_RESYNC_S - 0.1)
    pos._check_lag()
    assert reread == []
    clock.advance(0.2)
    pos._check_lag()
    assert reread == [DENYLIST_SNAPSHOT_TOPIC, DENYLIST_DELTA_TOPIC]
    clock.advance(1)
    pos._check_lag()  # not again before another LAG_RESYNC_S
    assert len(reread) == 2


def test_a_delta_that_catches_up_cancels_the_reread() -> None:
    clock = FakeClock()
    pos = offline_pos(clock)
    reread: list[str] = []
    pos.link.resubscribe = reread.append  # type: ignore[method-assign,assignment]
    pos._on_message(GATEWAY_STATUS_TOPIC, status(4))
    pos._on_message(DENYLIST_DELTA_TOPIC, delta(3, (LOST, DenyChangeKind.LOST)))
    clock.advance(LAG_RESYNC_S + 1)
    pos._check_lag()
    assert reread == []
