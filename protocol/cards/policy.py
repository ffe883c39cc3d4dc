"""Holder-level conditions of the procedures (eligibility, settled balances, complete data)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.cards.fees import yuan
from protocol.errors import ErrorCode, RuleViolation
from protocol.types import HolderKind


@dataclass(frozen=True, slots=True)
class HolderData:
    kind: HolderKind
    number: str | None
    name: str
    national_id: str | None
    college: str | None = None
    class_name: str | None = None
    department: str | None = None
    photo_ref: str | None = None


def missing_holder_data(holder: HolderData) -> list[str]:
    """REP-3 / EXC-4: which of name, number, department/class and photo are missing."""
    missing: list[str] = []
    if not holder.name.strip():
        missing.append("name")
    required: tuple[str, ...] = ()
    if holder.kind is HolderKind.STUDENT:
        required = ("number", "college", "class_name", "photo_ref")
    elif holder.kind is HolderKind.STAFF:
        required = ("number", "department", "photo_ref")
    missing.extend(field for field in required if not getattr(holder, field))
    if holder.kind is HolderKind.TEMPORARY and not holder.national_id:
        missing.append("national_id")
    return missing


def require_complete(holder: HolderData, rule: str = "REP-3") -> None:
    missing = missing_holder_data(holder)
    if missing:
        names = ", ".join(missing)
        raise RuleViolation(
            f"持卡人信息不全，请先补齐：{names}",
            f"holder data incomplete, complete it first: {names}",
            code=ErrorCode.HOLDER_DATA_INCOMPLETE,
            rule=rule,
        )


def require_settled(balance_fen: int, rule: str) -> None:
    """REF-2 / TERM-4: the purse is cashed out before the card comes back."""
    if balance_fen != 0:
        raise RuleViolation(
            f"请先到充值点结清余额（{yuan(balance_fen)} 元）",
            f"settle the balance at a cash point first ({yuan(balance_fen)} yuan)",
            code=ErrorCode.BALANCE_NOT_SETTLED,
            rule=rule,
        )


def require_refund_eligible(kind: HolderKind) -> None:
    """REF-1: only temp cards of people other than current staff and students are refunded."""
    if kind is not HolderKind.TEMPORARY:
        raise RuleViolation(
            "只有非在职教职工、非在校学生的临时卡可以退卡",
            "only temp cards of people other than current staff and students can be refunded",
            rule="REF-1",
        )
