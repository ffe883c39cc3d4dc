"""Field types shared by every message of the terminal contract.

Conventions (also in ``docs/terminal-contract.md``):

- money is an integer number of fen (1 yuan = 100 fen), never a float or a string;
- timestamps are integers: milliseconds since the Unix epoch, UTC (``*_ms`` fields);
- card identifiers are the card UID as the reader returns it, in upper-case hex (4, 7 or 10 bytes
  and the like: 8 to 32 hex digits, even length). Terminals normalise case before sending, so the
  same card always has the same string (deny-list membership compares strings).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from protocol.carduid import CARD_UID_PATTERN

__all__ = [
    "MAX_AMOUNT_FEN",
    "MAX_BALANCE_FEN",
    "MAX_EPOCH_MS",
    "MAX_TIME_MS",
    "AmountFen",
    "CardUid",
    "EpochMs",
    "Fen",
    "HoldId",
    "MerchantId",
    "RequestId",
    "RuleId",
    "SessionToken",
    "TerminalKind",
    "TransferId",
    "Version",
    "WireModel",
    "mask_card",
]

#: Largest single amount a terminal may ask for: 10 000 yuan.
MAX_AMOUNT_FEN = 1_000_000
#: Largest balance the contract can carry: 10 000 000 yuan.
MAX_BALANCE_FEN = 1_000_000_000
#: Largest version number: 2**53 - 1, exact in every JSON parser.
MAX_EPOCH_MS = 2**53 - 1
#: Largest timestamp: 2100-01-01T00:00:00Z. Every ``*_ms`` time is also checked against the
#: gateway's clock where it matters (request deadlines, offline sales): a year-9999 time is
#: refused at the door instead of overflowing date arithmetic later.
MAX_TIME_MS = 4_102_444_800_000


class WireModel(BaseModel):
    """Base of every contract message: strict JSON types, unknown fields refused, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TerminalKind(StrEnum):
    POS = "pos"  # canteen / shop point of sale (消费机)
    KIOSK = "kiosk"  # self-service kiosk (自助服务终端)
    DOOR = "door"  # door / gate reader (门禁)
    WATER = "water"  # hot-water controller (水控)


RequestId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
]
CardUid = Annotated[str, StringConstraints(pattern=CARD_UID_PATTERN)]
AmountFen = Annotated[int, Field(ge=1, le=MAX_AMOUNT_FEN)]
Fen = Annotated[int, Field(ge=0, le=MAX_BALANCE_FEN)]
EpochMs = Annotated[int, Field(ge=0, le=MAX_TIME_MS)]
Version = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]
SessionToken = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,128}$")]
TransferId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
HoldId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MerchantId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
RuleId = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,5}-[0-9]{1,2}$")]


def mask_card(card: str) -> str:
    """``04A1B2C3D4E5F6`` -> ``04A1…F6``: what logs may show of a card identifier (PIPL)."""
    if len(card) <= 6:
        return "…"
    return f"{card[:4]}…{card[-2:]}"
