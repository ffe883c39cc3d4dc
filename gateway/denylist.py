"""The gateway's deny list: an in-memory set built from the registry's append-only change log,
published to terminals as a retained snapshot plus a retained cumulative delta (ARCHITECTURE §4).

The delta on ``onecard/v1/blacklist/delta`` always runs from the current snapshot's version to
the newest change, so a terminal that (re)connects gets the retained snapshot and the retained
delta and is current; a connected terminal skips the changes it already applied. When the delta
grows past ``snapshot_every_changes`` or ``snapshot_max_age_s``, or when the log has a hole the
delta cannot express (a skipped row, a version jump: ``DenyState.needs_snapshot``), a new snapshot
replaces it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.carduid import CARD_UID_PATTERN, canonical_card_uid, mask_uid
from protocol.errors import ErrorCode
from protocol.wire import DenyChange, DenyChangeKind, DenyDelta, DenySnapshot, make_snapshot

log = logging.getLogger("onecard.denylist")
_CANONICAL = re.compile(CARD_UID_PATTERN)

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


def _kind(row: Mapping[str, Any]) -> DenyChangeKind:
    kind = EVENT_KINDS.get(str(row["change"]), DenyChangeKind.TERMINATED)
    if not row["denied"] and kind.blocks:
        kind = DenyChangeKind.UNLOCKED
    if row["denied"] and not kind.blocks:
        kind = DenyChangeKind.LOST
    return kind


def wire_change(row: Mapping[str, Any]) -> DenyChange:
    """A registry ``deny_changes`` row as a wire change (unblocking if ``denied`` is false).

    The UID is brought to its canonical form; a row whose UID cannot be one raises ``ValueError``
    (:class:`DenyState` skips such rows instead).
    """
    uid = canonical_card_uid(row["uid"])
    if uid is None:
        msg = f"deny-list row {row['version']}: no valid card UID"
        raise ValueError(msg)
    return DenyChange(version=int(row["version"]), card=uid, kind=_kind(row))


@dataclass
class DenyState:
    """The deny set with the reason per card, and what has been published.

    Robust against what the registry holds (issue 8, items 10 and 12): a row without a valid card
    UID (NULL, or garbage a clerk typed before UIDs were validated) is skipped, counted and logged
    masked, and its version is still taken — the version the gateway publishes never lags behind
    the log. A version jump in the log (a hole: rows removed by hand, or a future sequence-based
    writer) is accepted, never fatal. Terminals apply deltas only as consecutive versions, so
    after a skipped row or a jump the next publication must be a snapshot: ``needs_snapshot``
    says so, and :meth:`cumulative_delta` never builds a delta across a hole.
    """

    version: int = 0
    codes: dict[str, ErrorCode] = field(default_factory=dict)
    snapshot_version: int = 0
    pending: list[DenyChange] = field(default_factory=list)  # changes after the snapshot
    #: a skipped row or a version jump since the last snapshot: publish a snapshot next
    needs_snapshot: bool = False
    #: rows skipped for want of a valid card UID, since start
    skipped: int = 0
    #: version jumps seen in the log, since start
    gaps: int = 0

    def refusal(self, card_uid: str) -> ErrorCode | None:
        return self.codes.get(card_uid)

    def load_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Start-up: the whole log at once, without building wire models (1 M cards: 100 k rows).

        Never raises for a bad row: the gateway must start whatever the registry holds.
        """
        codes = self.codes
        version = self.version
        skipped: list[object] = []
        for row in rows:
            version = max(version, int(row["version"]))
            uid = row["uid"]
            if not isinstance(uid, str) or _CANONICAL.fullmatch(uid) is None:
                uid = canonical_card_uid(uid)
                if uid is None:
                    skipped.append(row["uid"])
                    continue
            if row["denied"]:
                codes[uid] = KIND_CODES.get(_kind(row), ErrorCode.CARD_LOST)
            else:
                codes.pop(uid, None)
        self.version = version
        if skipped:
            self.skipped += len(skipped)
            examples = ", ".join(repr(None if u is None else mask_uid(str(u))) for u in skipped[:3])
            log.warning(
                "黑名单日志中有 %d 行无有效卡片物理号，已跳过 / deny list: skipped %d rows without"
                " a valid card UID (e.g. %s)",
                len(skipped),
                len(skipped),
                examples,
            )

    def apply_rows(self, rows: Iterable[Mapping[str, Any]]) -> list[DenyChange]:
        """The changes after :attr:`version`, applied; returns the new wire changes.

        Never raises for a bad row or a hole in the versions (see the class docstring).
        """
        changes: list[DenyChange] = []
        for row in rows:
            version = int(row["version"])
            if version <= self.version:
                continue
            if version != self.version + 1:
                self.gaps += 1
                self.needs_snapshot = True
                log.warning(
                    "黑名单版本跳跃 %d -> %d，将发布完整快照 / deny-list log jumps from %d to %d;"
                    " the next publication is a snapshot",
                    self.version,
                    version,
                    self.version,
                    version,
                )
            self.version = version
            uid = canonical_card_uid(row["uid"])
            if uid is None:
                self.skipped += 1
                self.needs_snapshot = True
                log.warning(
                    "黑名单变更 %d 无有效卡片物理号，已跳过 / deny-list change %d has no valid card"
                    " UID (%r); skipped, the next publication is a snapshot",
                    version,
                    version,
                    mask_uid(str(row["uid"])) if row["uid"] is not None else None,
                )
                continue
            change = DenyChange(version=version, card=uid, kind=_kind(row))
            if change.kind.blocks:
                self.codes[uid] = KIND_CODES.get(change.kind, ErrorCode.CARD_VOID)
            else:
                self.codes.pop(uid, None)
            self.pending.append(change)
            changes.append(change)
        return changes

    def snapshot(self, now_ms: int) -> DenySnapshot:
        self.snapshot_version = self.version
        self.pending = []
        self.needs_snapshot = False
        return make_snapshot(self.version, self.codes, now_ms)

    def cumulative_delta(self) -> DenyDelta | None:
        """The delta from the snapshot to now; ``None`` when there is nothing to send or when a
        hole lies in between (``needs_snapshot``: send a snapshot instead)."""
        if not self.pending or self.needs_snapshot:
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
