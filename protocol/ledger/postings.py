"""Accounts and the posting rule of every kind of money movement."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol.errors import ErrorCode, InvalidInput, RuleViolation

#: One transfer never moves more than 1,000,000 yuan; anything larger is a typo or an attack.
MAX_AMOUNT = 100_000_000


class AccountKind(StrEnum):
    PURSE = "purse"  # a holder's stored value (REP-5: it follows the holder, not the card)
    HOLD = "hold"  # a holder's frozen balance (EXC-3) or open water holds
    DEPOSIT = "deposit"  # temp-card deposits held for a holder (ISS-10)
    MERCHANT = "merchant"  # a canteen, shop, water room... (sales)
    CASH = "cash"  # a cash drawer: counter, cash point (money outside the system)
    EXTERNAL = "external"  # kiosk / mobile app payment channels
    FEE_INCOME = "fee_income"  # fees collected (FEE-1)
    SUBSIDY = "subsidy"  # meal-subsidy fund (MEAL)


#: Kinds whose balance can never be negative (a CHECK constraint in storage, too).
NON_NEGATIVE_KINDS: frozenset[AccountKind] = frozenset(
    {AccountKind.PURSE, AccountKind.HOLD, AccountKind.DEPOSIT}
)


def purse(holder_id: int) -> str:
    return f"purse:{holder_id}"


def hold(holder_id: int) -> str:
    return f"hold:{holder_id}"


def deposit(holder_id: int) -> str:
    return f"deposit:{holder_id}"


def merchant(merchant_id: str) -> str:
    return f"merchant:{merchant_id}"


def cash(point: str = "counter") -> str:
    return f"cash:{point}"


def external(channel: str) -> str:
    return f"external:{channel}"


def fee_income() -> str:
    return "fee_income:card_center"


def subsidy() -> str:
    return "subsidy:meal"


#: prefix -> kind: a dict lookup on the tap path (the enum's own lookup costs ~1 µs a call)
_KINDS: dict[str, AccountKind] = {kind.value: kind for kind in AccountKind}


def account_kind(account: str) -> AccountKind:
    prefix, sep, rest = account.partition(":")
    if not sep or not rest:
        raise InvalidInput(f"账户名无效：{account}", f"bad account name: {account!r}")
    kind = _KINDS.get(prefix)
    if kind is None:
        raise InvalidInput(f"账户类型无效：{account}", f"unknown account kind: {account!r}")
    return kind


class TransferKind(StrEnum):
    TOPUP = "topup"  # TOP-1
    PURCHASE = "purchase"  # POS sale
    CORRECTION = "correction"  # TOP-2: refund of an over-deduction, refers to the sale
    REVERSAL = "reversal"  # a whole transfer undone (POS void), refers to it
    FREEZE = "freeze"  # EXC-3: purse -> hold
    RELEASE = "release"  # EXC-3: hold -> purse after 48 h
    CASH_OUT = "cash_out"  # REF-2 / TERM-4: balance settled in cash
    DEPOSIT_IN = "deposit_in"  # ISS-10
    DEPOSIT_OUT = "deposit_out"  # REF-3
    FEE = "fee"  # FEE-1
    SUBSIDY = "subsidy"  # MEAL: subsidised meal paid by the fund


@dataclass(frozen=True, slots=True)
class TransferSpec:
    """One balanced movement: ``amount`` fen from ``source`` to ``dest``."""

    kind: TransferKind
    source: str
    dest: str
    amount: int
    ref: int | None = None
    memo: str = ""

    def __post_init__(self) -> None:
        check_amount(self.amount)
        if self.source == self.dest:
            raise InvalidInput("转出转入账户相同", "source and destination are the same account")
        account_kind(self.source)
        account_kind(self.dest)


def _yuan(fen: int) -> str:
    """``1250`` -> ``"12.50"`` for messages operators read (integer arithmetic; the ledger does
    not import :mod:`protocol.cards`, where the counter's own formatter lives)."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"


def check_amount(amount: object) -> int:
    """An amount is a positive integer number of fen, at most :data:`MAX_AMOUNT`."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidInput(
            "金额须为整数（分）",
            f"amount must be an integer number of fen, got {amount!r}",
            code=ErrorCode.INVALID_AMOUNT,
        )
    if amount <= 0 or amount > MAX_AMOUNT:
        raise InvalidInput(
            f"金额须在 0.01 至 {_yuan(MAX_AMOUNT)} 元之间（输入 {_yuan(amount)} 元）",
            f"amount must be 0.01..{_yuan(MAX_AMOUNT)} yuan, got {_yuan(amount)} yuan",
            code=ErrorCode.INVALID_AMOUNT,
        )
    return amount


def topup(holder_id: int, amount: int, source: str) -> TransferSpec:
    """TOP-1: cash point (``cash:...``), kiosk or app (``external:...``) into the purse."""
    if account_kind(source) not in (AccountKind.CASH, AccountKind.EXTERNAL):
        raise InvalidInput("充值来源无效", f"top-up source must be cash or external: {source}")
    return TransferSpec(TransferKind.TOPUP, source, purse(holder_id), amount)


def purchase(holder_id: int, merchant_id: str, amount: int, memo: str = "") -> TransferSpec:
    return TransferSpec(
        TransferKind.PURCHASE, purse(holder_id), merchant(merchant_id), amount, memo=memo
    )


def correction(
    original: TransferSpec, original_id: int, amount: int, already_corrected: int
) -> TransferSpec:
    """TOP-2: give back an over-deduction; refers to the sale, never exceeds what is left."""
    check_amount(amount)
    if original.kind is not TransferKind.PURCHASE:
        raise RuleViolation(
            "只能对消费交易纠错",
            "only a purchase can be corrected",
            code=ErrorCode.INVALID_INPUT,
            rule="TOP-2",
        )
    left = original.amount - already_corrected
    if amount > left:
        raise RuleViolation(
            f"纠错金额 {_yuan(amount)} 元超过原交易可纠错余额 {_yuan(left)} 元",
            f"correction of {_yuan(amount)} yuan exceeds what is left of the original"
            f" ({_yuan(left)} yuan)",
            code=ErrorCode.CORRECTION_EXCEEDS_ORIGINAL,
            rule="TOP-2",
        )
    return TransferSpec(
        TransferKind.CORRECTION, original.dest, original.source, amount, ref=original_id
    )


def reversal(original: TransferSpec, original_id: int) -> TransferSpec:
    """Undo a whole transfer (a POS void of its own sale): the mirror movement, referring to it."""
    return TransferSpec(
        TransferKind.REVERSAL, original.dest, original.source, original.amount, ref=original_id
    )


def freeze(holder_id: int, amount: int) -> TransferSpec:
    """EXC-3: the faulty card's balance is frozen for 48 hours."""
    return TransferSpec(TransferKind.FREEZE, purse(holder_id), hold(holder_id), amount)


def release(holder_id: int, amount: int) -> TransferSpec:
    """EXC-3: the frozen balance moves to the new card (the holder's purse)."""
    return TransferSpec(TransferKind.RELEASE, hold(holder_id), purse(holder_id), amount)


def cash_out(holder_id: int, amount: int, point: str = "counter") -> TransferSpec:
    """REF-2 / TERM-4: the balance is paid out in cash."""
    return TransferSpec(TransferKind.CASH_OUT, purse(holder_id), cash(point), amount)


def deposit_in(holder_id: int, amount: int, point: str = "counter") -> TransferSpec:
    return TransferSpec(TransferKind.DEPOSIT_IN, cash(point), deposit(holder_id), amount)


def deposit_out(holder_id: int, amount: int, point: str = "counter") -> TransferSpec:
    return TransferSpec(TransferKind.DEPOSIT_OUT, deposit(holder_id), cash(point), amount)


def fee(amount: int, point: str = "counter", memo: str = "") -> TransferSpec:
    return TransferSpec(TransferKind.FEE, cash(point), fee_income(), amount, memo=memo)


def subsidy_grant(merchant_id: str, amount: int) -> TransferSpec:
    """MEAL: a subsidised meal is paid from the subsidy fund, not the purse."""
    return TransferSpec(TransferKind.SUBSIDY, subsidy(), merchant(merchant_id), amount)
