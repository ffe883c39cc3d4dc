"""Deny list (黑名单): snapshot integrity, canonical hash, ordered delta application (LOSS-2)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.wire import (
    DenyChange,
    DenyChangeKind,
    DenyDelta,
    DenyList,
    DenyListGap,
    DenySnapshot,
    apply_delta,
    denylist_sha256,
    make_snapshot,
)

cards = st.from_regex(r"\A(?:[0-9A-F]{2}){4,10}\Z")
kinds = st.sampled_from(list(DenyChangeKind))


def test_hash_matches_the_documented_encoding() -> None:
    canonical = b"onecard-denylist/1\n3\n04A1B2C3D4E5F6\n04C0FFEE1234AB\n"
    expected = hashlib.sha256(canonical).hexdigest()
    assert denylist_sha256(3, ["04C0FFEE1234AB", "04A1B2C3D4E5F6"]) == expected
    assert expected == "1069d728667b11eaf998873792a8370a91bac585315e920eded9881b20091e97"
    empty = hashlib.sha256(b"onecard-denylist/1\n0\n").hexdigest()
    assert denylist_sha256(0, []) == empty


@given(st.lists(cards, max_size=30), st.integers(0, 10**9), st.randoms())
def test_hash_is_deterministic_and_order_free(
    entries: list[str], version: int, rnd: object
) -> None:
    shuffled = list(entries)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert denylist_sha256(version, entries) == denylist_sha256(version, shuffled)
    assert denylist_sha256(version, entries) == denylist_sha256(version, entries + entries)
    assert denylist_sha256(version, entries) != denylist_sha256(version + 1, entries)


@given(st.sets(cards, max_size=30), cards)
def test_hash_changes_with_membership(entries: set[str], extra: str) -> None:
    if extra in entries:
        return
    assert denylist_sha256(1, entries) != denylist_sha256(1, entries | {extra})


def test_snapshot_integrity_checks() -> None:
    snap = make_snapshot(3, ["04C0FFEE1234AB", "04A1B2C3D4E5F6", "04A1B2C3D4E5F6"], 1)
    assert snap.entries == ["04A1B2C3D4E5F6", "04C0FFEE1234AB"]
    assert snap.count == 2
    doc = json.loads(snap.model_dump_json())
    assert DenySnapshot.model_validate_json(json.dumps(doc)) == snap
    for broken in (
        {**doc, "count": 3},
        {**doc, "entries": list(reversed(doc["entries"]))},
        {**doc, "entries": [doc["entries"][0]] * 2, "count": 2},
        {**doc, "version": 4},  # relabelled: hash covers the version
        {**doc, "sha256": "0" * 64},
        {**doc, "entries": ["04a1b2c3d4e5f6", "04C0FFEE1234AB"]},
    ):
        with pytest.raises(ValidationError):
            DenySnapshot.model_validate_json(json.dumps(broken))


def test_change_kinds_block_or_unblock() -> None:
    unblocking = {k for k in DenyChangeKind if not k.blocks}
    assert unblocking == {
        DenyChangeKind.UNLOCKED,
        DenyChangeKind.UNFROZEN,
        DenyChangeKind.RESUMED,
        DenyChangeKind.EXTENDED,
    }
    assert DenyChangeKind.LOST.blocks  # LOSS-2
    assert DenyChangeKind.REPLACED.blocks  # LOSS-4


def _delta(start: int, *changes: tuple[str, DenyChangeKind]) -> DenyDelta:
    return DenyDelta(
        from_version=start,
        to_version=start + len(changes),
        changes=[
            DenyChange(version=start + i, card=card, kind=kind)
            for i, (card, kind) in enumerate(changes, start=1)
        ],
    )


A, B, C = "04A1B2C3D4E5F6", "04C0FFEE1234AB", "04D00D0000AB12"


def test_delta_must_be_consecutive() -> None:
    good = {
        "from_version": 3,
        "to_version": 5,
        "changes": [
            {"version": 4, "card": A, "kind": "lost"},
            {"version": 5, "card": B, "kind": "lost"},
        ],
    }
    assert DenyDelta.model_validate_json(json.dumps(good)).to_version == 5
    bad_docs = [
        {**good, "to_version": 6},
        {**good, "changes": list(reversed(good["changes"]))},  # type: ignore[call-overload]
        {**good, "from_version": 2},
        {**good, "changes": [], "to_version": 3},
        {**good, "changes": [{"version": 4, "card": A, "kind": "stolen"}], "to_version": 4},
    ]
    for doc in bad_docs:
        with pytest.raises(ValidationError):
            DenyDelta.model_validate_json(json.dumps(doc))


def test_apply_delta_in_order() -> None:
    entries, version = apply_delta(frozenset(), 0, _delta(0, (A, DenyChangeKind.LOST)))
    assert (entries, version) == (frozenset({A}), 1)
    entries, version = apply_delta(
        entries, version, _delta(1, (B, DenyChangeKind.FROZEN), (A, DenyChangeKind.UNLOCKED))
    )
    assert (entries, version) == (frozenset({B}), 3)


def test_apply_delta_skips_already_applied_and_overlap() -> None:
    d1 = _delta(0, (A, DenyChangeKind.LOST), (B, DenyChangeKind.LOST))
    entries, version = apply_delta(frozenset(), 0, d1)
    # redelivery (QoS 1): nothing changes
    assert apply_delta(entries, version, d1) == (entries, version)
    # overlap: from 1 to 4 while holding 2 -> only versions 3 and 4 apply
    overlap = _delta(
        1,
        (B, DenyChangeKind.LOST),
        (A, DenyChangeKind.UNLOCKED),
        (C, DenyChangeKind.SUSPENDED),
    )
    assert apply_delta(entries, version, overlap) == (frozenset({B, C}), 4)


def test_apply_delta_refuses_gap() -> None:
    with pytest.raises(DenyListGap) as info:
        apply_delta(frozenset({A}), 1, _delta(2, (B, DenyChangeKind.LOST)))
    assert "gap" in info.value.message_en
    deny = DenyList(1, {A})
    with pytest.raises(DenyListGap):
        deny.apply(_delta(2, (B, DenyChangeKind.LOST)))
    assert (deny.version, deny.entries) == (1, {A})  # unchanged


@given(
    st.lists(st.tuples(cards, kinds), min_size=1, max_size=40),
    st.lists(st.integers(1, 8), min_size=1, max_size=10),
)
def test_any_chunking_of_the_log_gives_the_same_list(
    log: list[tuple[str, DenyChangeKind]], sizes: list[int]
) -> None:
    """Replaying the whole change log in one delta, or in any chunks (with redeliveries),
    ends with the same set, and a snapshot of it verifies."""
    whole, top = apply_delta(frozenset(), 0, _delta(0, *log))
    expected: set[str] = set()
    for card, kind in log:
        if kind.blocks:
            expected.add(card)
        else:
            expected.discard(card)
    assert whole == expected
    assert top == len(log)

    deny = DenyList()
    start, i = 0, 0
    while start < len(log):
        size = sizes[i % len(sizes)]
        chunk = _delta(start, *log[start : start + size])
        deny.apply(chunk)
        assert deny.apply(chunk) == 0  # redelivery is a no-op
        start += size
        i += 1
    assert deny.entries == expected
    assert deny.version == len(log)
    snapshot = deny.snapshot(generated_at_ms=1)
    restored = DenyList.from_snapshot(DenySnapshot.model_validate_json(snapshot.model_dump_json()))
    assert restored == deny
    for card in expected:
        assert card in restored
    assert len(restored) == len(expected)
