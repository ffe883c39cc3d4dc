"""The tap path on PostgreSQL: group commit over one asyncpg connection per gateway (issue 12).

Several ``onecard serve`` instances share one registry behind MQTT v5 shared subscriptions, and
Mosquitto deals one terminal's consecutive requests, retries and offline batches round-robin to
different instances. Correctness therefore rests on the database, never on broker affinity:

- **Idempotency per (terminal, request_id).** The idempotency row is inserted with the decision.
  When two gateways decide the same request at once, the second insert waits for the first
  transaction and fails (unique violation); the executor rolls that job back to its savepoint and
  runs it again, and the job now finds the committed reply and replays it: one debit, equal replies.
- **Offline uploads exactly once per (terminal, seq):** the same mechanism on ``offline_sales``.
- **Conditional per-card updates.** A purse or hold is debited by ``UPDATE … WHERE balance >=
  amount`` (READ COMMITTED re-evaluates it on the newest row version); the rows a tap reads and
  then rewrites (a water hold, a month's meal count) are read ``FOR NO KEY UPDATE``.
- **No deadlocks on hot rows.** A merchant's or a fund's account is credited by every tap of its
  terminals; updating it inside each job would hold its lock for the whole batch and lock such rows
  in different orders in two gateways' batches. Changes to accounts that may go negative (not purse,
  hold, deposit) are added up per batch and applied just before COMMIT in account-id order (row
  locks taken ``ORDER BY id``, ``FOR NO KEY UPDATE`` so they never wait for the KEY SHARE locks of
  the transfers' foreign keys), so those rows cannot deadlock. A deadlock between purses (the same
  two cards in two batches in opposite order) is detected by the server and the batch runs again.
- **Caches follow the counter.** Terminal and card rows are cached between batches; migration
  0009's triggers bump ``registry_epoch`` in the same transaction as any change to a cached column,
  and each batch reads it first (the PostgreSQL counterpart of SQLite's ``PRAGMA data_version``).

Jobs are the same plain functions of a :class:`storage.ports.TapTx` as on SQLite: they run in a
greenlet (SQLAlchemy's ``greenlet_spawn``), where each statement awaits asyncpg on the event loop.
Statements use asyncpg's prepared-statement cache. ``synchronous_commit`` is never turned off: a
reply is published only after its COMMIT returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.util.concurrency import await_, greenlet_spawn

from protocol.errors import ErrorCode, NotFound, OnecardError, registry_busy
from protocol.ledger import account_kind
from storage import schema as s
from storage.posting import TRANSFER_COLUMNS
from storage.queries import Query
from storage.records import Row, TapCard
from storage.taptx import TapTxBase

T = TypeVar("T")
log = logging.getLogger("onecard.storage.pgtap")

#: Tables whose rows a tap reads and then rewrites: read ``FOR NO KEY UPDATE`` so two gateways
#: cannot both act on the same state (a water hold settled twice, one meal counted for two).
LOCKED_READS = frozenset({"water_holds", "meal_usage"})
#: How often a job that lost a unique-key race (idempotency, offline seq) runs again.
RACE_RETRIES = 3
#: How often a batch aborted by a deadlock or a serialisation failure runs again.
BATCH_RETRIES = 3
_GAVE_UP = object()


def asyncpg_dsn(target: str) -> str:
    """``postgresql://…`` as asyncpg takes it (SQLAlchemy's ``+asyncpg`` suffix removed)."""
    scheme, rest = target.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else target


def _row(record: asyncpg.Record | None) -> Row | None:
    return None if record is None else dict(record.items())


