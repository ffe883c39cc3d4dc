"""Posting rules of the stored-value ledger: amounts, corrections (TOP-2), conservation.

Money is integer fen; every movement is one balanced transfer, so the balances computed from any
sequence of transfers sum to zero (ARCHITECTURE.md §5).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, InvalidInput, OnecardError, RuleViolation
from protocol.ledger import (
    MAX_AMOUNT,
    NON_NEGATIVE_KINDS,
    AccountKind,
    TransferKind,
    TransferSpec,
    account_kind,
    cash,
    cash_out,
    check_amount,
    correction,
    deposit_in,
    deposit_out,
    external,
    fee,
    freeze,
    merchant,
    purchase,
    purse,
    release,
    reversal,
    subsidy_grant,
    topup,
)


@pytest.mark.parametrize(
    "amount",
    [True, False, 1.0, 0.5, 100.0, 0, -1, -100, MAX_AMOUNT + 1, 10**18, "100", None],
)
def test_check_amount_refuses_non_fen(amount: object) -> None:
    """Only a positive int of fen up to MAX_AMOUNT is an amount; bool and float never are."""
    with pytest.raises(InvalidInput) as info:
        check_amount(amount)
    assert info.value.code is ErrorCode.INVALID_AMOUNT
    assert "金额" in info.value.message_zh


@pytest.mark.parametrize("amount", [1, 99, 100, MAX_AMOUNT])
def test_check_amount_accepts_fen(amount: int) -> None:
    assert check_amount(amount) == amount


@pytest.mark.parametrize("amount", [0, -5, 2.5, True, MAX_AMOUNT + 1])
def test_transfer_spec_checks_amount(amount: object) -> None:
    with pytest.raises(InvalidInput) as info:
        TransferSpec(TransferKind.PURCHASE, purse(1), merchant("canteen1"), amount)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_AMOUNT


def test_transfer_spec_refuses_same_account() -> None:
    with pytest.raises(InvalidInput) as info:
        TransferSpec(TransferKind.FREEZE, purse(7), purse(7), 100)
    assert info.value.code is ErrorCode.INVALID_INPUT


@pytest.mark.parametrize("bad", ["purse", "purse:", "wallet:1", ":1", ""])
def test_transfer_spec_refuses_unknown_accounts(bad: str) -> None:
    with pytest.raises(InvalidInput):
        TransferSpec(TransferKind.TOPUP, cash(), bad, 100)
    with pytest.raises(InvalidInput):
        account_kind(bad)


def test_topup_only_from_cash_or_external() -> None:
    """TOP-1: money enters a purse from a cash point or a payment channel, nothing else."""
    assert topup(1, 500, cash("kiosk3")).dest == purse(1)
    assert topup(1, 500, external("app")).source == "external:app"
    for source in (merchant("shop"), purse(2), "fee_income:card_center"):
        with pytest.raises(InvalidInput):
            topup(1, 500, source)


def test_correction_gives_back_up_to_what_is_left() -> None:
    """TOP-2: a correction refers to the sale, reverses direction, never exceeds what is left."""
    sale = purchase(3, "canteen1", 1_000)
    first = correction(sale, 41, 300, already_corrected=0)
    assert (first.source, first.dest) == (sale.dest, sale.source)
    assert first.kind is TransferKind.CORRECTION
    assert first.ref == 41
    assert first.amount == 300
    rest = correction(sale, 41, 700, already_corrected=300)
    assert rest.amount == 700
    with pytest.raises(RuleViolation) as info:
        correction(sale, 41, 1, already_corrected=1_000)
    assert info.value.code is ErrorCode.CORRECTION_EXCEEDS_ORIGINAL
    assert info.value.rule == "TOP-2"
    with pytest.raises(RuleViolation) as info:
        correction(sale, 41, 701, already_corrected=300)
    assert info.value.code is ErrorCode.CORRECTION_EXCEEDS_ORIGINAL


def test_correction_needs_a_purchase_and_a_valid_amount() -> None:
    with pytest.raises(RuleViolation) as info:
        correction(topup(1, 500, cash()), 5, 100, already_corrected=0)
    assert info.value.rule == "TOP-2"
    with pytest.raises(InvalidInput) as amount_info:
        correction(purchase(1, "m", 500), 5, 0, already_corrected=0)
    assert amount_info.value.code is ErrorCode.INVALID_AMOUNT


@given(
    original=st.integers(min_value=1, max_value=100_000),
    parts=st.lists(st.integers(min_value=1, max_value=100_000), max_size=20),
)
def test_corrections_never_sum_above_the_original(original: int, parts: list[int]) -> None:
    """TOP-2 over many corrections: accepted ones never add up to more than the sale."""
    sale = purchase(1, "canteen1", original)
    corrected = 0
    for part in parts:
        if corrected + part > original:
            with pytest.raises(RuleViolation) as info:
                correction(sale, 1, part, already_corrected=corrected)
            assert info.value.code is ErrorCode.CORRECTION_EXCEEDS_ORIGINAL
            continue
        spec = correction(sale, 1, part, already_corrected=corrected)
        assert spec.amount == part
        corrected += spec.amount
        assert corrected <= original
    assert corrected <= original


def test_reversal_mirrors_the_original() -> None:
    sale = purchase(2, "shop", 250, memo="饮料")
    undo = reversal(sale, 9)
    assert (undo.source, undo.dest, undo.amount, undo.ref) == (sale.dest, sale.source, 250, 9)
    assert undo.kind is TransferKind.REVERSAL


def test_builders_use_the_right_accounts() -> None:
    """EXC-3 freeze/release, REF cash-out and deposits, FEE-1 fees, MEAL subsidies."""
    assert account_kind(freeze(4, 10).dest) is AccountKind.HOLD
    assert account_kind(release(4, 10).dest) is AccountKind.PURSE
    assert account_kind(cash_out(4, 10).dest) is AccountKind.CASH
    assert account_kind(deposit_in(4, 10).dest) is AccountKind.DEPOSIT
    assert account_kind(deposit_out(4, 10).source) is AccountKind.DEPOSIT
    assert account_kind(fee(10).dest) is AccountKind.FEE_INCOME
    assert account_kind(subsidy_grant("canteen2", 10).source) is AccountKind.SUBSIDY


# --- conservation over random sequences ---------------------------------------------------------

HOLDERS = st.integers(min_value=1, max_value=4)
AMOUNTS = st.integers(min_value=1, max_value=5_000)

spec_strategy: st.SearchStrategy[TransferSpec] = st.one_of(
    st.builds(topup, HOLDERS, AMOUNTS, st.sampled_from([cash(), cash("kiosk1"), external("app")])),
    st.builds(purchase, HOLDERS, st.sampled_from(["canteen1", "shop"]), AMOUNTS),
    st.builds(freeze, HOLDERS, AMOUNTS),
    st.builds(release, HOLDERS, AMOUNTS),
    st.builds(cash_out, HOLDERS, AMOUNTS),
    st.builds(deposit_in, HOLDERS, AMOUNTS),
    st.builds(deposit_out, HOLDERS, AMOUNTS),
    st.builds(fee, AMOUNTS),
    st.builds(subsidy_grant, st.sampled_from(["canteen1", "canteen2"]), AMOUNTS),
)


@settings(max_examples=200)
@given(specs=st.lists(spec_strategy, max_size=60))
def test_balances_from_any_sequence_sum_to_zero(specs: list[TransferSpec]) -> None:
    """Conservation: every transfer is balanced, so all balances together are always zero.

    Transfers that would take a purse, hold or deposit below zero are skipped, as storage refuses
    them; the non-negative kinds therefore never go negative and each balance is in minus out.
    """
    balances: dict[str, int] = defaultdict(int)
    inflow: dict[str, int] = defaultdict(int)
    outflow: dict[str, int] = defaultdict(int)
    for spec in specs:
        assert isinstance(spec.amount, int)
        assert spec.amount > 0
        if account_kind(spec.source) in NON_NEGATIVE_KINDS and balances[spec.source] < spec.amount:
            continue
        balances[spec.source] -= spec.amount
        balances[spec.dest] += spec.amount
        outflow[spec.source] += spec.amount
        inflow[spec.dest] += spec.amount
        assert sum(balances.values()) == 0
    assert sum(balances.values()) == 0
    for account, balance in balances.items():
        assert balance == inflow[account] - outflow[account]
        if account_kind(account) in NON_NEGATIVE_KINDS:
            assert balance >= 0


def test_errors_are_onecard_errors() -> None:
    """Ledger refusals belong to the shared error tree (mapped once at the seam)."""
    with pytest.raises(OnecardError):
        check_amount(0)
