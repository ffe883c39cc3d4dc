"""Deny list (黑名单) messages and the pure helpers terminals and the gateway share.

The gateway keeps an append-only change log: every change has a version (1, 2, 3, ... without
gaps), a card and a kind. It publishes

- a retained **snapshot** on ``onecard/v1/blacklist/snapshot``: the full set of blocked cards at
  one version, sorted, with a SHA-256 over a canonical encoding (see :func:`denylist_sha256`);
- **deltas** on ``onecard/v1/blacklist/delta``: consecutive changes ``from_version+1 ..
  to_version``.

A terminal starts from the snapshot and applies deltas in order (:func:`apply_delta`). A delta
that starts beyond the version held is a gap: the terminal discards nothing, re-reads the
retained snapshot and resumes. Changes at or below the version held are skipped, so QoS 1
redeliveries and overlapping deltas are harmless. LOSS-2: a lost card is refused everywhere.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from protocol.wire.exceptions import DenyListGap
from protocol.wire.fields import CardUid, EpochMs, Version, WireModel

__all__ = [
    "HASH_DOMAIN",
    "MAX_DELTA_CHANGES",
    "DenyChange",
    "DenyChangeKind",
    "DenyDelta",
    "DenyList",
    "DenySnapshot",
    "apply_delta",
    "denylist_sha256",
    "make_snapshot",
]

HASH_DOMAIN = "onecard-denylist/1"
MAX_DELTA_CHANGES = 1000


class DenyChangeKind(StrEnum):
    """Why a card enters (blocks) or leaves (unblocks) the deny list."""

    LOST = "lost"  # 挂失 (LOSS-2)
    UNLOCKED = "unlocked"  # 解挂 at the counter (LOSS-3)
    FROZEN = "frozen"  # faulty card, balance frozen (EXC-3)
    UNFROZEN = "unfrozen"
    SUSPENDED = "suspended"  # 停用 (MEAL-4)
    RESUMED = "resumed"
    EXPIRED = "expired"  # temp card past validity (TERM-2)
    EXTENDED = "extended"  # validity extended (TERM-2)
    TERMINATED = "terminated"  # TERM-1, TERM-3
    REPLACED = "replaced"  # void forever after a replacement (LOSS-4)
    EXCHANGED = "exchanged"  # handed back in an exchange (EXC-5)
    RETURNED = "returned"  # refunded or recovered temp card (REF, ISS-4)

    @property
    def blocks(self) -> bool:
        """True if the change puts the card on the list, False if it takes it off."""
        return self not in _UNBLOCKING


_UNBLOCKING = frozenset(
    {
        DenyChangeKind.UNLOCKED,
        DenyChangeKind.UNFROZEN,
        DenyChangeKind.RESUMED,
        DenyChangeKind.EXTENDED,
    }
)

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def denylist_sha256(version: int, entries: Iterable[str]) -> str:
    """Lower-case hex SHA-256 of the canonical encoding of a deny list at ``version``.

    Canonical encoding (UTF-8, ``\\n`` line ends): the line ``onecard-denylist/1``, then the
    version in decimal, then every card identifier in ascending (byte) order, one per line, each
    line ending with ``\\n``. Duplicates are counted once. The empty list at version 0 hashes
    ``"onecard-denylist/1\\n0\\n"``.
    """
    h = hashlib.sha256(f"{HASH_DOMAIN}\n{version}\n".encode())
    for card in sorted(set(entries)):
        h.update(card.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


class DenySnapshot(WireModel):
    """Retained payload of ``onecard/v1/blacklist/snapshot``.

    Validation checks the integrity of what arrived: ``entries`` strictly ascending (so unique),
    ``count == len(entries)`` and ``sha256`` equal to :func:`denylist_sha256`.
    """

    v: Annotated[int, Field(ge=1, le=1)] = 1
    version: Version
    generated_at_ms: EpochMs
    count: Annotated[int, Field(ge=0)]
    sha256: Sha256Hex
    entries: list[CardUid]

    @model_validator(mode="after")
    def _integrity(self) -> Self:
        entries = self.entries
        if self.count != len(entries):
            raise ValueError("count does not match entries")
        if any(b <= a for a, b in itertools.pairwise(entries)):
            raise ValueError("entries must be strictly ascending")
        if denylist_sha256(self.version, entries) != self.sha256:
            raise ValueError("sha256 does not match entries")
        return self


class DenyChange(WireModel):
    version: Annotated[int, Field(ge=1, le=2**53 - 1)]
    card: CardUid
    kind: DenyChangeKind


class DenyDelta(WireModel):
    """Payload of ``onecard/v1/blacklist/delta``: the changes ``from_version+1 .. to_version``,
    one per version, in order."""

    v: Annotated[int, Field(ge=1, le=1)] = 1
    from_version: Version
    to_version: Version
    changes: Annotated[list[DenyChange], Field(min_length=1, max_length=MAX_DELTA_CHANGES)]

    @model_validator(mode="after")
    def _consecutive(self) -> Self:
        if self.to_version - self.from_version != len(self.changes):
            raise ValueError("to_version - from_version must equal the number of changes")
        for offset, change in enumerate(self.changes, start=1):
            if change.version != self.from_version + offset:
                raise ValueError("change versions must run from_version+1 .. to_version")
        return self


def apply_delta(
    entries: frozenset[str], version: int, delta: DenyDelta
) -> tuple[frozenset[str], int]:
    """Pure: the deny set and version after ``delta``.

    Already-applied changes (version <= ``version``) are skipped; a delta that starts after
    ``version`` raises :class:`DenyListGap` (re-read the snapshot).
    """
    if delta.from_version > version:
        raise DenyListGap(
            "黑名单版本不连续, 请重新获取快照",
            f"deny-list gap: hold {version}, delta starts at {delta.from_version + 1}",
        )
    if delta.to_version <= version:
        return entries, version
    result = set(entries)
    for change in delta.changes:
        if change.version <= version:
            continue
        if change.kind.blocks:
            result.add(change.card)
        else:
            result.discard(change.card)
    return frozenset(result), delta.to_version


def make_snapshot(version: int, entries: Iterable[str], generated_at_ms: int) -> DenySnapshot:
    """Build a valid snapshot (sorted, counted, hashed); ``generated_at_ms`` comes from the
    caller's clock."""
    ordered = sorted(set(entries))
    return DenySnapshot(
        version=version,
        generated_at_ms=generated_at_ms,
        count=len(ordered),
        sha256=denylist_sha256(version, ordered),
        entries=ordered,
    )


@dataclass(slots=True)
class DenyList:
    """A mutable deny set for one process (a terminal's copy, or the gateway's in-memory set).

    ``card in deny_list`` is the tap-path check. Not thread-safe; pure (no I/O, no clock).
    """

    version: int = 0
    entries: set[str] = field(default_factory=set)

    @classmethod
    def from_snapshot(cls, snapshot: DenySnapshot) -> DenyList:
        return cls(snapshot.version, set(snapshot.entries))

    def __contains__(self, card: object) -> bool:
        return card in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def apply(self, delta: DenyDelta) -> int:
        """Apply ``delta`` in place; returns how many changes were new. See :func:`apply_delta`."""
        if delta.from_version > self.version:
            raise DenyListGap(
                "黑名单版本不连续, 请重新获取快照",
                f"deny-list gap: hold {self.version}, delta starts at {delta.from_version + 1}",
            )
        applied = 0
        for change in delta.changes:
            if change.version <= self.version:
                continue
            if change.kind.blocks:
                self.entries.add(change.card)
            else:
                self.entries.discard(change.card)
            self.version = change.version
            applied += 1
        return applied

    def snapshot(self, generated_at_ms: int) -> DenySnapshot:
        return make_snapshot(self.version, self.entries, generated_at_ms)
