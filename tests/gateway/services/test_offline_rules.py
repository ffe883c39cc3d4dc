"""The pure settlement rules of offline sales (terminal contract §8.3, LOSS-2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.services.offline import (
    Bearer,
    DenyEntry,
    SettlementRules,
    amount_verdict,
    card_state_verdict,
    clock_verdict,
    daily_verdict,
    merchant_verdict,
    sale_time,
)
from protocol.errors import ErrorCode
from protocol.wire import TerminalConfig

RULES = SettlementRules.from_config(
    TerminalConfig(
        heartbeat_interval_s=30,
        offline_max_age_s=600,
        offline_max_amount_fen=2000,
        offline_max_daily_fen=5000,
        offline_max_count=500,
    )
)
YEAR_10000_MS = 253_402_300_800_000


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


T = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def test_card_state_verdict_grid() -> None:
    lost = DenyEntry(5, T, ErrorCode.CARD_LOST)
    unlocked = DenyEntry(8, T + timedelta(hours=2), None)
    history = [lost, unlocked]
    after = T + timedelta(minutes=5)
    # before the loss, or after the unlock: the holder's
    assert card_state_verdict(history, T - timedelta(seconds=1), 4, T, RULES).accepted
    assert card_state_verdict(history, T + timedelta(hours=3), 4, T, RULES).accepted
    # the terminal held the loss
    assert card_state_verdict(history, after, 5, None, RULES).code is ErrorCode.CARD_LOST
    assert card_state_verdict(history, after, 7, None, RULES).code is ErrorCode.CARD_LOST
    # it could not know: within the allowed age accepted (disputed), beyond it stale
    fresh = card_state_verdict(history, after, 4, T, RULES)
    assert (fresh.accepted, fresh.bearer, fresh.detail is not None) == (True, Bearer.HOLDER, True)
    stale = card_state_verdict(history, T + timedelta(minutes=11), 4, T, RULES)
    assert (stale.code, stale.bearer) == (ErrorCode.DENYLIST_STALE, Bearer.MERCHANT)
    # the list went out of date before the card's own change: counted from then
    early = card_state_verdict(history, after, 3, T - timedelta(minutes=6), RULES)
    assert early.code is ErrorCode.DENYLIST_STALE
    # no version given: stale
    assert card_state_verdict(history, after, None, None, RULES).code is ErrorCode.DENYLIST_STALE


def test_clock_window_and_unrepresentable_times() -> None:
    assert sale_time(YEAR_10000_MS) is None
    assert sale_time(ms(T)) == T
    assert clock_verdict(YEAR_10000_MS, T, RULES) is not None
    assert clock_verdict(2**53 - 1, T, RULES) is not None
    assert clock_verdict(ms(T + timedelta(minutes=5)), T, RULES) is None
    late = clock_verdict(ms(T - timedelta(days=7, seconds=1)), T, RULES)
    assert late is not None and late.code is ErrorCode.TOO_LATE


def test_merchant_and_limits() -> None:
    assert merchant_verdict(None, "canteen1") is None
    assert merchant_verdict("canteen1", "canteen1") is None
    assert merchant_verdict("canteen2", "canteen1") is not None
    assert merchant_verdict("canteen2", None) is not None
    assert amount_verdict(2000, RULES) is None
    assert amount_verdict(2001, RULES) is not None
    disabled = SettlementRules(0, 5000, timedelta(minutes=10))
    assert amount_verdict(1, disabled) is not None
    assert daily_verdict(2000, 3000, RULES) is None
    refused = daily_verdict(2001, 3000, RULES)
    assert refused is not None and refused.code is ErrorCode.OFFLINE_LIMIT
