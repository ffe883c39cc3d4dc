"""The gateway's deny state survives whatever the registry's log holds (issue 8, items 10, 12)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.denylist import DenyState
from protocol.errors import ErrorCode
from protocol.wire import DenyList, DenySnapshot

NOW_MS = 1_780_000_000_000


def row(version: int, uid: str | None, change: str = "report_loss", denied: bool = True) -> Any:
    return {"version": version, "card_id": version, "uid": uid, "change": change, "denied": denied}


def test_load_skips_bad_uids_normalises_lower_case_and_keeps_the_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lower-case UID (a clerk's typo before validation) is recovered; garbage and NULL rows
    are skipped and logged masked; the version is the log's last; the snapshot is valid."""
    state = DenyState()
    with caplog.at_level(logging.WARNING, logger="onecard.denylist"):
        state.load_rows(
            [
                row(1, "04a1b2c3d4"),
                row(2, "not-a-uid-0123456789"),
                row(3, None),
                row(4, "04:B1:B2:B3"),
                row(5, "ABC"),
            ]
        )
    assert state.version == 5
    assert state.skipped == 3
    assert state.codes == {"04A1B2C3D4": ErrorCode.CARD_LOST, "04B1B2B3": ErrorCode.CARD_LOST}
    snapshot = state.snapshot(NOW_MS)
    assert DenySnapshot.model_validate_json(snapshot.model_dump_json()) == snapshot
    assert snapshot.version == 5
    text = caplog.text
    assert "skipped 3 rows" in text
    assert "not-a-uid-0123456789" not in text  # masked


def test_null_uid_advances_the_version_and_forces_a_snapshot() -> None:
    """Used to be skipped without advancing: the published version lagged for ever, and the next
    real change raised a gap error that ended the deny watcher."""
    state = DenyState()
    state.load_rows([row(1, "04A1B2C3")])
    state.snapshot(NOW_MS)
    assert state.apply_rows([row(2, None)]) == []
    assert (state.version, state.needs_snapshot) == (2, True)
    changes = state.apply_rows([row(3, "04D1D2D3", "report_loss")])
    assert [c.version for c in changes] == [3]
    assert state.version == 3
    assert state.cumulative_delta() is None  # a delta cannot span version 2
    snapshot = state.snapshot(NOW_MS)
    assert (snapshot.version, snapshot.entries) == (3, ["04A1B2C3", "04D1D2D3"])
    assert state.needs_snapshot is False
    # after the snapshot, deltas are consecutive again
    state.apply_rows([row(4, "04A1B2C3", "unlock", denied=False)])
    delta = state.cumulative_delta()
    assert delta is not None
    assert (delta.from_version, delta.to_version) == (3, 4)
    terminal = DenyList.from_snapshot(snapshot)
    terminal.apply(delta)
    assert terminal.entries == {"04D1D2D3"}


def test_version_jump_is_accepted_not_fatal() -> None:
    state = DenyState()
    state.load_rows([row(1, "04A1B2C3")])
    state.snapshot(NOW_MS)
    changes = state.apply_rows([row(5, "04D1D2D3"), row(6, "04e1e2e3")])
    assert [c.version for c in changes] == [5, 6]
    assert [c.card for c in changes] == ["04D1D2D3", "04E1E2E3"]
    assert (state.version, state.gaps, state.needs_snapshot) == (6, 1, True)
    assert state.cumulative_delta() is None
    assert state.snapshot(NOW_MS).count == 3


def test_garbage_uid_in_apply_rows_is_skipped_and_counted() -> None:
    state = DenyState()
    state.apply_rows([row(1, "04A1B2C3"), row(2, "zz"), row(3, "04A1B2C3", "unlock", False)])
    assert (state.version, state.skipped, state.codes) == (3, 1, {})


def test_consecutive_rows_still_give_a_delta() -> None:
    state = DenyState()
    state.snapshot(NOW_MS)
    state.apply_rows([row(1, "04A1B2C3"), row(2, "04A1B2C4")])
    delta = state.cumulative_delta()
    assert delta is not None
    assert (delta.from_version, delta.to_version, len(delta.changes)) == (0, 2, 2)
    assert not state.needs_snapshot
