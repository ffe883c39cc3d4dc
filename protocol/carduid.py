"""Card UIDs (卡片物理号): the one canonical form, shared by the counter, the registry and the wire.

A UID is what a reader returns for the chip: 4, 7 or 10 bytes and the like. Everywhere in onecard
it is written as **upper-case hex without separators, 8 to 32 hex digits, even length** — the
terminal contract's ``CardUid`` (:mod:`protocol.wire.fields` uses :data:`CARD_UID_PATTERN`).
Deny-list membership compares strings, so one card must always have one string: a lower-case UID
typed at the counter once made every terminal's deny-list snapshot invalid (issue 8, item 10).

:func:`normalise_card_uid` is the entry check for people and files (counter, CLI, roster import,
the PC/SC bridge): it strips surrounding space, folds full-width characters typed with a Chinese
IME, drops a ``0x`` prefix and the separators readers and spreadsheets print (``:``, ``-``, ``.``,
spaces), upper-cases, and then validates. Terminals already send the canonical form; the
gateway never normalises what a terminal sends, it validates it.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
import unicodedata

from protocol.errors import InvalidInput

__all__ = [
    "CARD_UID_MAX_HEX",
    "CARD_UID_MIN_HEX",
    "CARD_UID_PATTERN",
    "canonical_card_uid",
    "card_uid_from_bytes",
    "is_card_uid",
    "mask_uid",
    "normalise_card_uid",
]

CARD_UID_MIN_HEX = 8
CARD_UID_MAX_HEX = 32
#: The canonical form, as a regular expression (the contract's ``CardUid``).
CARD_UID_PATTERN = r"^(?:[0-9A-F]{2}){4,16}$"

_CANONICAL = re.compile(CARD_UID_PATTERN)
_SEPARATORS = re.compile(r"[\s:.\-_]+")


def is_card_uid(value: object) -> bool:
    """True if ``value`` is already a canonical UID (no normalisation applied)."""
    return isinstance(value, str) and _CANONICAL.fullmatch(value) is not None


def canonical_card_uid(value: object) -> str | None:
    """The canonical form of ``value``, or ``None`` if it cannot be one (never raises).

    For data already stored (registry rows, files): a lower-case or colon-separated UID is
    recovered, garbage is reported as ``None`` for the caller to skip and count.
    """
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFKC", value).strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    text = _SEPARATORS.sub("", text).upper()
    return text if _CANONICAL.fullmatch(text) is not None else None


def normalise_card_uid(value: str) -> str:
    """The canonical UID for operator or file input, or :class:`InvalidInput` (bilingual).

    >>> normalise_card_uid(" 04:a1:b2:c3 ")
    '04A1B2C3'
    """
    canonical = canonical_card_uid(value)
    if canonical is None:
        raise InvalidInput(
            "卡片物理号(UID)无效：须为8至32位十六进制数字，且位数为偶数",
            "invalid card UID: 8 to 32 hex digits, an even number of them",
        )
    return canonical


def card_uid_from_bytes(raw: bytes) -> str:
    """The canonical UID of the bytes a reader returned (4 to 16 bytes) or :class:`InvalidInput`."""
    return normalise_card_uid(raw.hex())


def mask_uid(value: str) -> str:
    """What a log line may show of a UID, valid or not (PIPL): ``04A1…F6``."""
    text = str(value)
    if len(text) <= 6:
        return "…"
    return f"{text[:4]}…{text[-2:]}"
