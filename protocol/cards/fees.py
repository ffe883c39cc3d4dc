"""Fees as data (FEE-1), with the defaults of the published rules; configurable per deployment."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from protocol.types import CardKind


class FeeItem(StrEnum):
    DEPOSIT = "deposit"  # ISS-10 临时卡押金 (refundable, REF-3)
    REPLACEMENT_SMART = "replacement_smart"  # REP-2 补卡费 智能卡
    REPLACEMENT_TEMP = "replacement_temp"  # REP-2 补卡费 临时卡
    EXCHANGE = "exchange"  # EXC-2 换卡工本费 (students)
    LOST_TEMP_CARD = "lost_temp_card"  # ISS-4 临时CPU卡工本费
    MISSING_CARD = "missing_card"  # TERM-5 毕业未交卡


FEE_NAMES_ZH: dict[FeeItem, str] = {
    FeeItem.DEPOSIT: "临时卡押金",
    FeeItem.REPLACEMENT_SMART: "补卡费（智能卡）",
    FeeItem.REPLACEMENT_TEMP: "补卡费（临时CPU卡）",
    FeeItem.EXCHANGE: "换卡工本费",
    FeeItem.LOST_TEMP_CARD: "临时CPU卡工本费",
    FeeItem.MISSING_CARD: "未交卡工本费",
}

FEE_RULES: dict[FeeItem, str] = {
    FeeItem.DEPOSIT: "ISS-10",
    FeeItem.REPLACEMENT_SMART: "REP-2",
    FeeItem.REPLACEMENT_TEMP: "REP-2",
    FeeItem.EXCHANGE: "EXC-2",
    FeeItem.LOST_TEMP_CARD: "ISS-4",
    FeeItem.MISSING_CARD: "TERM-5",
}


class FeeSchedule(BaseModel):
    """Amounts in fen. Defaults are the published rules' (FEE-1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deposit: int = Field(default=3000, ge=0)
    replacement_smart: int = Field(default=5000, ge=0)
    replacement_temp: int = Field(default=3000, ge=0)
    exchange: int = Field(default=5000, ge=0)
    lost_temp_card: int = Field(default=3000, ge=0)
    missing_card: int = Field(default=5000, ge=0)

    def amount(self, item: FeeItem) -> int:
        return int(getattr(self, item.value))

    def replacement(self, kind: CardKind) -> FeeItem:
        return FeeItem.REPLACEMENT_SMART if kind is CardKind.SMART else FeeItem.REPLACEMENT_TEMP


def yuan(fen: int) -> str:
    """``3000`` -> ``"30.00"``: integer formatting, no float anywhere."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"


def parse_yuan(text: str) -> int:
    """``"30"``, ``"30.5"``, ``"30.05"`` -> fen. Refuses more than two decimals or signs."""
    raw = text.strip()
    if not raw or raw.startswith(("-", "+")):
        raise ValueError(f"not an amount: {text!r}")
    whole, _, part = raw.partition(".")
    if not whole.isdigit() or (part and (not part.isdigit() or len(part) > 2)):
        raise ValueError(f"not an amount in yuan with at most 2 decimals: {text!r}")
    return int(whole) * 100 + int(part.ljust(2, "0") or "0")
