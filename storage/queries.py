"""The registry's shared reads, each defined ONCE as a SQLAlchemy Core statement (issue 12).

The counter's :class:`storage.sql.SqlTx` executes :attr:`Query.stmt` through SQLAlchemy; the tap
path's two transactions (:class:`storage.tapwriter.SqliteTapTx` on stdlib ``sqlite3``,
:class:`storage.pgtap.PgTapTx` on asyncpg) execute the same statement compiled once, here at import,
to each driver's own SQL (``?`` for sqlite3, ``$n`` for asyncpg): no compilation per call on the
tap path, whose CPU per decision matters (``bench/readers.py`` measures it).

Arguments are given positionally in the order of :attr:`Query.names`; a bind the caller does not
give (a literal SQLAlchemy turned into a parameter) takes the value compiled in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Boolean, Date, Integer, String, bindparam, func, literal_column, select
from sqlalchemy import union as sql_union
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select

from protocol.errors import NotFound
from storage import schema as s
from storage.records import Holder, Row, Transfer

_SQLITE = sqlite.dialect(paramstyle="qmark")
_POSTGRES = pg_asyncpg.dialect()  # type: ignore[no-untyped-call]


def _sqlite_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _sqlite_date(value: Any) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _sqlite_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


class _Compiled:
    """One statement compiled for one driver: its SQL and how to order the caller's arguments."""

    __slots__ = ("_identity", "_picks", "sql")

    def __init__(self, stmt: Select[Any], dialect: Dialect, names: Sequence[str]) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        defaults = {name: bind.effective_value for name, bind in compiled.binds.items()}
        order = list(compiled.positiontup or ())
        unknown = [n for n in order if n not in names and defaults.get(n) is None]
        if unknown:
            raise ValueError(f"unbound parameters {unknown} in {self.sql!r}")
        self._picks = tuple(
            (names.index(n), None) if n in names else (-1, defaults[n]) for n in order
        )
        self._identity = order == list(names)

    def args(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        if self._identity:
            return values
        return tuple(values[i] if i >= 0 else const for i, const in self._picks)


class Query:
    """A read defined once: :attr:`stmt` for SQLAlchemy, :attr:`sqlite` and :attr:`postgres` for
    the raw drivers, and :meth:`sqlite_row` to type a raw sqlite3 row as SQLAlchemy would."""

    __slots__ = ("_converters", "columns", "names", "postgres", "sqlite", "stmt")

    def __init__(self, stmt: Select[Any], *names: str) -> None:
        self.stmt = stmt
        self.names = names
        self.columns = tuple(c.name for c in stmt.selected_columns)
        self.sqlite = _Compiled(stmt, _SQLITE, names)
        self.postgres = _Compiled(stmt, _POSTGRES, names)
        converters: list[tuple[str, Callable[[Any], Any]]] = []
        for column in stmt.selected_columns:
            if isinstance(column.type, s.UtcDateTime):
                converters.append((column.name, _sqlite_time))
            elif isinstance(column.type, Date):
                converters.append((column.name, _sqlite_date))
            elif isinstance(column.type, Boolean):
                converters.append((column.name, _sqlite_bool))
        self._converters = tuple(converters)

    def params(self, *values: Any) -> dict[str, Any]:
        """The arguments as SQLAlchemy takes them (by name)."""
        return dict(zip(self.names, values, strict=True))

    def sqlite_row(self, values: Sequence[Any]) -> Row:
        row = dict(zip(self.columns, values, strict=True))
        for name, convert in self._converters:
            row[name] = convert(row[name])
        return row


def _by_id(table: Any) -> Query:
    return Query(select(table).where(table.c.id == bindparam("id", type_=Integer)), "id")


_t = s.transfers
_account = bindparam("account", type_=String)

#: a holders row (national ID still sealed: :meth:`storage.records.Holder.from_row` opens it)
HOLDER = _by_id(s.holders)
TRANSFER = _by_id(s.transfers)
#: an account's transfers, newest first; the two indexed lookups joined by UNION (SQLite would
#: otherwise walk the whole table backwards by id for ``source = ? OR dest = ?``)
TRANSFERS_OF = Query(
    select(_t)
    .where(
        _t.c.id.in_(
            sql_union(
                select(_t.c.id).where(_t.c.source == _account),
                select(_t.c.id).where(_t.c.dest == _account),
            )
        )
    )
    .order_by(_t.c.id.desc())
    .limit(bindparam("limit", type_=Integer)),
    "account",
    "limit",
)
#: what later transfers (refunds, corrections) already took back from one
REFERENCING_TOTAL = Query(
    select(func.coalesce(func.sum(_t.c.amount), literal_column("0"))).where(
        _t.c.ref_id == bindparam("ref_id", type_=Integer)
    ),
    "ref_id",
)
#: the deny-list log after ``version``, what distribution needs (no timestamps to parse);
#: ``limit``: -1 on SQLite, None on PostgreSQL for all (:func:`no_limit`)
DENY_CHANGES_AFTER = Query(
    select(
        s.deny_changes.c.version,
        s.deny_changes.c.card_id,
        s.deny_changes.c.uid,
        s.deny_changes.c.change,
        s.deny_changes.c.denied,
    )
    .where(s.deny_changes.c.version > bindparam("version", type_=Integer))
    .order_by(s.deny_changes.c.version)
    .limit(bindparam("limit", type_=Integer)),
    "version",
    "limit",
)
#: the card with this canonical UID
CARD_BY_UID = Query(select(s.cards).where(s.cards.c.uid == bindparam("uid", type_=String)), "uid")
#: an account's balance (no row: 0)
BALANCE = Query(
    select(s.accounts.c.balance).where(s.accounts.c.id == bindparam("account", type_=String)),
    "account",
)


# --- the tap path's own registers, read by typed operations instead of table names ----------
_sales = s.offline_sales
_terminal = bindparam("terminal_id", type_=String)
#: a water hold, read to be settled or released: locked on PostgreSQL so two gateways cannot
#: both act on it (SQLite's one writer serialises anyway)
WATER_HOLD = Query(
    select(s.water_holds)
    .where(s.water_holds.c.id == bindparam("id", type_=Integer))
    .with_for_update(key_share=True),
    "id",
)
#: whether a terminal's offline sale ``seq`` was already uploaded
OFFLINE_SALE_SEEN = Query(
    select(_sales.c.seq).where(_sales.c.terminal_id == _terminal, _sales.c.seq == bindparam("seq")),
    "terminal_id",
    "seq",
)
#: every offline sequence number a terminal uploaded, in order (for the gap report)
OFFLINE_SEQS = Query(
    select(_sales.c.seq).where(_sales.c.terminal_id == _terminal).order_by(_sales.c.seq),
    "terminal_id",
)
#: a terminal's offline sales of one card (the daily offline limit)
OFFLINE_SALES_OF_CARD = Query(
    select(_sales).where(
        _sales.c.terminal_id == _terminal, _sales.c.card_uid == bindparam("card_uid")
    ),
    "terminal_id",
    "card_uid",
)
#: one card's deny-list history, oldest first
DENY_CHANGES_OF_CARD = Query(
    select(s.deny_changes)
    .where(s.deny_changes.c.card_id == bindparam("card_id", type_=Integer))
    .order_by(s.deny_changes.c.version),
    "card_id",
)
#: one deny-list change by version
DENY_CHANGE = Query(
    select(s.deny_changes).where(s.deny_changes.c.version == bindparam("version", type_=Integer)),
    "version",
)
#: a kiosk session by the hash of its token
HOLDER_SESSION = Query(
    select(s.holder_sessions).where(
        s.holder_sessions.c.token_hash == bindparam("token_hash", type_=String)
    ),
    "token_hash",
)

#: a terminal's idempotency record (what a void checks: the original sale's op and reply)
IDEMPOTENCY_RECORD = Query(
    select(s.idempotency).where(
        s.idempotency.c.terminal_id == _terminal,
        s.idempotency.c.request_id == bindparam("request_id", type_=String),
    ),
    "terminal_id",
    "request_id",
)

#: a terminal's registration (kind, merchant, enabled, ...)
TERMINAL = Query(select(s.terminals).where(s.terminals.c.id == _terminal), "terminal_id")


# --- the tap path's hot reads (each decision) ----------------------------------------------------
#: a retried request's first reply: ``fingerprint``, ``reply``
IDEMPOTENT = Query(
    select(s.idempotency.c.fingerprint, s.idempotency.c.reply).where(
        s.idempotency.c.terminal_id == _terminal,
        s.idempotency.c.request_id == bindparam("request_id", type_=String),
    ),
    "terminal_id",
    "request_id",
)
#: what a decision needs of a terminal
TERMINAL_DECISION = Query(
    select(s.terminals.c.kind, s.terminals.c.merchant_id, s.terminals.c.enabled).where(
        s.terminals.c.id == _terminal
    ),
    "terminal_id",
)
#: what a decision needs of a card and its holder, in one indexed lookup
TAP_CARD = Query(
    select(
        s.cards.c.id,
        s.cards.c.holder_id,
        s.cards.c.state,
        s.cards.c.valid_until,
        s.cards.c.type_group,
        s.holders.c.status,
    )
    .select_from(s.cards.join(s.holders, s.holders.c.id == s.cards.c.holder_id))
    .where(s.cards.c.uid == bindparam("uid", type_=String)),
    "uid",
)
#: the newest deny-list version (None: none yet)
DENY_VERSION = Query(select(func.max(s.deny_changes.c.version)))
#: a terminal's last sale (what a POS may void)
LAST_PURCHASE_ID = Query(
    select(func.max(_t.c.id)).where(
        _t.c.terminal_id == _terminal, _t.c.kind == literal_column("'purchase'")
    ),
    "terminal_id",
)


def no_limit(limit: int, dialect: str) -> int | None:
    """A negative ``limit`` (all rows) as each engine takes it in ``LIMIT``."""
    if limit >= 0:
        return limit
    return -1 if dialect == "sqlite" else None


def holder_of(row: Row | None, holder_id: int) -> Holder:
    """The :data:`HOLDER` row as a holder (the national ID opened), or NotFound."""
    if row is None:
        raise NotFound(f"无此持卡人 {holder_id}", f"no holder {holder_id}")
    return Holder.from_row(row)


def transfer_of(row: Row | None, transfer_id: int) -> Transfer:
    """The :data:`TRANSFER` row as a transfer, or NotFound."""
    if row is None:
        raise NotFound(f"无此交易 {transfer_id}", f"no transfer {transfer_id}")
    return Transfer.from_row(row)
