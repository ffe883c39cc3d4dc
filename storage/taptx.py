"""What both tap-path transactions (SQLite's :class:`storage.tapwriter.SqliteTapTx`, PostgreSQL's
:class:`storage.pgtap.PgTapTx`) build on the few statements each writes in its own dialect; money
goes through :mod:`storage.posting`, as the counter's does."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from protocol.errors import NotFound
from protocol.ledger import TransferSpec
from storage.posting import posting, run
from storage.records import Holder, MealAllowance, Row, Transfer


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
        """``(transfer id, the source's balance after)`` by the one posting rule
        (:func:`storage.posting.posting`); the backend writes its five operations."""
        return run(
            self,
            posting(
                spec,
                at=at,
                actor=actor,
                card_id=card_id,
                terminal_id=terminal_id,
                request_id=request_id,
                holder_id=holder_id,
            ),
        )

    # --- the operations each backend writes in its dialect (storage.posting.Statements) ---
    def balance(self, account: str) -> int:
        raise NotImplementedError

    def debit_guarded(self, account: str, amount: int) -> int | None:
        raise NotImplementedError

    def credit_guarded(self, account: str, amount: int, holder_id: int | None) -> None:
        raise NotImplementedError

    def move_unguarded(self, account: str, change: int) -> int:
        raise NotImplementedError

    def insert_transfer(self, values: tuple[Any, ...]) -> int:
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

    def put(self, table: str, values: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def update(self, table: str, key: Any, values: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def meal_allowance(self, holder_id: int, month: str) -> MealAllowance | None:
        """MEAL-1's subsidised meals of ``month`` (``YYYY-MM``, campus time); None: no quota."""
        quota = self.get("meal_quotas", holder_id)
        if quota is None:
            return None
        return MealAllowance.of(quota, self.get("meal_usage", (holder_id, month)))

    def count_meal(self, holder_id: int, month: str) -> None:
        """One more subsidised meal in ``month``."""
        usage = self.get("meal_usage", (holder_id, month))
        if usage is None:
            self.put("meal_usage", {"holder_id": holder_id, "month": month, "used": 1})
        else:
            self.update("meal_usage", (holder_id, month), {"used": int(usage["used"]) + 1})

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
