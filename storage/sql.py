"""The registry on SQLAlchemy Core: one implementation for SQLite and PostgreSQL.

A :class:`SqlRegistry` hands out transactions (:meth:`SqlRegistry.transaction` for writes,
:meth:`SqlRegistry.read` for reads). Everything done inside one ``async with`` commits together or
not at all; money-moving writes use conditional updates so any number of writers (the counter CLI,
several gateways) stay correct without caching balances (FIELD-NOTES, SQLite section).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, bindparam, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.carduid import canonical_card_uid
from protocol.errors import Duplicate, ErrorCode, NotFound, OnecardError
from protocol.ledger import TransferSpec, account_kind
from storage import piidb
from storage import queries as q
from storage import schema as s
from storage.engine import Engines, database_url, open_engines
from storage.migrate import require_head, upgrade
from storage.pii import Keyring, load_keyring
from storage.posting import TRANSFER_COLUMNS, posting, posting_many, run_async
from storage.queries import Query
from storage.records import Card, Holder, MealAllowance, Receipt, Row, Transfer

IN_CHUNK = 500

#: Driver messages of a registry that cannot serve now (a lock held too long, a full or failing
#: disk, a lost server connection), as opposed to a bug in a statement.
_UNAVAILABLE_MARKERS = ("locked", "busy", "full", "disk i/o", "unable to open", "connection")


def _raise_unavailable(exc: OperationalError) -> None:
    """A driver error the caller cannot fix raises ``unavailable`` with the contract's code
    (nothing was done; retry), so the counter, the console and the portal say so in the clerk's
    words instead of an internal error; any other ``OperationalError`` is left to the caller."""
    text = str(exc.orig or exc)
    if exc.connection_invalidated or any(m in text.lower() for m in _UNAVAILABLE_MARKERS):
        raise OnecardError(
            "数据库暂不可用（忙、磁盘已满或连接中断），未办理，请稍后重试",
            f"registry unavailable ({text.splitlines()[0][:200]}): nothing was done, try again",
            code=ErrorCode.UNAVAILABLE,
        ) from exc


TABLES: dict[str, Table] = {t.name: t for t in s.metadata.sorted_tables}


def _table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}") from None


def _pk(table: Table) -> Any:
    return next(iter(table.primary_key.columns))


def _key_clause(table: Table, key: Any) -> Any:
    """``pk == key``; a tuple key matches a composite primary key column by column."""
    columns = list(table.primary_key.columns)
    if len(columns) == 1:
        return columns[0] == key
    if not isinstance(key, tuple) or len(key) != len(columns):
        raise ValueError(f"{table.name} needs a key of {len(columns)} values")
    return and_(*(c == v for c, v in zip(columns, key, strict=True)))


class SqlTx:
    """One database transaction with the registry's operations.

    A :class:`~protocol.errors.Duplicate` raised by :meth:`insert`/:meth:`put` ends the
    transaction on PostgreSQL (the server aborts it): let it propagate, never catch it and carry on.
    """

    def __init__(self, conn: AsyncConnection, pii: Keyring) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.pii = pii  # national IDs sealed on write, looked up by hash (storage/piidb.py)

    # --- generic rows (registers: stock, receipts, scrap, meal quotas, operators, ...) -----
    async def insert(self, table: str, values: Mapping[str, Any]) -> int:
        t = _table(table)
        values = piidb.seal_values(self.pii, table, values)
        try:
            result = await self.conn.execute(insert(t).values(**values).returning(_pk(t)))
        except IntegrityError as exc:
            raise Duplicate(
                f"{table} 记录重复或引用无效",
                f"{table}: duplicate or invalid reference ({exc.orig})",
            ) from exc
        return int(result.scalar_one())

    async def put(self, table: str, values: Mapping[str, Any]) -> None:
        """Insert a row whose key the caller gives (text keys: sessions, merchants)."""
        t = _table(table)
        values = piidb.seal_values(self.pii, table, values)
        try:
            await self.conn.execute(insert(t).values(**values))
        except IntegrityError as exc:
            raise Duplicate(
                f"{table} 记录重复或不符合约束",
                f"{table}: duplicate or breaks a constraint ({exc.orig})",
            ) from exc

    async def update(self, table: str, key: Any, values: Mapping[str, Any]) -> None:
        t = _table(table)
        values = piidb.seal_values(self.pii, table, values)
        result = await self.conn.execute(update(t).where(_key_clause(t, key)).values(**values))
        if result.rowcount != 1:
            raise NotFound(f"{table} 中无记录 {key}", f"{table}: no row {key}")

    async def update_where(
        self, table: str, key: Any, values: Mapping[str, Any], **eq: Any
    ) -> bool:
        """Update the row ``key`` only while its columns still equal ``eq`` (``None``: IS NULL);
        whether it did. A claim: of two transactions racing for one row, exactly one sees True
        (PostgreSQL re-checks the condition after the first commits; SQLite serialises writers).
        """
        t = _table(table)
        values = piidb.seal_values(self.pii, table, values)
        conditions = [t.c[k].is_(None) if v is None else t.c[k] == v for k, v in eq.items()]
        try:
            result = await self.conn.execute(
                update(t).where(_key_clause(t, key), *conditions).values(**values)
            )
        except IntegrityError as exc:
            raise Duplicate(
                f"{table} 记录重复或不符合约束",
                f"{table}: duplicate or breaks a constraint ({exc.orig})",
            ) from exc
        return bool(result.rowcount == 1)

    async def get(self, table: str, key: Any) -> Row | None:
        t = _table(table)
        row = (await self.conn.execute(select(t).where(_key_clause(t, key)))).mappings().first()
        return piidb.unseal(table, dict(row)) if row is not None else None

    async def find(
        self, table: str, *, order_by: str | None = None, limit: int | None = None, **eq: Any
    ) -> list[Row]:
        t = _table(table)
        eq = piidb.lookup_eq(self.pii, table, eq)
        query = select(t).where(and_(True, *(t.c[k] == v for k, v in eq.items())))
        query = query.order_by(t.c[order_by] if order_by else _pk(t))
        if limit is not None:
            query = query.limit(limit)
        return [piidb.unseal(table, dict(r)) for r in (await self.conn.execute(query)).mappings()]

    async def insert_many(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Bulk insert (one executemany); for rows whose keys the caller reads back after."""
        if not rows:
            return
        t = _table(table)
        rows = [dict(piidb.seal_values(self.pii, table, r)) for r in rows]
        try:
            await self.conn.execute(insert(t), rows)
        except IntegrityError as exc:
            raise Duplicate(
                f"{table} 记录重复或不符合约束",
                f"{table}: duplicate or breaks a constraint ({exc.orig})",
            ) from exc

    async def find_in(self, table: str, column: str, values: list[Any], **eq: Any) -> list[Row]:
        """Rows whose ``column`` is one of ``values`` (queried in chunks), with equality filters."""
        t = _table(table)
        column, values = piidb.lookup_in(self.pii, table, column, values)
        eq = piidb.lookup_eq(self.pii, table, eq)
        out: list[Row] = []
        for start in range(0, len(values), IN_CHUNK):
            chunk = values[start : start + IN_CHUNK]
            query = select(t).where(
                t.c[column].in_(chunk), and_(True, *(t.c[k] == v for k, v in eq.items()))
            )
            out.extend(
                piidb.unseal(table, dict(r)) for r in (await self.conn.execute(query)).mappings()
            )
        return out

    async def count(self, table: str, **eq: Any) -> int:
        t = _table(table)
        eq = piidb.lookup_eq(self.pii, table, eq)
        query = select(func.count()).select_from(t)
        query = query.where(and_(True, *(t.c[k] == v for k, v in eq.items())))
        return int((await self.conn.execute(query)).scalar_one())

    async def audit(
        self,
        at: datetime,
        actor: str,
        action: str,
        entity: str,
        entity_id: object,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None:
        """Append to the audit log: who, what, when, before/after (ACC, issue #2)."""
        await self.insert(
            "audit_log",
            {
                "at": at,
                "actor": actor,
                "action": action,
                "entity": entity,
                "entity_id": str(entity_id),
                "before": _dump(piidb.mask_audit(before)),
                "after": _dump(piidb.mask_audit(after)),
            },
        )

    # --- holders ---------------------------------------------------------------------------
    # the shared reads, one definition each (storage.queries), as on the tap path
    async def first(self, query: Query, *args: Any) -> Row | None:
        row = (await self.conn.execute(query.stmt, query.params(*args))).mappings().first()
        return None if row is None else dict(row)

    async def all_rows(self, query: Query, *args: Any) -> list[Row]:
        result = await self.conn.execute(query.stmt, query.params(*args))
        return [dict(r) for r in result.mappings()]

    async def value(self, query: Query, *args: Any) -> Any:
        return (await self.conn.execute(query.stmt, query.params(*args))).scalar_one_or_none()

    async def idempotency_record(self, terminal_id: str, request_id: str) -> Row | None:
        return await self.first(q.IDEMPOTENCY_RECORD, terminal_id, request_id)

    async def terminal_record(self, terminal_id: str) -> Row | None:
        return await self.first(q.TERMINAL, terminal_id)

    async def holder_session(self, token_hash: str) -> Row | None:
        return await self.first(q.HOLDER_SESSION, token_hash)

    async def get_holder(self, holder_id: int) -> Holder:
        row = await self.first(q.HOLDER, holder_id)
        return q.holder_of(None if row is None else piidb.unseal("holders", row), holder_id)

    async def holders_by_number(self, number: str) -> list[Holder]:
        return [Holder.from_row(r) for r in await self.find("holders", number=number)]

    async def holders_where(self, **eq: Any) -> list[Holder]:
        return [Holder.from_row(r) for r in await self.find("holders", **eq)]

    async def meal_allowance(self, holder_id: int, month: str) -> MealAllowance | None:
        """MEAL-1's subsidised meals of ``month`` (``YYYY-MM``, campus time); None: no quota."""
        quota = await self.get("meal_quotas", holder_id)
        if quota is None:
            return None
        return MealAllowance.of(quota, await self.get("meal_usage", (holder_id, month)))

    # --- cards -----------------------------------------------------------------------------
    async def get_card(self, card_id: int) -> Card:
        row = await self.get("cards", card_id)
        if row is None:
            raise NotFound(f"无此卡片 {card_id}", f"no card {card_id}", code=ErrorCode.CARD_UNKNOWN)
        return Card.from_row(row)

    async def card_by_serial(self, serial: str) -> Card:
        rows = await self.find("cards", serial=serial)
        if not rows:
            # the clerk may read or type the chip's UID instead, in any case, with separators
            uid = canonical_card_uid(serial)
            rows = await self.find("cards", uid=uid) if uid is not None else []
        if not rows:
            raise NotFound(
                f"无此卡号 {serial[-4:]:*>8}", "no such card number", code=ErrorCode.CARD_UNKNOWN
            )
        return Card.from_row(rows[0])

    async def cards_of_holder(self, holder_id: int) -> list[Card]:
        return [Card.from_row(r) for r in await self.find("cards", holder_id=holder_id)]

    async def cards_valid_until_before(
        self, kind: str, states: list[str], before: datetime
    ) -> list[Card]:
        """Cards of ``kind`` in ``states`` whose validity ended at or before ``before``."""
        c = s.cards
        query = select(c).where(c.c.kind == kind, c.c.state.in_(states), c.c.valid_until <= before)
        return [Card.from_row(dict(r)) for r in (await self.conn.execute(query)).mappings()]

    async def used_serials_between(self, low: str, high: str) -> str | None:
        """Highest card serial already used within [low, high] (serials are fixed width)."""
        query = select(func.max(s.cards.c.serial)).where(
            s.cards.c.serial >= low, s.cards.c.serial <= high
        )
        value = (await self.conn.execute(query)).scalar_one()
        return None if value is None else str(value)

    async def add_deny_change(self, card: Card, change: str, denied: bool, at: datetime) -> int:
        """Append a deny-list change with the next gapless version.

        Versions must be consecutive and in commit order (terminals apply deltas in order), so
        appends are serialised: SQLite's ``BEGIN IMMEDIATE`` already does that; PostgreSQL takes
        a table lock for the rest of the transaction.
        """
        if self.dialect == "postgresql":
            await self.conn.execute(text("LOCK TABLE deny_changes IN SHARE ROW EXCLUSIVE MODE"))
        last = (await self.conn.execute(select(func.max(s.deny_changes.c.version)))).scalar_one()
        version = int(last or 0) + 1
        await self.conn.execute(
            insert(s.deny_changes).values(
                version=version,
                card_id=card.id,
                serial=card.serial,
                uid=card.uid,
                change=change,
                denied=denied,
                at=at,
            )
        )
        return version

    async def deny_changes_after(self, version: int, limit: int = 10_000) -> list[Row]:
        """``version``, ``card_id``, ``uid``, ``change``, ``denied`` (``limit`` -1: all)."""
        return await self.all_rows(q.DENY_CHANGES_AFTER, version, q.no_limit(limit, self.dialect))

    async def card_by_uid(self, uid: str) -> Card | None:
        """The card with this UID (any case, separators allowed); ``None`` if none or invalid."""
        canonical = canonical_card_uid(uid)
        if canonical is None:
            return None
        row = await self.first(q.CARD_BY_UID, canonical)
        return Card.from_row(row) if row is not None else None

    # --- ledger ----------------------------------------------------------------------------
    async def ensure_account(self, account: str, holder_id: int | None = None) -> None:
        values = {"id": account, "kind": account_kind(account).value, "holder_id": holder_id}
        stmt: Any
        if self.dialect == "postgresql":
            stmt = postgresql.insert(s.accounts).values(**values).on_conflict_do_nothing()
        else:
            stmt = sqlite.insert(s.accounts).values(**values).on_conflict_do_nothing()
        await self.conn.execute(stmt)

    async def balance(self, account: str) -> int:
        return int(await self.value(q.BALANCE, account) or 0)

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
    ) -> int:
        """Append one balanced transfer and move the balances, or raise InsufficientFunds: the
        one posting rule (:mod:`storage.posting`), as on the tap path."""
        plan = posting(
            spec,
            at=at,
            actor=actor,
            card_id=card_id,
            terminal_id=terminal_id,
            request_id=request_id,
            holder_id=holder_id,
        )
        return (await run_async(self, plan))[0]

    # the five ledger operations of storage.posting.AsyncStatements
    async def debit_guarded(self, account: str, amount: int) -> int | None:
        a = s.accounts
        stmt = (
            update(a)
            .where(a.c.id == account, a.c.balance >= amount)
            .values(balance=a.c.balance - amount)
            .returning(a.c.balance)
        )
        value = (await self.conn.execute(stmt)).scalar_one_or_none()
        return None if value is None else int(value)

    async def credit_guarded(self, account: str, amount: int, holder_id: int | None) -> None:
        await self.ensure_account(account, holder_id)
        await self._add(account, amount)

    async def move_unguarded(self, account: str, change: int) -> int:
        await self.ensure_account(account)
        return await self._add(account, change)

    async def _add(self, account: str, change: int) -> int:
        a = s.accounts
        stmt = (
            update(a)
            .where(a.c.id == account)
            .values(balance=a.c.balance + change)
            .returning(a.c.balance)
        )
        return int((await self.conn.execute(stmt)).scalar_one())

    async def insert_transfer(self, values: tuple[Any, ...]) -> int:
        return await self.insert("transfers", dict(zip(TRANSFER_COLUMNS, values, strict=True)))

    async def post_many(
        self, specs: list[TransferSpec], *, at: datetime, actor: str, card_ids: list[int | None]
    ) -> None:
        """Bulk transfers whose sources may go negative (cash, external channels): top-up
        batches, by the bulk form of the one rule (:func:`storage.posting.posting_many`): one
        statement per kind of write instead of four per transfer."""
        await run_async(self, posting_many(specs, at=at, actor=actor, card_ids=card_ids))

    async def move_many(self, changes: tuple[tuple[str, int, int | None], ...]) -> None:
        rows = [
            {"id": a, "kind": account_kind(a).value, "holder_id": owner} for a, _, owner in changes
        ]
        ins = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(s.accounts)
        await self.conn.execute(ins.on_conflict_do_nothing(), rows)
        await self.conn.execute(
            update(s.accounts)
            .where(s.accounts.c.id == bindparam("account"))
            .values(balance=s.accounts.c.balance + bindparam("delta")),
            [{"account": a, "delta": d} for a, d, _ in changes],
        )

    async def insert_transfers(self, rows: tuple[tuple[Any, ...], ...]) -> None:
        await self.conn.execute(
            insert(s.transfers), [dict(zip(TRANSFER_COLUMNS, r, strict=True)) for r in rows]
        )

    async def get_transfer(self, transfer_id: int) -> Transfer:
        return q.transfer_of(await self.first(q.TRANSFER, transfer_id), transfer_id)

    async def referencing_total(self, ref_id: int) -> int:
        return int(await self.value(q.REFERENCING_TOTAL, ref_id))

    async def transfers_of(self, account: str, limit: int = 20) -> list[Transfer]:
        rows = await self.all_rows(q.TRANSFERS_OF, account, limit)
        return [Transfer.from_row(r) for r in rows]

    # --- receipts (FEE-2/3) -----------------------------------------------------------------
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
    ) -> Receipt:
        """Take the next number of the oldest open receipt book; close the book when used up."""
        books = s.receipt_books
        book = (
            (
                await self.conn.execute(
                    select(books).where(books.c.used_up_at.is_(None)).order_by(books.c.id).limit(1)
                )
            )
            .mappings()
            .first()
        )
        if book is None:
            raise OnecardError(
                "没有可用的收据本，请先登记财务处发放的收据本",
                "no open receipt book: register a receipt book from finance first",
                code=ErrorCode.OUT_OF_STOCK,
                rule="FEE-2",
            )
        last = (
            await self.conn.execute(
                select(func.max(s.receipts.c.receipt_no)).where(s.receipts.c.book_id == book["id"])
            )
        ).scalar_one()
        number = int(book["first_no"]) if last is None else int(last) + 1
        values = {
            "receipt_no": number,
            "book_id": book["id"],
            "holder_id": holder_id,
            "payer": payer,
            "item": item,
            "amount": amount,
            "at": at,
            "cashier": cashier,
            "transfer_id": transfer_id,
        }
        receipt_id = await self.insert("receipts", values)
        if number >= int(book["last_no"]):
            await self.update("receipt_books", book["id"], {"used_up_at": at})
        return Receipt(id=receipt_id, **values)

    # --- queries for reports ----------------------------------------------------------------
    async def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """A read-only query in portable SQL (report texts live in gateway/services/reports.py)."""
        result = await self.conn.execute(text(sql), dict(params or {}))
        return [dict(r) for r in result.mappings()]


