"""The registry's ports: what the service layer may ask of any backend (typing.Protocol).

:class:`storage.sql.SqlRegistry` implements them for SQLite and PostgreSQL; a test or a future
backend implements the same and runs the same contract tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from protocol.ledger import TransferSpec
from storage.records import Card, Holder, Receipt, Row, Transfer


class Tx(Protocol):
    """One transaction: everything done through it commits together or not at all."""

    async def insert(self, table: str, values: Mapping[str, Any]) -> int: ...
    async def put(self, table: str, values: Mapping[str, Any]) -> None: ...
    async def update(self, table: str, key: Any, values: Mapping[str, Any]) -> None: ...
    async def get(self, table: str, key: Any) -> Row | None: ...
    async def find(
        self, table: str, *, order_by: str | None = None, limit: int | None = None, **eq: Any
    ) -> list[Row]: ...
    async def count(self, table: str, **eq: Any) -> int: ...
    async def audit(
        self,
        at: datetime,
        actor: str,
        action: str,
        entity: str,
        entity_id: object,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def get_holder(self, holder_id: int) -> Holder: ...
    async def holders_by_number(self, number: str) -> list[Holder]: ...
    async def holders_where(self, **eq: Any) -> list[Holder]: ...

    async def get_card(self, card_id: int) -> Card: ...
    async def card_by_serial(self, serial: str) -> Card: ...
    async def cards_of_holder(self, holder_id: int) -> list[Card]: ...
    async def used_serials_between(self, low: str, high: str) -> str | None: ...
    async def add_deny_change(self, card: Card, change: str, denied: bool, at: datetime) -> int: ...

    async def balance(self, account: str) -> int: ...
    async def post(
        self,
        spec: TransferSpec,
        *,
        at: datetime,
        actor: str,
        card_id: int | None = None,
        terminal_id: str | None = None,
        request_id: str | None = None,
        holder_id: int | None = None,
    ) -> int: ...
    async def get_transfer(self, transfer_id: int) -> Transfer: ...
    async def referencing_total(self, ref_id: int) -> int: ...
    async def transfers_of(self, account: str, limit: int = 20) -> list[Transfer]: ...

    async def issue_receipt(
        self,
        *,
        holder_id: int | None,
        payer: str,
        item: str,
        amount: int,
        at: datetime,
        cashier: str,
        transfer_id: int,
    ) -> Receipt: ...

    async def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]: ...


class Registry(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...
    def read(self) -> AbstractAsyncContextManager[Tx]: ...
    async def close(self) -> None: ...
