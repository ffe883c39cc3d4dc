"""What both tap-path transactions (SQLite's :class:`storage.tapwriter.SqliteTapTx`, PostgreSQL's
:class:`storage.pgtap.PgTapTx`) build on the few statements each writes in its own dialect."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from protocol.errors import InsufficientFunds, NotFound
from protocol.ledger import NON_NEGATIVE_KINDS, TransferSpec, account_kind
from storage.records import Holder, Row, Transfer

#: The columns of a transfer row as :meth:`TapTxBase._insert_transfer` receives them.
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


class TapTxBase:
    def get(self, table: str, key: Any) -> Row | None:
        raise NotImplementedError

    def post_returning(
        self,
        spec: TransferSpec,
        *,
        at: datetime,
        actor: str,
        card_id: int | None = None,
        terminal_id: str | None = None,
        request_id: str | None = None,
        holder_id: int | None = None,
    ) -> tuple[int, int]:
        """The tap path's one posting rule, on both backends: ``(transfer id, the source's
        balance after)``. A source that may not go negative (purse, hold, deposit) is debited
        by one conditional statement or the transfer is refused; the other side moves as the
        backend moves unguarded accounts (SQLite at once, PostgreSQL at the end of the batch);
        then the immutable transfer row."""
        if account_kind(spec.source) in NON_NEGATIVE_KINDS:
            after = self._debit_guarded(spec.source, spec.amount)
            if after is None:
                have = self.balance(spec.source)
                raise InsufficientFunds(
                    f"余额不足：需要 {spec.amount} 分，现有 {have} 分",
                    f"insufficient balance: need {spec.amount} fen, have {have} fen",
                )
        else:
            after = self._move_unguarded(spec.source, -spec.amount)
        if account_kind(spec.dest) in NON_NEGATIVE_KINDS:
            self._credit_guarded(spec.dest, spec.amount, holder_id)
        else:
            self._move_unguarded(spec.dest, spec.amount)
        transfer_id = self._insert_transfer(
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
        return transfer_id, after

    # --- the statements each backend writes in its dialect ---------------------------------
    def balance(self, account: str) -> int:
        raise NotImplementedError

    def _debit_guarded(self, account: str, amount: int) -> int | None:
        """``balance -= amount`` only if it stays >= 0: the balance after, or None."""
        raise NotImplementedError

    def _credit_guarded(self, account: str, amount: int, holder_id: int | None) -> None:
        """``balance += amount``, creating the (purse, hold, deposit) account of ``holder_id``."""
        raise NotImplementedError

    def _move_unguarded(self, account: str, change: int) -> int:
        """``balance += change`` on an account that may go negative (created on first use);
        the balance after where the backend knows it at once, else 0."""
        raise NotImplementedError

    def _insert_transfer(self, values: tuple[Any, ...]) -> int:
        """The transfer row (:data:`TRANSFER_COLUMNS`, in that order); its id."""
        raise NotImplementedError

    def post(
        self,
        spec: TransferSpec,
        *,
        at: datetime,
        actor: str,
        card_id: int | None = None,
        terminal_id: str | None = None,
        request_id: str | None = None,
        holder_id: int | None = None,
    ) -> int:
        """One balanced transfer with a conditional debit (no negative purse, ever)."""
        return self.post_returning(
            spec,
            at=at,
            actor=actor,
            card_id=card_id,
            terminal_id=terminal_id,
            request_id=request_id,
            holder_id=holder_id,
        )[0]

    def get_holder(self, holder_id: int) -> Holder:
        row = self.get("holders", holder_id)
        if row is None:
            raise NotFound(f"无此持卡人 {holder_id}", f"no holder {holder_id}")
        return Holder.from_row(row)

    def get_transfer(self, transfer_id: int) -> Transfer:
        row = self.get("transfers", transfer_id)
        if row is None:
            raise NotFound(f"无此交易 {transfer_id}", f"no transfer {transfer_id}")
        return Transfer.from_row(row)
