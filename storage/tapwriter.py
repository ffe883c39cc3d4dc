"""The tap path's batching writer for SQLite: many decisions, one transaction, one thread hop.

FIELD-NOTES measured the cost: through aiosqlite every statement is a thread hop (≈1.3–2.4k
debits/s whatever the batch), while one thread running a whole batch with stdlib ``sqlite3``
under ``synchronous=FULL`` reaches ≈11.5k (batch 10) to ≈25k (batch 100) durable debits/s.

:class:`SqliteTapWriter` owns one connection in one thread. :meth:`run` queues a *job* — a plain
function of a :class:`SqliteTapTx` — and returns its result once the transaction that ran it has
COMMITTED (so the gateway publishes a reply only for a durable decision). The thread takes every
queued job (up to ``max_batch``), runs each inside its own SAVEPOINT (a failing job rolls back
alone and its exception goes to its caller), commits once, then wakes the callers.

Reads are the shared statements of :mod:`storage.queries` (compiled once for sqlite3, rows typed
as SQLAlchemy types them); the few writes of the hot path are hand-written here against the same
schema (:mod:`storage.schema`); datetimes are stored exactly as SQLAlchemy stores them on SQLite
(naive UTC text), booleans as 0/1. Everything else keeps using :class:`storage.sql.SqlRegistry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Boolean

from protocol.errors import (
    ErrorCode,
    NotFound,
    OnecardError,
    registry_busy,
)
from protocol.ledger import account_kind
from storage import schema as s
from storage.posting import TRANSFER_COLUMNS
from storage.queries import IDEMPOTENT as _IDEMPOTENT
from storage.queries import Query
from storage.records import Row, TapCard
from storage.taptx import CARD_CACHE_LIMIT, TapTxBase

T = TypeVar("T")
_STOP = object()
_INSERT_TRANSFER = (
    f"INSERT INTO transfers ({', '.join(TRANSFER_COLUMNS)})"  # noqa: S608 - fixed names
    f" VALUES ({', '.join('?' * len(TRANSFER_COLUMNS))})"
)
_INSERT_TRANSFER_WITH_ID = (
    f"INSERT INTO transfers (id, {', '.join(TRANSFER_COLUMNS)})"  # noqa: S608 - fixed names
    f" VALUES ({', '.join('?' * (len(TRANSFER_COLUMNS) + 1))})"
)
_NEXT_TRANSFER_ID = "SELECT coalesce(max(id), 0) + 1 FROM transfers"
_PREFETCH_MIN = 8
_PREFETCH_MAX = 256


@functools.cache
def _prefetch_sql(size: int) -> str:
    """The idempotency records of ``size`` keys: a join from constant rows, so each key is one
    search of the primary key (a row-value ``IN (VALUES ...)`` scanned the table)."""
    rows = ", ".join(["(?, ?)"] * size)
    return (
        f"WITH k(t, r) AS (VALUES {rows}) SELECT i.terminal_id, i.request_id, i.fingerprint,"  # noqa: S608
        " i.reply FROM k JOIN idempotency i ON i.terminal_id = k.t AND i.request_id = k.r"
    )


_INSERT_REPLY = (
    "INSERT INTO idempotency (terminal_id, request_id, op, fingerprint, reply, at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

#: The WAL file is cut back to this size whenever SQLite restarts it (``journal_size_limit``).
#: Large enough that a WAL restarted under load is overwritten in place: a commit that must
#: grow the file cost 384 µs against 161 µs for one that overwrites (issue 14, measured on this
#: disk), and with 32 MiB the WAL was cut back, then grown again, every checkpoint at 1,000
#: taps/s (writer batch p50 2.6 ms -> 1.6 ms with the larger limit).
WAL_SIZE_LIMIT = 128 * 2**20
#: While commits fail (a full disk), a ``TRUNCATE`` checkpoint is tried this often.
FAILING_CHECKPOINT_S = 1.0
#: A checkpoint between batches that could not copy everything is tried again this soon.
CHECKPOINT_RETRY_S = 0.1


def _to_db(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            msg = "naive datetime given to the registry"
            raise ValueError(msg)
        return (
            value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        )
    if isinstance(value, bool):
        return int(value)
    return value


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class _TableInfo:
    def __init__(self, name: str) -> None:
        table = s.metadata.tables[name]
        self.name = name
        self.columns = [c.name for c in table.columns]
        self.key = [c.name for c in table.primary_key.columns]
        self.times = {c.name for c in table.columns if isinstance(c.type, s.UtcDateTime)}
        self.bools = {c.name for c in table.columns if isinstance(c.type, Boolean)}
        cols = ", ".join(self.columns)
        where = " AND ".join(f"{k} = ?" for k in self.key)
        self.select_by_key = f"SELECT {cols} FROM {name} WHERE {where}"  # noqa: S608 (schema names)
        self.where_key = where

    def row(self, values: tuple[Any, ...]) -> Row:
        out = dict(zip(self.columns, values, strict=True))
        for name in self.times:
            out[name] = _ts(out[name])
        for name in self.bools:
            if out[name] is not None:
                out[name] = bool(out[name])
        return out


_INFO: dict[str, _TableInfo] = {}


def _info(table: str) -> _TableInfo:
    info = _INFO.get(table)
    if info is None:
        info = _INFO[table] = _TableInfo(table)
    return info


def _key(key: Any) -> tuple[Any, ...]:
    return tuple(key) if isinstance(key, tuple) else (key,)


class SqliteTapTx(TapTxBase):
    """The synchronous operations a tap decision needs, on the writer's connection.

    Terminal and card rows are cached between batches: the writer itself never changes them,
    and ``PRAGMA data_version`` (checked once per batch, with the write lock held) moves whenever
    another connection — the counter, a kiosk's loss report, the scheduler — committed anything,
    which empties the caches.

    **Write-behind** (issue 14), while :attr:`defer` is set (the writer's fast path): the ledger's
    five operations and the idempotency record do not run a statement each. Balances are kept
    in :attr:`_balances` (read once, then exact: nothing else can write while the writer holds
    the lock, and ``data_version`` empties them when something did between batches); a debit is
    decided on them; the transfer gets its id from the writer (``max(id) + 1``, the id SQLite
    itself would give); and everything the batch changed is written by :meth:`flush` in a few
    ``executemany`` statements — accounts, transfers, idempotency records, in that order (the
    foreign keys) — before the one COMMIT. Any other read or write flushes first, so every
    statement sees what the batch did so far; a SAVEPOINT flushes first and runs write-through
    inside; a ROLLBACK empties the balances (:meth:`discard`)."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._data_version: int | None = None
        self._terminals: dict[str, tuple[str, str | None, bool] | None] = {}
        self._cards: dict[str, TapCard | None] = {}
        #: write-behind on (the fast path) or write-through (savepoints, the safe retry)
        self.defer = False
        self._balances: dict[str, int] = {}
        self._dirty: dict[str, None] = {}  # accounts changed since the last flush, in order
        self._new_accounts: dict[str, int | None] = {}  # created since the last flush: owner
        self._next_transfer: int | None = None
        self._transfers: list[tuple[Any, ...]] = []
        self._replies: dict[tuple[str, str], tuple[Any, ...]] = {}
        #: idempotency records read for the whole batch (:meth:`prefetch_replies`): found, and
        #: keys known to have none (a record written since is in ``_replies`` or flushed out)
        self._stored: dict[tuple[str, str], tuple[str, str]] = {}
        self._absent: set[tuple[str, str]] = set()
        self._pending = False
        self._time_key: datetime | None = None
        self._time_text = ""

    def begin_batch(self) -> None:
        version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._data_version = version
            self._terminals.clear()
            self._cards.clear()
            self._balances.clear()
            self._next_transfer = None

    # write-behind -----------------------------------------------------------------------
    def discard(self) -> None:
        """After a ROLLBACK: nothing deferred was written, no cached balance can be trusted."""
        self._balances.clear()
        self._dirty.clear()
        self._new_accounts.clear()
        self._transfers.clear()
        self._replies.clear()
        self._next_transfer = None
        self._pending = False

    def flush(self) -> None:
        """Write what the batch deferred: a few ``executemany`` statements."""
        if not self._pending:
            return
        conn = self.conn
        balances = self._balances
        new = self._new_accounts
        if new:
            conn.executemany(
                "INSERT INTO accounts (id, kind, holder_id, balance) VALUES (?, ?, ?, ?)",
                [(a, account_kind(a).value, owner, balances[a]) for a, owner in new.items()],
            )
        updates = [(balances[a], a) for a in self._dirty if a not in new]
        if updates:
            cursor = conn.executemany("UPDATE accounts SET balance = ? WHERE id = ?", updates)
            if cursor.rowcount != len(updates):
                msg = f"accounts changed under the writer: {cursor.rowcount} of {len(updates)}"
                raise sqlite3.IntegrityError(msg)
        if self._transfers:
            conn.executemany(_INSERT_TRANSFER_WITH_ID, self._transfers)
        if self._replies:
            conn.executemany(_INSERT_REPLY, list(self._replies.values()))
            self._absent.difference_update(self._replies)
        self._dirty.clear()
        new.clear()
        self._transfers.clear()
        self._replies.clear()
        self._pending = False

    def _known_balance(self, account: str) -> int | None:
        """The account's balance (cached once read), None if it does not exist."""
        balance = self._balances.get(account)
        if balance is not None:
            return balance
        found = self.conn.execute("SELECT balance FROM accounts WHERE id = ?", (account,))
        row = found.fetchone()
        if row is None:
            return None
        if len(self._balances) > CARD_CACHE_LIMIT and not self._pending:
            self._balances.clear()
        balance = self._balances[account] = int(row[0])
        return balance

    def _set_balance(self, account: str, balance: int) -> None:
        self._balances[account] = balance
        self._dirty[account] = None
        self._pending = True

    def _time(self, value: datetime) -> str:
        if value is not self._time_key:
            self._time_key = value
            self._time_text = _to_db(value)
        return self._time_text

    # generic rows (each flushes first: it may read or reference what the batch deferred)
    def get(self, table: str, key: Any) -> Row | None:
        self.flush()
        info = _info(table)
        found = self.conn.execute(info.select_by_key, _key(key)).fetchone()
        return info.row(found) if found is not None else None

    def find(self, table: str, *, order_by: str | None = None, **eq: Any) -> list[Row]:
        self.flush()
        info = _info(table)
        where = " AND ".join(f"{k} = ?" for k in eq) or "1 = 1"
        sql = f"SELECT {', '.join(info.columns)} FROM {table} WHERE {where}"  # noqa: S608
        if order_by:
            sql += f" ORDER BY {order_by}"
        return [info.row(r) for r in self.conn.execute(sql, [_to_db(v) for v in eq.values()])]

    def put(self, table: str, values: Mapping[str, Any]) -> None:
        self.flush()
        cols = list(values)
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"  # noqa: S608
        self.conn.execute(sql, [_to_db(values[c]) for c in cols])

    def insert(self, table: str, values: Mapping[str, Any]) -> int:
        self.flush()
        cols = list(values)
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"  # noqa: S608
        cursor = self.conn.execute(sql, [_to_db(values[c]) for c in cols])
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def update(self, table: str, key: Any, values: Mapping[str, Any]) -> None:
        self.flush()
        info = _info(table)
        sets = ", ".join(f"{c} = ?" for c in values)
        sql = f"UPDATE {table} SET {sets} WHERE {info.where_key}"  # noqa: S608
        cursor = self.conn.execute(sql, [*(_to_db(v) for v in values.values()), *_key(key)])
        if cursor.rowcount != 1:
            raise NotFound(f"{table} 中无记录 {key}", f"{table}: no row {key}")

    @contextlib.contextmanager
    def undo_on(self, *errors: type[BaseException]) -> Iterator[None]:
        """Roll back what the block wrote if it raises one of ``errors`` (then re-raise).
        The block runs write-through: a savepoint cannot undo what only this object holds."""
        self.flush()
        deferring, self.defer = self.defer, False
        self.conn.execute("SAVEPOINT step")
        try:
            yield
        except errors:
            self.conn.execute("ROLLBACK TO step")
            self.conn.execute("RELEASE step")
            self._balances.clear()
            self._next_transfer = None
            raise
        finally:
            self.defer = deferring
        self.conn.execute("RELEASE step")

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        self.flush()
        found = self.conn.execute(sql, params).fetchone()
        return None if found is None else found[0]

    # the shared reads (storage.queries), compiled once for sqlite3
    def first(self, query: Query, *args: Any) -> Row | None:
        self.flush()
        return self.hot_first(query, *args)

    def rows(self, query: Query, *args: Any) -> list[Row]:
        self.flush()
        compiled = query.sqlite
        return [query.sqlite_row(r) for r in self.conn.execute(compiled.sql, compiled.args(args))]

    def value(self, query: Query, *args: Any) -> Any:
        self.flush()
        return self.hot_value(query, *args)

    def hot_first(self, query: Query, *args: Any) -> Row | None:
        compiled = query.sqlite
        found = self.conn.execute(compiled.sql, compiled.args(args)).fetchone()
        return None if found is None else query.sqlite_row(found)

    def hot_value(self, query: Query, *args: Any) -> Any:
        compiled = query.sqlite
        found = self.conn.execute(compiled.sql, compiled.args(args)).fetchone()
        return None if found is None else found[0]

    def prefetch_replies(self, keys: Sequence[tuple[str, str]]) -> None:
        """Read the idempotency records of a whole batch in one statement per 256 keys (the
        statement padded to a power of two, so a few prepared statements serve every size)."""
        self._stored.clear()
        self._absent.clear()
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _PREFETCH_MAX):
            chunk = unique[start : start + _PREFETCH_MAX]
            size = max(_PREFETCH_MIN, 1 << (len(chunk) - 1).bit_length())
            params: list[str] = [part for key in chunk for part in key]
            params += ["", ""] * (size - len(chunk))  # no terminal has an empty id
            for tid, rid, fingerprint, reply in self.conn.execute(_prefetch_sql(size), params):
                self._stored[(tid, rid)] = (fingerprint, reply)
        self._absent.update(key for key in unique if key not in self._stored)

    def idempotent(self, terminal_id: str, request_id: str) -> tuple[str, str] | None:
        key = (terminal_id, request_id)
        pending = self._replies.get(key)
        if pending is not None:
            return pending[3], pending[4]
        if key in self._absent:
            return None
        stored = self._stored.get(key)
        if stored is not None:
            return stored
        compiled = _IDEMPOTENT.sqlite  # the shared read, its two text columns as they come
        found = self.conn.execute(compiled.sql, compiled.args((terminal_id, request_id)))
        row = found.fetchone()
        return None if row is None else (row[0], row[1])

    def balance(self, account: str) -> int:
        known = self._known_balance(account) if self.defer else None
        if known is not None:
            return known
        return super().balance(account)

    # ledger: the posting rule's operations (storage.posting), in sqlite3's dialect
    def debit_guarded(self, account: str, amount: int) -> int | None:
        if self.defer:
            balance = self._known_balance(account)
            if balance is None or balance < amount:
                return None
            balance -= amount
            self._set_balance(account, balance)
            return balance
        self._balances.pop(account, None)
        rows = self.conn.execute(
            "UPDATE accounts SET balance = balance - ?"
            " WHERE id = ? AND balance >= ? RETURNING balance",
            (amount, account, amount),
        ).fetchall()  # exhaust: a RETURNING statement must finish before COMMIT
        return int(rows[0][0]) if rows else None

    def credit_guarded(self, account: str, amount: int, holder_id: int | None) -> None:
        self._add(account, amount, holder_id)

    def move_unguarded(self, account: str, change: int) -> int:
        return self._add(account, change, None)

    def _add(self, account: str, change: int, holder_id: int | None) -> int:
        if self.defer:
            balance = self._known_balance(account)
            if balance is None:
                self._new_accounts[account] = holder_id
                balance = 0
            balance += change
            self._set_balance(account, balance)
            return balance
        self._balances.pop(account, None)
        rows = self.conn.execute(
            "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance",
            (change, account),
        ).fetchall()
        if rows:
            return int(rows[0][0])
        self.conn.execute(
            "INSERT INTO accounts (id, kind, holder_id, balance) VALUES (?, ?, ?, ?)",
            (account, account_kind(account).value, holder_id, change),
        )
        return change

    def insert_transfer(self, values: tuple[Any, ...]) -> int:
        if self.defer:
            transfer_id = self._next_transfer
            if transfer_id is None:
                transfer_id = int(self.conn.execute(_NEXT_TRANSFER_ID).fetchone()[0])
            self._next_transfer = transfer_id + 1
            row = [transfer_id, *values]
            row[6] = self._time(values[5])  # "at"
            self._transfers.append(tuple(row))
            self._pending = True
            return transfer_id
        self._next_transfer = None
        cursor = self.conn.execute(_INSERT_TRANSFER, tuple(_to_db(v) for v in values))
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def record_reply(
        self, terminal_id: str, request_id: str, op: str, fingerprint: str, reply: str, at: datetime
    ) -> None:
        """The idempotency record: the first reply, replayed for every retry."""
        row = (terminal_id, request_id, op, fingerprint, reply, self._time(at))
        if self.defer:
            key = (terminal_id, request_id)
            if key in self._replies:
                msg = "UNIQUE constraint failed: idempotency.terminal_id, idempotency.request_id"
                raise sqlite3.IntegrityError(msg)
            self._replies[key] = row
            self._pending = True
            return
        self._absent.discard((terminal_id, request_id))
        self.conn.execute(_INSERT_REPLY, row)

    def card_alert(
        self,
        *,
        holder_id: int,
        card_id: int,
        terminal_id: str,
        detail: str,
        at: datetime,
        since: datetime,
    ) -> bool:
        """A ``card_presented`` alert for the holder (a lost or frozen card refused at this
        terminal), unless this card already has one from this terminal after ``since``: one
        statement, run only on such a refusal; whether it inserted (the rate limit of
        gateway/services/alerts.py, served by ``ix_holder_alerts_card_terminal``)."""
        cursor = self.conn.execute(
            "INSERT INTO holder_alerts (holder_id, card_id, kind, at, terminal_id, detail)"
            " SELECT :holder, :card, 'card_presented', :at, :terminal, :detail WHERE NOT EXISTS ("
            " SELECT 1 FROM holder_alerts WHERE card_id = :card AND terminal_id = :terminal"
            " AND at > :since AND kind = 'card_presented')",
            {
                "holder": holder_id,
                "card": card_id,
                "at": _to_db(at),
                "terminal": terminal_id,
                "detail": detail,
                "since": _to_db(since),
            },
        )
        return cursor.rowcount == 1


