"""The one posting rule for money, on every backend and both sides of the registry.

A transfer is posted by :func:`posting`, a plan of typed operations (no table names, no SQL):
a source that may not go negative (purse, hold, deposit) is debited by one conditional
operation or the transfer is refused; the other side is credited; then the immutable transfer
row. The plan does no I/O itself. Whoever holds a transaction runs it:

- :func:`run` on a synchronous tap-path transaction (SQLite's batching writer
  :class:`storage.tapwriter.SqliteTapTx`, PostgreSQL's executor :class:`storage.pgtap.PgTapTx`);
- :func:`run_async` on the counter's asynchronous transaction (:class:`storage.sql.SqlTx`, SQLite
  and PostgreSQL through SQLAlchemy).

Each backend writes only the five operations in its dialect (:class:`Statements`,
:class:`AsyncStatements`); the contract tests run the same postings on all of them.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from protocol.errors import InsufficientFunds
from protocol.ledger import NON_NEGATIVE_KINDS, TransferSpec, account_kind

#: The columns of a transfer row, in the order :class:`InsertTransfer` carries them.
TRANSFER_COLUMNS = (
    "kind",
    "source",
    "dest",
    "amount",
    "ref_id",
    "at",
    "actor",
    "card_id",
    "terminal_id",
    "request_id",
    "memo",
)


@dataclass(frozen=True, slots=True)
class DebitGuarded:
    """``balance -= amount`` only if it stays >= 0; answered with the balance after, or None
    (also when the account does not exist)."""

    account: str
    amount: int


@dataclass(frozen=True, slots=True)
class CreditGuarded:
    """``balance += amount`` on a purse, hold or deposit, created for ``holder_id`` if new."""

    account: str
    amount: int
    holder_id: int | None


@dataclass(frozen=True, slots=True)
class MoveUnguarded:
    """``balance += change`` on an account that may go negative (cash, merchant, fund), created
    on first use; answered with the balance after where the backend knows it at once, else 0."""

    account: str
    change: int


@dataclass(frozen=True, slots=True)
class ReadBalance:
    account: str


@dataclass(frozen=True, slots=True)
class InsertTransfer:
    """The transfer row (:data:`TRANSFER_COLUMNS`, in that order); answered with its id."""

    values: tuple[Any, ...]


Operation = DebitGuarded | CreditGuarded | MoveUnguarded | ReadBalance | InsertTransfer
#: A posting plan: yields operations, is sent each one's answer, returns
#: ``(transfer id, the source's balance after)``.
Posting = Generator[Operation, Any, tuple[int, int]]


def posting(
    spec: TransferSpec,
    *,
    at: datetime,
    actor: str,
    card_id: int | None = None,
    terminal_id: str | None = None,
    request_id: str | None = None,
    holder_id: int | None = None,
) -> Posting:
    """The rule. Raises :class:`~protocol.errors.InsufficientFunds` (the caller's transaction
    then rolls back whatever else it did) when a guarded source cannot pay."""
    if account_kind(spec.source) in NON_NEGATIVE_KINDS:
        after = yield DebitGuarded(spec.source, spec.amount)
        if after is None:
            have = yield ReadBalance(spec.source)
            raise InsufficientFunds(
                f"余额不足：需要 {spec.amount} 分，现有 {have} 分",
                f"insufficient balance: need {spec.amount} fen, have {have} fen",
            )
    else:
        after = yield MoveUnguarded(spec.source, -spec.amount)
    if account_kind(spec.dest) in NON_NEGATIVE_KINDS:
        yield CreditGuarded(spec.dest, spec.amount, holder_id)
    else:
        yield MoveUnguarded(spec.dest, spec.amount)
    transfer_id = yield InsertTransfer(
        (
            spec.kind.value,
            spec.source,
            spec.dest,
            spec.amount,
            spec.ref,
            at,
            actor,
            card_id,
            terminal_id,
            request_id,
            spec.memo,
        )
    )
    return int(transfer_id), int(after)


class Statements(Protocol):
    """A synchronous transaction's five ledger operations (the tap path's backends)."""

    def balance(self, account: str) -> int: ...
    def debit_guarded(self, account: str, amount: int) -> int | None: ...
    def credit_guarded(self, account: str, amount: int, holder_id: int | None) -> None: ...
    def move_unguarded(self, account: str, change: int) -> int: ...
    def insert_transfer(self, values: tuple[Any, ...]) -> int: ...


class AsyncStatements(Protocol):
    """The same five operations on an asynchronous transaction (the counter's)."""

    async def balance(self, account: str) -> int: ...
    async def debit_guarded(self, account: str, amount: int) -> int | None: ...
    async def credit_guarded(self, account: str, amount: int, holder_id: int | None) -> None: ...
    async def move_unguarded(self, account: str, change: int) -> int: ...
    async def insert_transfer(self, values: tuple[Any, ...]) -> int: ...


def run(tx: Statements, plan: Posting) -> tuple[int, int]:
    """Carry out ``plan`` on a synchronous transaction."""
    answer: Any = None
    try:
        while True:
            op = plan.send(answer)
            match op:
                case DebitGuarded(account, amount):
                    answer = tx.debit_guarded(account, amount)
                case CreditGuarded(account, amount, holder_id):
                    tx.credit_guarded(account, amount, holder_id)
                    answer = None
                case MoveUnguarded(account, change):
                    answer = tx.move_unguarded(account, change)
                case ReadBalance(account):
                    answer = tx.balance(account)
                case InsertTransfer(values):
                    answer = tx.insert_transfer(values)
    except StopIteration as done:
        result: tuple[int, int] = done.value
        return result
    finally:
        plan.close()


async def run_async(tx: AsyncStatements, plan: Posting) -> tuple[int, int]:
    """Carry out ``plan`` on an asynchronous transaction."""
    answer: Any = None
    try:
        while True:
            op = plan.send(answer)
            match op:
                case DebitGuarded(account, amount):
                    answer = await tx.debit_guarded(account, amount)
                case CreditGuarded(account, amount, holder_id):
                    await tx.credit_guarded(account, amount, holder_id)
                    answer = None
                case MoveUnguarded(account, change):
                    answer = await tx.move_unguarded(account, change)
                case ReadBalance(account):
                    answer = await tx.balance(account)
                case InsertTransfer(values):
                    answer = await tx.insert_transfer(values)
    except StopIteration as done:
        result: tuple[int, int] = done.value
        return result
    finally:
        plan.close()
