"""Stored-value posting rules: integer fen, balanced immutable transfers, reversals.

Every money movement is one :class:`TransferSpec` moving ``amount`` fen from ``source`` to
``dest``. An account's balance is what came in minus what went out, so the sum over all accounts
is zero by construction (conservation); accounts of the kinds in :data:`NON_NEGATIVE_KINDS` may
never go below zero. Corrections are new transfers that reference the original; nothing is updated.
"""

from protocol.ledger.postings import (
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
    deposit,
    deposit_in,
    deposit_out,
    external,
    fee,
    fee_income,
    freeze,
    hold,
    merchant,
    purchase,
    purse,
    release,
    reversal,
    subsidy,
    subsidy_grant,
    topup,
)

__all__ = [
    "MAX_AMOUNT",
    "NON_NEGATIVE_KINDS",
    "AccountKind",
    "TransferKind",
    "TransferSpec",
    "account_kind",
    "cash",
    "cash_out",
    "check_amount",
    "correction",
    "deposit",
    "deposit_in",
    "deposit_out",
    "external",
    "fee",
    "fee_income",
    "freeze",
    "hold",
    "merchant",
    "purchase",
    "purse",
    "release",
    "reversal",
    "subsidy",
    "subsidy_grant",
    "topup",
]