#: How long a batch waits for another writer (the counter, a kiosk's loss report) to release
#: the registry's write lock before every job of the batch is answered ``unavailable``: a slow
#: counter transaction costs terminals a fast, retryable refusal, not a stall (issue 8, item 11).
LOCK_WAIT_S = 2.0
BUSY_RETRY_S = 0.0005


def _begin(conn: sqlite3.Connection, *, deadline: float) -> None:
    """``BEGIN IMMEDIATE``, retried every half millisecond while another writer holds the lock."""
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(BUSY_RETRY_S)
        else:
            return


class _Job:
    """One function, or (``many``) a list of functions answered with one list of outcomes.

    ``deadline`` (``time.monotonic()``): past it the caller has answered ``unavailable``, so the
    job must not run: it is checked once the write lock is held, just before the job runs and
    commits (issue 8, item 11: a tap answered ``unavailable`` was debited when the lock came
    free later).
    """

    __slots__ = ("deadline", "fns", "future", "many", "read_only", "replies")

    def __init__(
        self,
        fns: list[Callable[[SqliteTapTx], Any]],
        future: Future[Any],
        *,
        many: bool,
        deadline: float | None = None,
        replies: Sequence[tuple[str, str]] | None = None,
        read_only: bool = False,
    ) -> None:
        self.fns = fns
        self.future = future
        self.many = many
        self.deadline = deadline
        self.replies = replies
        self.read_only = read_only


