"""What both tap-path transactions (SQLite's :class:`storage.tapwriter.SqliteTapTx`, PostgreSQL's
:class:`storage.pgtap.PgTapTx`) share: every read is one statement of :mod:`storage.queries`
(compiled at import for each driver) run through the backend's ``first``/``rows``/``value``; the
tap path's registers are typed operations; money goes through :mod:`storage.posting`, as the
counter's does. Each backend writes only the posting rule's operations, the idempotency record
and the card alert in its own dialect."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from protocol.ledger import TransferSpec
from protocol.types import CardState
from storage import queries as q
from storage.posting import posting, run
from storage.queries import Query
from storage.records import Card, Holder, MealAllowance, Row, TapCard, Transfer

#: cached card lookups kept between batches before the cache is emptied
CARD_CACHE_LIMIT = 200_000


class TapTxBase:
    dialect: str  # "sqlite" or "postgresql"
    #: terminal and card rows cached between batches; each backend empties them when another
    #: connection committed (SQLite's data_version, PostgreSQL's registry_epoch)
    _terminals: dict[str, tuple[str, str | None, bool] | None]
    _cards: dict[str, TapCard | None]

    # --- how each backend runs a shared read (storage.queries), compiled for its driver ---
    def first(self, query: Query, *args: Any) -> Row | None:
        raise NotImplementedError

    def rows(self, query: Query, *args: Any) -> list[Row]:
        raise NotImplementedError

    def value(self, query: Query, *args: Any) -> Any:
        raise NotImplementedError

    # the hot reads of every tap (terminals, cards, the deny version, the idempotency key): a
    # backend that defers its ledger writes (SQLite's writer) serves them without flushing first
    def hot_first(self, query: Query, *args: Any) -> Row | None:
        return self.first(query, *args)

    def hot_value(self, query: Query, *args: Any) -> Any:
        return self.value(query, *args)

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
        return int(self.value(q.BALANCE, account) or 0)

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

    def insert(self, table: str, values: Mapping[str, Any]) -> int:
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

    # --- the shared reads, one definition each (storage.queries) ---------------------------
    def get_holder(self, holder_id: int) -> Holder:
        return q.holder_of(self.first(q.HOLDER, holder_id), holder_id)

    def get_transfer(self, transfer_id: int) -> Transfer:
        return q.transfer_of(self.first(q.TRANSFER, transfer_id), transfer_id)

    def transfers_of(self, account: str, limit: int = 20) -> list[Transfer]:
        return [Transfer.from_row(r) for r in self.rows(q.TRANSFERS_OF, account, limit)]

    def referencing_total(self, ref_id: int) -> int:
        return int(self.value(q.REFERENCING_TOTAL, ref_id))

    def deny_changes_after(self, version: int, limit: int = 10_000) -> list[Row]:
        """``version``, ``card_id``, ``uid``, ``change``, ``denied`` of the newer changes
        (``limit`` -1: all); what distribution needs, without parsing timestamps."""
        return self.rows(q.DENY_CHANGES_AFTER, version, q.no_limit(limit, self.dialect))

    def card_by_uid(self, uid: str) -> Card | None:
        """The card with this canonical UID (the tap path's UIDs are canonical already)."""
        row = self.first(q.CARD_BY_UID, uid)
        return None if row is None else Card.from_row(row)

    # --- the tap path's registers as typed operations (no table names in the services) ------
    def water_hold(self, hold_id: int) -> Row | None:
        """A water hold, locked for settling on PostgreSQL; None for an id no hold can have (the
        column is a 32-bit integer: asyncpg refused a bigger one from a terminal with DataError)."""
        if not 0 < hold_id < 2**31:
            return None
        return self.first(q.WATER_HOLD, hold_id)

    def offline_sale_seen(self, terminal_id: str, seq: int) -> bool:
        return self.value(q.OFFLINE_SALE_SEEN, terminal_id, seq) is not None

    def offline_seqs(self, terminal_id: str) -> list[int]:
        return [int(r["seq"]) for r in self.rows(q.OFFLINE_SEQS, terminal_id)]

    def offline_sales_of_card(self, terminal_id: str, card_uid: str) -> list[Row]:
        return self.rows(q.OFFLINE_SALES_OF_CARD, terminal_id, card_uid)

    def deny_changes_of_card(self, card_id: int) -> list[Row]:
        return self.rows(q.DENY_CHANGES_OF_CARD, card_id)

    def deny_change(self, version: int) -> Row | None:
        return self.first(q.DENY_CHANGE, version)

    def holder_session(self, token_hash: str) -> Row | None:
        return self.first(q.HOLDER_SESSION, token_hash)

    def idempotency_record(self, terminal_id: str, request_id: str) -> Row | None:
        return self.first(q.IDEMPOTENCY_RECORD, terminal_id, request_id)

    # --- the tap path's register writes, by typed operations --------------------------------
    def terminal_hello(
        self, terminal_id: str, *, firmware: str | None, denylist_version: int, at: datetime
    ) -> None:
        values = {"firmware": firmware, "denylist_version": denylist_version, "last_seen_at": at}
        self.update("terminals", terminal_id, values)

    def terminal_heartbeat(self, terminal_id: str, *, denylist_version: int, at: datetime) -> None:
        self.update(
            "terminals", terminal_id, {"denylist_version": denylist_version, "last_seen_at": at}
        )

    def open_water_hold(
        self, *, terminal_id: str, card_id: int, holder_id: int, amount: int, at: datetime
    ) -> int:
        values = {
            "terminal_id": terminal_id,
            "card_id": card_id,
            "holder_id": holder_id,
            "amount": amount,
            "state": "held",
            "created_at": at,
        }
        return self.insert("water_holds", values)

    def close_water_hold(self, hold_id: int, *, state: str, used: int, at: datetime) -> None:
        """``state``: settled or released."""
        self.update("water_holds", hold_id, {"state": state, "used": used, "closed_at": at})

    def record_offline_sale(self, values: Mapping[str, Any]) -> None:
        self.put("offline_sales", values)

    def add_holder_alert(self, values: Mapping[str, Any]) -> None:
        self.insert("holder_alerts", values)

    # --- the hot reads of every decision -------------------------------------------------------
    def idempotent(self, terminal_id: str, request_id: str) -> tuple[str, str] | None:
        row = self.hot_first(q.IDEMPOTENT, terminal_id, request_id)
        return None if row is None else (row["fingerprint"], row["reply"])

    def terminal(self, terminal_id: str) -> tuple[str, str | None, bool] | None:
        if terminal_id in self._terminals:
            return self._terminals[terminal_id]
        row = self.hot_first(q.TERMINAL_DECISION, terminal_id)
        value = None if row is None else (row["kind"], row["merchant_id"], bool(row["enabled"]))
        self._terminals[terminal_id] = value
        return value

    def tap_card(self, uid: str) -> TapCard | None:
        if uid in self._cards:
            return self._cards[uid]
        row = self.hot_first(q.TAP_CARD, uid)
        value = (
            None
            if row is None
            else TapCard(
                row["id"],
                row["holder_id"],
                CardState(row["state"]),
                row["valid_until"],
                row["type_group"],
                row["status"],
            )
        )
        if len(self._cards) > CARD_CACHE_LIMIT:
            self._cards.clear()
        self._cards[uid] = value
        return value

    def deny_version(self) -> int:
        return int(self.hot_value(q.DENY_VERSION) or 0)

    def last_purchase_id(self, terminal_id: str) -> int | None:
        value = self.value(q.LAST_PURCHASE_ID, terminal_id)
        return None if value is None else int(value)