def _dump(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)


class SqlRegistry:
    """The card registry on a SQLite file or a PostgreSQL database."""

    def __init__(self, engines: Engines, pii: Keyring) -> None:
        self.engines = engines
        self.pii = pii

    @classmethod
    async def open(cls, target: str | Path, *, migrate: bool = False) -> SqlRegistry:
        """``migrate``: upgrade the schema and finish encrypting ID numbers (issue 15); else
        refuse an older schema or a registry with a clear ID number left."""
        engines = open_engines(target)
        try:
            if migrate:
                await upgrade(engines.writer)
            else:
                # a read: opening the registry must not wait for the write lock (the gateway's
                # writer holds it for every batch; BEGIN IMMEDIATE here queued every command)
                await require_head(engines.reader)
            keyring = load_keyring(database_url(target))
            await piidb.attach(engines.writer, keyring, convert_now=migrate)
        except OperationalError as exc:
            await engines.dispose()
            _raise_unavailable(exc)
            raise
        except BaseException:
            await engines.dispose()
            raise
        return cls(engines, keyring)

    async def close(self) -> None:
        await self.engines.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTx]:
        try:
            async with self.engines.writer.begin() as conn:
                yield SqlTx(conn, self.pii)
        except OperationalError as exc:
            _raise_unavailable(exc)
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqlTx]:
        try:
            async with self.engines.reader.begin() as conn:
                yield SqlTx(conn, self.pii)
        except OperationalError as exc:
            _raise_unavailable(exc)
            raise