_GAVE_UP = object()


class SqliteTapWriter:
    """One writer thread, group commit. ``await writer.run(job)`` -> the job's result, durable."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_batch: int = 256,
        busy_timeout_ms: int = 10_000,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self.path = str(path)
        self.max_batch = max_batch
        self.busy_timeout_ms = busy_timeout_ms
        self.lock_wait_s = lock_wait_s
        #: Set if the writer thread ended on an unexpected error (the gateway is then not ready).
        self.failure: BaseException | None = None
        #: ``time.monotonic()`` when the batch now running started, or None when idle.
        self.busy_since: float | None = None
        #: ``time.monotonic()`` of the first of the batches that failed in a row (registry
        #: locked for too long, disk full), None once one commits: ``/readyz`` says 503 meanwhile.
        self.failing_since: float | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpoint_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.checkpoint_interval_s = 5.0
        self._next_checkpoint = 0.0
        #: Checkpoints the writer finished between batches.
        self.checkpoints = 0
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="onecard-tapwriter", daemon=True
        )
        self._thread.start()
        ready.result(timeout=30)
        self._stopped.clear()
        self._checkpoint_thread = threading.Thread(
            target=self._checkpointer, name="onecard-checkpoint", daemon=True
        )
        self._checkpoint_thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._stopped.set()
        await asyncio.to_thread(self._thread.join, 30)
        if self._checkpoint_thread is not None:
            await asyncio.to_thread(self._checkpoint_thread.join, 30)
        self._thread = self._checkpoint_thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def _check_alive(self) -> None:
        if self._thread is None:
            msg = "tap writer not started"
            raise RuntimeError(msg)
        if not self.alive:
            raise OnecardError(
                "数据库写入线程已停止",
                f"registry writer stopped: {self.failure!r}",
                code=ErrorCode.UNAVAILABLE,
            )

    async def run(self, fn: Callable[[SqliteTapTx], T], *, deadline: float | None = None) -> T:
        self._check_alive()
        future: Future[T] = Future()
        self._queue.put(_Job([fn], future, many=False, deadline=deadline))
        return await asyncio.wrap_future(future)

    async def read(self, fn: Callable[[SqliteTapTx], T]) -> T:
        """``fn`` on the writer's connection in a read transaction (``BEGIN`` deferred: no write
        lock), so it never makes a writer wait — the tap engine's in its own process, the
        counter's. ``fn`` must not write (SQLite would then take the lock for it)."""
        self._check_alive()
        future: Future[T] = Future()
        self._queue.put(_Job([fn], future, many=False, read_only=True))
        return await asyncio.wrap_future(future)

    async def run_many(
        self,
        fns: Sequence[Callable[[SqliteTapTx], T]],
        *,
        deadline: float | None = None,
        order: Sequence[str] | None = None,  # noqa: ARG002 - one writer: no lock order to keep
        replies: Sequence[tuple[str, str]] | None = None,
    ) -> list[T | BaseException]:
        """Several jobs, one wake-up: each result, or the exception its job raised, in order.
        Past ``deadline`` (``time.monotonic()``) none of them runs: ``unavailable``. ``replies``:
        the idempotency keys the jobs will look up, read for the whole batch in one statement."""
        self._check_alive()
        future: Future[list[T | BaseException]] = Future()
        self._queue.put(_Job(list(fns), future, many=True, deadline=deadline, replies=replies))
        return await asyncio.wrap_future(future)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            # no SQLite busy handler (it backs off up to 100 ms a try): _begin retries every
            # 0.5 ms while another connection (the counter, a kiosk's loss report) writes
            "PRAGMA busy_timeout=0",
            # no checkpoint inside a commit on the tap path: see _checkpoint_between_batches
            "PRAGMA wal_autocheckpoint=0",
            f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}",
        ):
            conn.execute(pragma)
        return conn

    @property
    def wal_bytes(self) -> int:
        """Size of the registry's WAL file now (0 if there is none)."""
        try:
            return Path(self.path + "-wal").stat().st_size
        except OSError:
            return 0

    def _checkpointer(self) -> None:
        """Copy the WAL back into the database every few seconds, in the background (PASSIVE:
        never blocks the writer), so the writer's own checkpoint has little left to copy. While
        commits fail (disk full) try a TRUNCATE checkpoint instead, so an idle writer's WAL gives
        its space back as soon as there is room to finish the copy."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            while not self._stopped.wait(
                FAILING_CHECKPOINT_S
                if self.failing_since is not None
                else self.checkpoint_interval_s
            ):
                mode = "TRUNCATE" if self.failing_since is not None else "PASSIVE"
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        finally:
            conn.close()

    def _checkpoint_between_batches(self, conn: sqlite3.Connection) -> None:
        """Finish a checkpoint from the writer's thread, between two batches, every few seconds.

        SQLite restarts the WAL from its beginning only when a checkpoint has copied *every* frame.
        The background checkpoint never gets there under sustained load (the writer appends while
        it copies), so the WAL grew without bound: measured 155 MiB of WAL for 7 MiB of data in
        8 s of inserts. Between batches no frame is being appended, so this one completes (unless
        a reader still needs old frames) and the next commit starts the WAL over, cut back to
        ``WAL_SIZE_LIMIT``. It copies only what the background checkpoint left. While commits fail
        (a full disk) it is a TRUNCATE, tried every second: the WAL's space comes back as soon as
        the copy can finish, and the registry recovers instead of filling the freed space again.
        """
        now = time.monotonic()
        if now < self._next_checkpoint:
            return
        failing = self.failing_since is not None
        self._next_checkpoint = now + (
            FAILING_CHECKPOINT_S if failing else self.checkpoint_interval_s
        )
        mode = "TRUNCATE" if failing else "PASSIVE"
        try:
            busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            busy, frames, copied = 1, 0, 0
        if busy or copied < frames:
            # the background checkpoint held the lock, or a reader still needs old frames
            self._next_checkpoint = min(self._next_checkpoint, now + CHECKPOINT_RETRY_S)
        else:
            self.checkpoints += 1

    def _main(self, ready: Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # noqa: BLE001 - handed to the starter
            ready.set_exception(exc)
            return
        ready.set_result(None)
        tx = SqliteTapTx(conn)
        try:
            self._loop(conn, tx)
        except BaseException as exc:  # noqa: BLE001 - recorded: /readyz and every caller see it
            self.failure = exc
            self._fail_queued(exc)
        finally:
            conn.close()

    def _fail_queued(self, exc: BaseException) -> None:
        failure = OnecardError(
            "数据库写入线程已停止", f"registry writer stopped: {exc!r}", code=ErrorCode.UNAVAILABLE
        )
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(failure)

    def _loop(self, conn: sqlite3.Connection, tx: SqliteTapTx) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            # a job whose caller gave up (cancelled) is not run at all; the others can no
            # longer be cancelled, so setting their results below cannot raise
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            reads = [job for job in batch if job.read_only]
            if reads:
                batch = [job for job in batch if not job.read_only]
                self._run_reads(conn, tx, reads)
            if batch:
                self.busy_since = time.monotonic()
                try:
                    self._run_batch(conn, tx, batch)
                except BaseException as exc:
                    self.failure = exc  # before the callers hear of it: /readyz agrees at once
                    stopped = OnecardError(
                        "数据库写入线程已停止",
                        f"registry writer stopped: {exc!r}",
                        code=ErrorCode.UNAVAILABLE,
                    )
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(stopped)
                    raise
                finally:
                    self.busy_since = None
                self._checkpoint_between_batches(conn)
            if stop:
                return

    @staticmethod
    def _run_reads(conn: sqlite3.Connection, tx: SqliteTapTx, reads: list[_Job]) -> None:
        """Read jobs in one deferred transaction: WAL readers take no write lock."""
        try:
            conn.execute("BEGIN")
            tx.begin_batch()
            tx.defer = False
            for job in reads:
                try:
                    job.future.set_result(job.fns[0](tx))
                except Exception as exc:  # noqa: BLE001 - the job's failure goes to its caller
                    job.future.set_exception(exc)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            tx.discard()
            failure = OnecardError(
                "数据库暂不可用", f"registry unavailable: {exc}", code=ErrorCode.UNAVAILABLE
            )
            for job in reads:
                if not job.future.done():
                    job.future.set_exception(failure)

    def _run_batch(self, conn: sqlite3.Connection, tx: SqliteTapTx, batch: list[_Job]) -> None:
        """Run every job in one transaction and commit once (group commit).

        Fast path: no savepoints. A job that raises (rare: a terminal unknown, a bug) rolls the
        whole transaction back and the batch runs again with a savepoint around each job, so the
        failing job rolls back alone and the others still commit.
        """
        try:
            outcomes = self._attempt(conn, tx, batch, safe=False, lock_wait_s=self.lock_wait_s)
            if outcomes is None:
                outcomes = self._attempt(conn, tx, batch, safe=True, lock_wait_s=self.lock_wait_s)
            assert outcomes is not None
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            tx.discard()
            failure = OnecardError(
                "数据库暂不可用", f"registry unavailable: {exc}", code=ErrorCode.UNAVAILABLE
            )
            # before the callers hear of it (they run on another thread): /readyz agrees at once
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            for job in batch:
                job.future.set_exception(failure)
            return
        self.failing_since = None
        self.batches += 1
        for job, results in zip(batch, outcomes, strict=True):
            if results is _GAVE_UP:
                job.future.set_exception(registry_busy())
                continue
            self.jobs += len(results)
            if job.many:
                job.future.set_result(results)
            elif isinstance(results[0], BaseException):
                job.future.set_exception(results[0])
            else:
                job.future.set_result(results[0])

    @staticmethod
    def _attempt(
        conn: sqlite3.Connection,
        tx: SqliteTapTx,
        batch: list[_Job],
        *,
        safe: bool,
        lock_wait_s: float,
    ) -> list[Any] | None:
        outcomes: list[Any] = []
        _begin(conn, deadline=time.monotonic() + lock_wait_s)
        tx.begin_batch()
        tx.prefetch_replies([key for job in batch if job.replies for key in job.replies])
        # fast path: ledger writes deferred to a few executemany statements before the COMMIT;
        # the safe retry runs write-through, a savepoint around each job
        tx.defer = not safe
        now = time.monotonic()  # the lock is ours: what runs now commits within milliseconds
        for job in batch:
            if job.deadline is not None and now > job.deadline:
                outcomes.append(_GAVE_UP)
                continue
            results: list[Any] = []
            for fn in job.fns:
                if not safe:
                    try:
                        results.append(fn(tx))
                    except Exception:  # noqa: BLE001 - retried below with savepoints
                        conn.execute("ROLLBACK")
                        tx.discard()
                        return None
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    results.append(fn(tx))
                except Exception as exc:  # noqa: BLE001 - the job's failure goes to its caller
                    conn.execute("ROLLBACK TO job")
                    tx.discard()
                    results.append(exc)
                conn.execute("RELEASE job")
            outcomes.append(results)
        if not safe:
            try:
                tx.flush()
            except sqlite3.IntegrityError:  # a constraint the decisions did not foresee:
                conn.execute("ROLLBACK")  # the safe retry finds the job that broke it
                tx.discard()
                return None
        conn.execute("COMMIT")
        return outcomes
