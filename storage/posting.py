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
:class:`AsyncStatements`; the counter's also the two of the bulk form, :func:`posting_many`); the
contract tests (tests/storage/test_posting_contract.py) run the same postings on all of them.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

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


# The single-posting operations are built on every tap: plain slotted dataclasses (a frozen one
# costs ~0.6 µs more to build, measured for issue 14); nothing mutates a yielded operation.
@dataclass(slots=True)
class DebitGuarded:
    """``balance -= amount`` only if it stays >= 0; answered with the balance after, or None
    (also when the account does not exist)."""

    account: str
    amount: int


@dataclass(slots=True)
class CreditGuarded:
    """``balance += amount`` on a purse, hold or deposit, created for ``holder_id`` if new."""

    account: str
    amount: int
    holder_id: int | None


@dataclass(slots=True)
class MoveUnguarded:
    """``balance += change`` on an account that may go negative (cash, merchant, fund), created
    on first use; answered with the balance after where the backend knows it at once, else 0."""

    account: str
    change: int


@dataclass(slots=True)
class ReadBalance:
    account: str


@dataclass(slots=True)
class InsertTransfer:
    """The transfer row (:data:`TRANSFER_COLUMNS`, in that order); answered with its id."""

    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class MoveMany:
    """Bulk, never refused: ``balance += change`` for each ``(account, change, owner)`` in
    account order (one lock order for every writer); an account is created for its owner
    (a holder id or None) on first use."""

    changes: tuple[tuple[str, int, int | None], ...]


@dataclass(frozen=True, slots=True)
class InsertTransfers:
    """Many transfer rows (each :data:`TRANSFER_COLUMNS`, in that order)."""

    rows: tuple[tuple[Any, ...], ...]


Operation = (
    DebitGuarded
    | CreditGuarded
    | MoveUnguarded
    | ReadBalance
    | InsertTransfer
    | MoveMany
    | InsertTransfers
)
R = TypeVar("R")
#: A plan: yields operations, is sent each one's answer, returns its result.
Plan = Generator[Operation, Any, R]
#: :func:`posting`'s plan returns ``(transfer id, the source's balance after)``.
Posting = Plan[tuple[int, int]]


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
        _transfer_row(spec, at, actor, card_id, terminal_id, request_id)
    )
    return int(transfer_id), int(after)


def posting_many(
    specs: list[TransferSpec], *, at: datetime, actor: str, card_ids: list[int | None]
) -> Plan[None]:
    """The same rule in bulk for transfers whose sources may go negative (cash, external
    channels: a cash point's top-up batch): nothing can be refused, so every account moves once
    by its net change and the rows go in together. A source that may not go negative is the
    single :func:`posting`'s business (``ValueError``)."""
    for spec in specs:
        if account_kind(spec.source) in NON_NEGATIVE_KINDS:
            msg = f"a bulk posting cannot debit {spec.source}: post it alone"
            raise ValueError(msg)
    if not specs:
        return
    net: dict[str, int] = {}
    for spec in specs:
        net[spec.source] = net.get(spec.source, 0) - spec.amount
        net[spec.dest] = net.get(spec.dest, 0) + spec.amount
    yield MoveMany(tuple((a, net[a], _owner(a)) for a in sorted(net)))
    yield InsertTransfers(
        tuple(
            _transfer_row(spec, at, actor, card_id, None, None)
            for spec, card_id in zip(specs, card_ids, strict=True)
        )
    )


def _owner(account: str) -> int | None:
    """The holder of a purse, hold or deposit account (``purse:42`` -> 42)."""
    if account_kind(account) not in NON_NEGATIVE_KINDS:
        return None
    suffix = account.split(":", 1)[1]
    return int(suffix) if suffix.isdigit() else None


def _transfer_row(
    spec: TransferSpec,
    at: datetime,
    actor: str,
    card_id: int | None,
    terminal_id: str | None,
    request_id: str | None,
) -> tuple[Any, ...]:
    return (
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
    async def move_many(self, changes: tuple[tuple[str, int, int | None], ...]) -> None: ...
    async def insert_transfers(self, rows: tuple[tuple[Any, ...], ...]) -> None: ...


def run(tx: Statements, plan: Plan[R]) -> R:
    """Carry out ``plan`` on a synchronous transaction (the tap path posts one at a time)."""
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
                case MoveMany() | InsertTransfers():
                    msg = f"{type(op).__name__}: no bulk posting on the tap path"
                    raise TypeError(msg)
    except StopIteration as done:
        result: R = done.value
        return result
    finally:
        plan.close()


async def run_async(tx: AsyncStatements, plan: Plan[R]) -> R:
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
                case MoveMany(changes):
                    await tx.move_many(changes)
                    answer = None
                case InsertTransfers(rows):
                    await tx.insert_transfers(rows)
                    answer = None
    except StopIteration as done:
        result: R = done.value
        return result
    finally:
        plan.close()
