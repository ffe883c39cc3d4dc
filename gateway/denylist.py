"""The gateway's deny list: an in-memory set built from the registry's append-only change log,
published to terminals as a retained snapshot plus a retained cumulative delta (ARCHITECTURE §4).

The delta on ``onecard/v1/blacklist/delta`` always runs from the current snapshot's version to
the newest change, so a terminal that (re)connects gets the retained snapshot and the retained
delta and is current; a connected terminal skips the changes it already applied. When the delta
grows past ``snapshot_every_changes`` or ``snapshot_max_age_s``, a new snapshot replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ErrorCode
from protocol.wire import DenyChange, DenyChangeKind, DenyDelta, DenySnapshot, make_snapshot

#: registry event (card_events / deny_changes.change) -> wire change kind
EVENT_KINDS: dict[str, DenyChangeKind] = {
    "report_loss": DenyChangeKind.LOST,
    "unlock": DenyChangeKind.UNLOCKED,
    "report_fault": DenyChangeKind.FROZEN,
    "suspend": DenyChangeKind.SUSPENDED,
    "resume": DenyChangeKind.RESUMED,
    "expire": DenyChangeKind.EXPIRED,
    "extend": DenyChangeKind.EXTENDED,
    "terminate": DenyChangeKind.TERMINATED,
    "auto_terminate": DenyChangeKind.TERMINATED,
    "replace": DenyChangeKind.REPLACED,
    "exchange": DenyChangeKind.EXCHANGED,
    "recover": DenyChangeKind.RETURNED,
    "refund": DenyChangeKind.RETURNED,
    "scrap": DenyChangeKind.TERMINATED,
}

KIND_CODES: dict[DenyChangeKind, ErrorCode] = {
    DenyChangeKind.LOST: ErrorCode.CARD_LOST,
    DenyChangeKind.FROZEN: ErrorCode.CARD_FROZEN,
    DenyChangeKind.SUSPENDED: ErrorCode.CARD_SUSPENDED,
    DenyChangeKind.EXPIRED: ErrorCode.CARD_EXPIRED,
    DenyChangeKind.TERMINATED: ErrorCode.CARD_TERMINATED,
    DenyChangeKind.REPLACED: ErrorCode.CARD_VOID,
    DenyChangeKind.EXCHANGED: ErrorCode.CARD_VOID,
    DenyChangeKind.RETURNED: ErrorCode.CARD_VOID,
}


def wire_change(row: dict[str, Any]) -> DenyChange:
    """A registry ``deny_changes`` row as a wire change (unblocking if ``denied`` is false)."""
    kind = EVENT_KINDS.get(str(row["change"]), DenyChangeKind.TERMINATED)
    if not row["denied"] and kind.blocks:
        kind = DenyChangeKind.UNLOCKED
    if row["denied"] and not kind.blocks:
        kind = DenyChangeKind.LOST
    return DenyChange(version=int(row["version"]), card=str(row["uid"]), kind=kind)


@dataclass
class DenyState:
    """The deny set with the reason per card, and what has been published."""

    version: int = 0
    codes: dict[str, ErrorCode] = field(default_factory=dict)
    snapshot_version: int = 0
    pending: list[DenyChange] = field(default_factory=list)  # changes after the snapshot

    def refusal(self, card_uid: str) -> ErrorCode | None:
        return self.codes.get(card_uid)

    def load_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Start-up: the whole log at once, without building wire models (1 M cards: 100 k rows)."""
        codes = self.codes
        version = self.version
        for row in rows:
            uid = row["uid"]
            if uid is None:
                continue
            kind = EVENT_KINDS.get(str(row["change"]), DenyChangeKind.TERMINATED)
            if row["denied"]:
                codes[uid] = KIND_CODES.get(kind, ErrorCode.CARD_LOST)
            else:
                codes.pop(uid, None)
            version = int(row["version"])
        self.version = version

    def apply_rows(self, rows: Iterable[dict[str, Any]]) -> list[DenyChange]:
        changes: list[DenyChange] = []
        for row in rows:
            if row["uid"] is None:
                continue
            change = wire_change(row)
            if change.version <= self.version:
                continue
            if change.version != self.version + 1:
                msg = f"deny-list log gap: have {self.version}, got {change.version}"
                raise RuntimeError(msg)
            if change.kind.blocks:
                self.codes[change.card] = KIND_CODES.get(change.kind, ErrorCode.CARD_VOID)
            else:
                self.codes.pop(change.card, None)
            self.version = change.version
            self.pending.append(change)
            changes.append(change)
        return changes

    def snapshot(self, now_ms: int) -> DenySnapshot:
        self.snapshot_version = self.version
        self.pending = []
        return make_snapshot(self.version, self.codes, now_ms)

    def cumulative_delta(self) -> DenyDelta | None:
        if not self.pending:
            return None
        return DenyDelta(
            from_version=self.snapshot_version, to_version=self.version, changes=list(self.pending)
        )


@dataclass
class TerminalView:
    kind: str
    online: bool = False
    version: int = 0


@dataclass
class Fleet:
    """What the gateway knows of each terminal's presence and deny-list version (for lag)."""

    terminals: dict[str, TerminalView] = field(default_factory=dict)

    def seen(
        self, terminal_id: str, kind: str, version: int | None = None, online: bool = True
    ) -> None:
        view = self.terminals.setdefault(terminal_id, TerminalView(kind=kind))
        view.kind = kind or view.kind
        view.online = online
        if version is not None:
            view.version = version

    def applied(self, version: int) -> int:
        return sum(1 for v in self.terminals.values() if v.online and v.version >= version)

    def online_count(self) -> int:
        return sum(1 for v in self.terminals.values() if v.online)

    def lag_by_kind(self, current: int) -> dict[str, tuple[int, int, int]]:
        """kind -> (online, max lag in versions, lagging count)."""
        out: dict[str, tuple[int, int, int]] = {}
        for view in self.terminals.values():
            online, lag, lagging = out.get(view.kind, (0, 0, 0))
            if view.online:
                behind = max(0, current - view.version)
                out[view.kind] = (online + 1, max(lag, behind), lagging + (behind > 0))
            else:
                out[view.kind] = (online, lag, lagging)
        return out