def _ph(count: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


_INSERT_TRANSFER = (
    f"INSERT INTO transfers ({', '.join(TRANSFER_COLUMNS)})"  # noqa: S608 - fixed names
    f" VALUES ({_ph(len(TRANSFER_COLUMNS))}) RETURNING id"
)


def _columns(table: str) -> list[str]:
    return [c.name for c in s.metadata.tables[table].columns]


def _key_names(table: str) -> list[str]:
    return [c.name for c in s.metadata.tables[table].primary_key.columns]


def _key(key: Any) -> tuple[Any, ...]:
    return tuple(key) if isinstance(key, tuple) else (key,)


class PgTapTx(TapTxBase):
    """The operations a tap decision needs, on one gateway's connection (see the module doc)."""

    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._epoch: int | None = None
        self._terminals: dict[str, tuple[str, str | None, bool] | None] = {}
        self._cards: dict[str, TapCard | None] = {}
        #: (account, change in fen) to apply before COMMIT (accounts that may go negative:
        #: merchants, funds, cash); a savepoint rolled back truncates it
        self.deferred: list[tuple[str, int]] = []
        #: accounts known to exist (committed): the transfer row's foreign key needs them
        self.known_accounts: set[str] = set()
        self._created: list[str] = []

    # --- plumbing ------------------------------------------------------------------------
    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        result: list[asyncpg.Record] = await_(self.conn.fetch(sql, *args))
        return result

    def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        result: asyncpg.Record | None = await_(self.conn.fetchrow(sql, *args))
        return result

    def execute(self, sql: str, *args: Any) -> str:
        result: str = await_(self.conn.execute(sql, *args))
        return result

    def scalar(self, sql: str, *args: Any) -> Any:
        return await_(self.conn.fetchval(sql, *args))

    # the shared reads (storage.queries), compiled once for asyncpg (prepared-statement cache)
    def first(self, query: Query, *args: Any) -> Row | None:
        compiled = query.postgres
        return _row(self.fetchrow(compiled.sql, *compiled.args(args)))

    def rows(self, query: Query, *args: Any) -> list[Row]:
        compiled = query.postgres
        return [dict(r.items()) for r in self.fetch(compiled.sql, *compiled.args(args))]

    def value(self, query: Query, *args: Any) -> Any:
        compiled = query.postgres
        return self.scalar(compiled.sql, *compiled.args(args))

    def begin_batch(self) -> None:
        """First statement of each batch: empty the caches if the registry epoch moved."""
        self.deferred.clear()
        self._created.clear()
        epoch = int(self.scalar("SELECT n FROM registry_epoch WHERE id = 1") or 0)
        if epoch != self._epoch:
            self._epoch = epoch
            self._terminals.clear()
            self._cards.clear()

    def forget_caches(self) -> None:
        self._epoch = None
        self._terminals.clear()
        self._cards.clear()

    def mark(self) -> tuple[int, int]:
        return len(self.deferred), len(self._created)

    def undo_to(self, mark: tuple[int, int]) -> None:
        """Forget what a savepoint rolled back: its deferred changes and the accounts it made."""
        del self.deferred[mark[0] :]
        del self._created[mark[1] :]

    def flush(self) -> None:
        """Apply the batch's deferred account changes, rows locked in id order (no deadlock)."""
        totals: dict[str, int] = {}
        for account, change in self.deferred:
            totals[account] = totals.get(account, 0) + change
        self.deferred.clear()
        ids = sorted(a for a, v in totals.items() if v)
        if not ids:
            return
        # NO KEY UPDATE, not UPDATE: it must not wait for the KEY SHARE locks that every
        # transfer row's foreign keys take on these accounts in the other gateways' open batches
        # (FOR UPDATE deadlocked two gateways' batches on the merchant's row, every time)
        self.fetch(
            "SELECT id FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE", ids
        )
        self.execute(
            "UPDATE accounts a SET balance = a.balance + d.change"
            " FROM unnest($1::text[], $2::bigint[]) AS d(id, change) WHERE a.id = d.id",
            ids,
            [totals[a] for a in ids],
        )

    def committed(self) -> None:
        self.known_accounts.update(self._created)
        self._created.clear()

    # --- generic rows ----------------------------------------------------------------------
    def get(self, table: str, key: Any) -> Row | None:
        names = _key_names(table)
        where = " AND ".join(f"{k} = ${i}" for i, k in enumerate(names, 1))
        lock = " FOR NO KEY UPDATE" if table in LOCKED_READS else ""
        sql = f"SELECT {', '.join(_columns(table))} FROM {table} WHERE {where}{lock}"  # noqa: S608
        return _row(self.fetchrow(sql, *_key(key)))

    def find(self, table: str, *, order_by: str | None = None, **eq: Any) -> list[Row]:
        where = " AND ".join(f"{k} = ${i}" for i, k in enumerate(eq, 1)) or "TRUE"
        sql = f"SELECT {', '.join(_columns(table))} FROM {table} WHERE {where}"  # noqa: S608
        if order_by:
            sql += f" ORDER BY {order_by}"
        if table in LOCKED_READS:
            sql += " FOR NO KEY UPDATE"
        return [dict(r.items()) for r in self.fetch(sql, *eq.values())]

    def put(self, table: str, values: Mapping[str, Any]) -> None:
        cols = list(values)
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({_ph(len(cols))})"  # noqa: S608
        self.execute(sql, *values.values())

    def insert(self, table: str, values: Mapping[str, Any]) -> int:
        cols = list(values)
        key = _key_names(table)[0]
        sql = (
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({_ph(len(cols))})"  # noqa: S608
            f" RETURNING {key}"
        )
        return int(self.scalar(sql, *values.values()))

    def update(self, table: str, key: Any, values: Mapping[str, Any]) -> None:
        names = _key_names(table)
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(values, 1))
        where = " AND ".join(f"{k} = ${i}" for i, k in enumerate(names, len(values) + 1))
        status = self.execute(
            f"UPDATE {table} SET {sets} WHERE {where}",  # noqa: S608
            *values.values(),
            *_key(key),
        )
        if status != "UPDATE 1":
            raise NotFound(f"{table} 中无记录 {key}", f"{table}: no row {key}")

    @contextlib.contextmanager
    def undo_on(self, *errors: type[BaseException]) -> Iterator[None]:
        """Roll back what the block wrote if it raises one of ``errors`` (then re-raise)."""
        mark = self.mark()
        self.execute("SAVEPOINT step")
        try:
            yield
        except errors:
            self.execute("ROLLBACK TO SAVEPOINT step")
            self.execute("RELEASE SAVEPOINT step")
            self.undo_to(mark)
            raise
        self.execute("RELEASE SAVEPOINT step")

    # --- money: the one posting path of the tap path on PostgreSQL ------------------------------
    def debit_guarded(self, account: str, amount: int) -> int | None:
        found = self.scalar(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1"
            " RETURNING balance",
            amount,
            account,
        )
        return None if found is None else int(found)

    def credit_guarded(self, account: str, amount: int, holder_id: int | None) -> None:
        status = self.execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, account
        )
        if status != "UPDATE 1":
            self.execute(
                "INSERT INTO accounts (id, kind, holder_id, balance) VALUES ($1, $2, $3, $4)",
                account,
                account_kind(account).value,
                holder_id,
                amount,
            )

    def move_unguarded(self, account: str, change: int) -> int:
        """Deferred to the end of the batch (:meth:`flush`): a merchant's or a fund's account is
        touched by every tap of its terminals. Its balance after is not known here: 0 (only a
        guarded source's balance is ever shown to a cardholder)."""
        kind = account_kind(account).value
        if account not in self.known_accounts and account not in self._created:
            # the transfer row references it: make sure it exists (balance 0, no lock taken if
            # it does); the change itself comes with the batch's flush
            self.execute(
                "INSERT INTO accounts (id, kind, holder_id, balance) VALUES ($1, $2, NULL, 0)"
                " ON CONFLICT (id) DO NOTHING",
                account,
                kind,
            )
            self._created.append(account)
        self.deferred.append((account, change))
        return 0

    def insert_transfer(self, values: tuple[Any, ...]) -> int:
        return int(self.scalar(_INSERT_TRANSFER, *values))

    def record_reply(
        self, terminal_id: str, request_id: str, op: str, fingerprint: str, reply: str, at: datetime
    ) -> None:
        """The idempotency record. Another gateway deciding the same request at the same time
        makes this wait for its commit and fail with a unique violation: the executor then runs
        the job again, and it replays the committed reply."""
        self.execute(
            "INSERT INTO idempotency (terminal_id, request_id, op, fingerprint, reply, at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            terminal_id,
            request_id,
            op,
            fingerprint,
            reply,
            at,
        )

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
        status = self.execute(
            "INSERT INTO holder_alerts (holder_id, card_id, kind, at, terminal_id, detail)"
            " SELECT $1::integer, $2::integer, 'card_presented', $3, $4::varchar, $5"
            " WHERE NOT EXISTS (SELECT 1 FROM holder_alerts WHERE card_id = $2::integer"
            " AND terminal_id = $4::varchar AND at > $6 AND kind = 'card_presented')",
            holder_id,
            card_id,
            at,
            terminal_id,
            detail,
            since,
        )
        return status == "INSERT 0 1"


class _Job:
    __slots__ = ("deadline", "fns", "future", "keys", "many")

    def __init__(
        self,
        fns: list[Callable[[PgTapTx], Any]],
        future: asyncio.Future[Any],
        *,
        many: bool,
        deadline: float | None,
        keys: Sequence[str] | None = None,
    ) -> None:
        self.fns = fns
        self.future = future
        self.many = many
        self.deadline = deadline
        self.keys = list(keys) if keys is not None else [""] * len(fns)
        if len(self.keys) != len(fns):
            msg = "one order key per job"
            raise ValueError(msg)


class _Exhausted(Exception):
    """The batch ran again as often as allowed without committing: answered ``unavailable``."""


#: Errors after which the whole batch runs again (nothing of it committed).
_BATCH_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
#: Errors of the connection itself: the batch is answered ``unavailable`` (a retry of the same
#: request id gets the committed decision if the COMMIT did reach the server).
_CONNECTION = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)
#: Errors that end the batch at once, whichever job met them: run again (above), or every job
#: answered ``unavailable`` (a row lock held past ``lock_timeout``, the connection gone).
_BATCH_FAIL = (*_BATCH_RETRY, *_CONNECTION, asyncpg.LockNotAvailableError)


class PgTapExecutor:
    """:class:`storage.ports.TapExecutor` on PostgreSQL: one connection, one batch at a time,
    each batch one transaction (group commit). ``await executor.run(job)`` -> the job's result,
    committed."""

    def __init__(
        self,
        target: str,
        *,
        max_batch: int = 128,
        lock_wait_s: float = 2.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.dsn = asyncpg_dsn(target)
        self.max_batch = max_batch
        self.lock_wait_s = lock_wait_s
        self.connect_timeout_s = connect_timeout_s
        self.failure: BaseException | None = None
        self.busy_since: float | None = None
        self.failing_since: float | None = None
        self.batches = 0
        self.jobs = 0
        self.retried_jobs = 0
        self.retried_batches = 0
        #: batches run again with a savepoint per job after a job failed (a lost race, a bug)
        self.fallbacks = 0
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._conn: asyncpg.Connection | None = None
        self._tx: PgTapTx | None = None
        self._worker: asyncio.Task[None] | None = None
        self._known_accounts: set[str] = set()

    async def start(self) -> None:
        await self._connect()
        self._worker = asyncio.create_task(self._loop(), name="onecard-pgtap")

    async def close(self) -> None:
        if self._worker is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._conn is not None:
            with contextlib.suppress(*_CONNECTION, asyncio.TimeoutError):
                await asyncio.wait_for(self._conn.close(), timeout=2)
            self._conn = None

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done() and self.failure is None

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout_s,
            server_settings={
                "application_name": "onecard-tap",
                # a batch waits this long for a row lock (a counter transaction), then the
                # terminals get a fast, retryable `unavailable`
                "lock_timeout": f"{int(self.lock_wait_s * 1000)}",
            },
        )
        tx = PgTapTx(conn)
        tx.known_accounts = self._known_accounts
        self._conn, self._tx = conn, tx

    async def run(self, fn: Callable[[PgTapTx], T], *, deadline: float | None = None) -> T:
        self._check_alive()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job([fn], future, many=False, deadline=deadline))
        return await future

    async def read(self, fn: Callable[[PgTapTx], T]) -> T:
        """A read: PostgreSQL's readers never block its writers, so it runs as any job."""
        return await self.run(fn)

    async def run_many(
        self,
        fns: Sequence[Callable[[PgTapTx], T]],
        *,
        deadline: float | None = None,
        order: Sequence[str] | None = None,
        replies: Sequence[tuple[str, str]] | None = None,  # noqa: ARG002 - one lookup per job
    ) -> list[T | BaseException]:
        """Several jobs, results in their order. ``order``: one key per job (the card UID of a
        tap); a batch runs its jobs sorted by it, so two gateways lock purses in the same order
        and cannot deadlock on them (each deadlock costs the server's ``deadlock_timeout``)."""
        self._check_alive()
        future: asyncio.Future[list[T | BaseException]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(list(fns), future, many=True, deadline=deadline, keys=order))
        return await future

    def _check_alive(self) -> None:
        if self._worker is None:
            msg = "tap executor not started"
            raise RuntimeError(msg)
        if not self.alive:
            raise OnecardError(
                "数据库写入已停止",
                f"registry writer stopped: {self.failure!r}",
                code=ErrorCode.UNAVAILABLE,
            )

    async def _loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            batch = [job for job in batch if not job.future.done()]
            if batch:
                self.busy_since = time.monotonic()
                try:
                    await self._run_batch(batch)
                except Exception as exc:  # a bug: recorded, /readyz says 503
                    log.exception("tap executor stopped")
                    self.failure = exc
                    self._fail(batch, exc)
                    self._fail_queued(exc)
                    return
                finally:
                    self.busy_since = None
            if stop:
                return

    def _fail_queued(self, exc: BaseException) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._fail([item], exc)

    async def _run_batch(self, batch: list[_Job]) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                await self._connect()
            outcomes = await self._attempts(batch)
        except (*_CONNECTION, TimeoutError) as exc:
            await self._abandon_connection()
            self._fail(batch, exc)
            return
        except _Exhausted as exc:
            self._fail(batch, exc)
            return
        except asyncpg.PostgresError as exc:  # a lock held too long, the server starting up
            try:
                await self._rollback()
            except (*_CONNECTION, asyncpg.PostgresError, TimeoutError):
                await self._abandon_connection()
            self._fail(batch, exc)
            return
        self.failing_since = None
        self.batches += 1
        for job, results in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
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

    def _fail(self, batch: list[_Job], exc: BaseException) -> None:
        log.warning("tap batch failed: %r", exc)
        failure = OnecardError(
            "数据库暂不可用", f"registry unavailable: {exc}", code=ErrorCode.UNAVAILABLE
        )
        for job in batch:
            if not job.future.done():
                job.future.set_exception(failure)
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    async def _abandon_connection(self) -> None:
        conn, self._conn = self._conn, None
        if self._tx is not None:
            self._tx.forget_caches()
        if conn is not None and not conn.is_closed():
            # the transaction's state is unknown: drop the connection, never reuse it
            conn.terminate()

    async def _attempts(self, batch: list[_Job]) -> list[Any]:
        safe = False
        for attempt in range(BATCH_RETRIES + 1):
            try:
                outcomes: list[Any] | None = await greenlet_spawn(self._attempt, batch, safe)
            except _BATCH_RETRY as exc:
                await self._rollback()
                if attempt == BATCH_RETRIES:
                    raise
                self.retried_batches += 1
                log.info("tap batch runs again after %s", type(exc).__name__)
                safe = True
                continue
            if outcomes is not None:
                return outcomes
            await self._rollback()
            self.fallbacks += 1
            safe = True  # a job failed, or a caller gave up: again, one savepoint per job
        raise _Exhausted

    async def _rollback(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await asyncio.wait_for(self._conn.execute("ROLLBACK"), self.connect_timeout_s)

    def _attempt(self, batch: list[_Job], safe: bool) -> list[Any] | None:
        tx = self._tx
        assert tx is not None
        tx.execute("BEGIN")
        tx.begin_batch()
        now = time.monotonic()
        outcomes: list[Any] = []
        plan: list[tuple[str, int, int]] = []
        for index, job in enumerate(batch):
            if job.future.done() or (job.deadline is not None and now > job.deadline):
                outcomes.append(_GAVE_UP)
                continue
            outcomes.append([None] * len(job.fns))
            plan += [(key, index, position) for position, key in enumerate(job.keys)]
        plan.sort(key=lambda step: step[0])  # stable: same key keeps the arrival order
        for _, index, position in plan:
            fn = batch[index].fns[position]
            if safe:
                outcomes[index][position] = self._safe_job(tx, fn)
                continue
            try:
                outcomes[index][position] = fn(tx)
            except _BATCH_FAIL:
                raise
            except Exception:  # noqa: BLE001 - run again below, one savepoint per job
                return None
        for index, job in enumerate(batch):
            if outcomes[index] is not _GAVE_UP and job.future.done():
                # its caller gave up while the batch ran (and answered `unavailable`): nothing
                # answered `unavailable` may commit, so the batch runs again without it
                return None
        tx.flush()
        tx.execute("COMMIT")
        tx.committed()
        return outcomes

    def _safe_job(self, tx: PgTapTx, fn: Callable[[PgTapTx], Any]) -> Any:
        """One job in its own savepoint; a lost unique-key race runs it again (it then replays
        the winner's committed decision); any other failure is the job's result."""
        for attempt in range(RACE_RETRIES + 1):
            mark = tx.mark()
            tx.execute("SAVEPOINT job")
            try:
                result = fn(tx)
            except asyncpg.UniqueViolationError as exc:
                tx.execute("ROLLBACK TO SAVEPOINT job")
                tx.undo_to(mark)
                if attempt == RACE_RETRIES:
                    return exc
                self.retried_jobs += 1
                continue
            except _BATCH_FAIL:
                raise
            except Exception as exc:  # noqa: BLE001 - the job's failure goes to its caller
                tx.execute("ROLLBACK TO SAVEPOINT job")
                tx.undo_to(mark)
                return exc
            tx.execute("RELEASE SAVEPOINT job")
            return result
        return None  # pragma: no cover - the loop always returns
