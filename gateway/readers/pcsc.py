"""PC/SC card readers through pyscard: card events and the MEAL-3/MEAL-4 type write-back.

The only module of onecard that imports ``smartcard`` (pyscard). Design (FIELD-NOTES "PC/SC with
a virtual card"):

- **Monitor thread.** A raw ``SCardGetStatusChange`` loop on its own PC/SC context, watching every
  reader plus the ``\\\\?PnP?\\Notification`` pseudo-reader. pyscard's ``CardMonitor`` is a
  process-wide singleton that dies for good when pcscd restarts; this loop instead releases its
  context on ``SCARD_E_NO_SERVICE`` / ``SCARD_E_SERVICE_STOPPED`` / ``SCARD_F_COMM_ERROR`` /
  ``SCARD_E_INVALID_HANDLE`` and establishes a new one until pcscd is back (:class:`ServiceLost`,
  :class:`ServiceRestored`, and the readers detach and re-attach).
- **One worker thread per reader**, each with its own context (pcsc-lite serialises the calls
  made on one context, so a blocked call would stall every reader sharing it). Card I/O (connect,
  transmit, disconnect) runs only there.
- **Watchdog.** ``SCardTransmit`` has no timeout: a card that stops answering blocks its worker.
  Every async call waits for its worker at most ``timeout`` seconds, then raises
  :class:`ReaderTimeout` and marks the reader *stuck* (:class:`ReaderStuck`); later calls on a stuck
  reader fail at once instead of queueing. When the blocked call returns (typically the card is
  taken off), the reader recovers (:class:`ReaderRecovered`). The event loop never blocks.
- **Events** reach the asyncio loop through ``loop.call_soon_threadsafe`` into an
  ``asyncio.Queue``. Presence changes of one reader are handled in order by one asyncio task per
  reader: an insertion is followed by a read (UID + campus record) under the watchdog, then
  :class:`CardInserted` is queued; a removal queues :class:`CardRemoved`.

Card serials, holder numbers and UIDs are masked in logs (PIPL).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

from smartcard import scard

from protocol.cardfile.apdu import (
    SW,
    Command,
    Response,
    get_response,
    get_uid,
    read_binary,
    select_aid,
    select_ef,
    update_binary,
)
from protocol.cardfile.layout import (
    RECORD_LENGTH,
    TYPE_GROUP_OFFSET,
    CampusRecord,
    CardFileError,
    decode_record,
    encode_type_group,
    mask,
)
from protocol.carduid import canonical_card_uid, card_uid_from_bytes
from protocol.errors import ErrorCode, OnecardError

log = logging.getLogger("onecard.gateway.readers.pcsc")

T = TypeVar("T")

PNP_NOTIFICATION: Final = "\\\\?PnP?\\Notification"
#: ``SCardGetStatusChange`` waits without a timeout; the wait is re-armed by ``SCardCancel``.
#: Measured with pcsc-lite 1.9.9: after a reader was blocked by a stalled card, the removal and
#: re-insertion that followed sometimes never woke a waiting ``SCardGetStatusChange`` (no events
#: for 10 s, with a 1 s timeout as well as with INFINITE); a ``SCardCancel`` released it and the
#: next call saw the new state at once. So the monitor is nudged (cancelled and re-armed) every
#: :data:`STATUS_REFRESH_S` seconds and right after a stuck reader recovers; a dead pcscd makes
#: the call return ``SCARD_E_NO_SERVICE``.
STATUS_WAIT_MS: Final = scard.INFINITE
STATUS_REFRESH_S: Final = 2.0
DEFAULT_TIMEOUT: Final = 2.0

_SERVICE_GONE: Final = frozenset(
    {
        scard.SCARD_E_NO_SERVICE,
        scard.SCARD_E_SERVICE_STOPPED,
        scard.SCARD_F_COMM_ERROR,
        scard.SCARD_E_INVALID_HANDLE,
    }
)
_NO_CARD: Final = frozenset(
    {
        scard.SCARD_E_NO_SMARTCARD,
        scard.SCARD_W_REMOVED_CARD,
        scard.SCARD_W_RESET_CARD,
        scard.SCARD_W_UNPOWERED_CARD,
        scard.SCARD_W_UNRESPONSIVE_CARD,
        scard.SCARD_E_NOT_TRANSACTED,
    }
)
_READER_GONE: Final = frozenset({scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE})


# -- errors ---------------------------------------------------------------------------------------
class ReaderError(OnecardError):
    """A card reader operation failed (the reader, pcscd or the card)."""

    code = ErrorCode.UNAVAILABLE

    def __init__(
        self, message_zh: str = "读卡器不可用", message_en: str = "card reader unavailable"
    ):
        super().__init__(message_zh, message_en)


class ReaderTimeout(ReaderError):
    """The reader's worker did not finish in time (a stalled card); the reader is marked stuck."""

    def __init__(self, reader: str, operation: str, timeout: float, *, already: bool = False):
        if already:
            zh = f"读卡器仍无响应 ({reader})"
            en = f"card reader {reader!r} is still stuck on an earlier command"
        else:
            zh = f"读卡器无响应: {operation} 超过 {timeout:.1f} 秒 ({reader})"
            en = (
                f"card reader {reader!r} did not answer: {operation} took longer than "
                f"{timeout:.1f} s (reader marked stuck)"
            )
        super().__init__(zh, en)
        self.reader = reader
        self.operation = operation
        self.timeout = timeout


class NoCard(ReaderError):
    def __init__(self, reader: str) -> None:
        super().__init__(f"读卡器上没有卡片 ({reader})", f"no card on reader {reader!r}")
        self.reader = reader


class UnknownReader(ReaderError):
    def __init__(self, reader: str) -> None:
        super().__init__(f"无此读卡器 ({reader})", f"unknown card reader {reader!r}")
        self.reader = reader


class PcscServiceError(ReaderError):
    """pcscd is not running or went away during the call."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"读卡服务不可用: {detail}", f"PC/SC service unavailable: {detail}")


class CardCommandError(ReaderError):
    """The card answered a command with an error status word (e.g. 6A82: not a campus card)."""

    code = ErrorCode.CARD_UNKNOWN

    def __init__(self, command: str, sw: int) -> None:
        super().__init__(
            f"卡片拒绝命令 {command} (SW {sw:04X})", f"card refused {command} (SW {sw:04X})"
        )
        self.command = command
        self.sw = sw


class CardMismatch(ReaderError):
    """The card on the reader is not the card the operation was meant for."""

    code = ErrorCode.INVALID_INPUT

    def __init__(self, expected: str, found: str) -> None:
        super().__init__(
            f"读卡器上的卡片不是目标卡 (应为 {mask(expected)}, 实为 {mask(found)})",
            f"wrong card on the reader (expected {mask(expected)}, found {mask(found)})",
        )


class WriteBackFailed(ReaderError):
    """UPDATE BINARY was accepted but reading back shows another value (MEAL-3/MEAL-4)."""

    def __init__(self, wanted: int, found: int) -> None:
        super().__init__(
            f"写卡校验失败: 类型组应为 {wanted}, 读回 {found}",
            f"write-back verification failed: type group {wanted} written, {found} read back",
        )


def _pcsc_error(hresult: int, reader: str, what: str) -> ReaderError:
    if hresult in _SERVICE_GONE:
        return PcscServiceError(f"{what}: {_message(hresult)}")
    if hresult in _NO_CARD:
        return NoCard(reader)
    if hresult in _READER_GONE:
        return UnknownReader(reader)
    return ReaderError(
        f"读卡器错误: {what} ({_message(hresult)})",
        f"card reader error: {what} ({_message(hresult)})",
    )


def _message(hresult: int) -> str:
    return f"{scard.SCardGetErrorMessage(hresult)} [0x{hresult & 0xFFFFFFFF:08X}]"


# -- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CardSnapshot:
    """What one read of a card found."""

    reader: str
    uid: bytes
    atr: bytes
    record: CampusRecord

    @property
    def card_uid(self) -> str:
        """The UID in the registry's one canonical form (upper-case hex, no separators); a UID
        shorter than 4 or longer than 16 bytes is refused (``InvalidInput``)."""
        return card_uid_from_bytes(self.uid)

    def __repr__(self) -> str:
        return (
            f"CardSnapshot(reader={self.reader!r}, uid={mask(self.uid.hex().upper())!r}, "
            f"record={self.record!r})"
        )


@dataclass(frozen=True, slots=True)
class ReaderAttached:
    reader: str


@dataclass(frozen=True, slots=True)
class ReaderDetached:
    reader: str


@dataclass(frozen=True, slots=True)
class CardInserted:
    """A card was put on ``reader``. ``record`` is ``None`` when it could not be read as a campus
    card (``error`` says why: foreign card, malformed file, stalled card, taken off too soon)."""

    reader: str
    uid: bytes | None
    atr: bytes
    record: CampusRecord | None
    error: ReaderError | CardFileError | None = None

    @property
    def card_uid(self) -> str | None:
        """The UID in canonical form, or ``None`` (no UID, or not a valid card UID)."""
        return canonical_card_uid(self.uid.hex()) if self.uid is not None else None

    def __repr__(self) -> str:
        uid = mask(self.uid.hex().upper()) if self.uid is not None else None
        return (
            f"CardInserted(reader={self.reader!r}, uid={uid!r}, record={self.record!r}, "
            f"error={self.error!s})"
        )


@dataclass(frozen=True, slots=True)
class CardRemoved:
    reader: str


@dataclass(frozen=True, slots=True)
class ReaderStuck:
    """A command on ``reader`` overran its timeout; calls fail fast until it recovers."""

    reader: str
    operation: str


@dataclass(frozen=True, slots=True)
class ReaderRecovered:
    reader: str


@dataclass(frozen=True, slots=True)
class ServiceLost:
    """pcscd went away; the monitor keeps trying to re-establish its context."""

    detail: str


@dataclass(frozen=True, slots=True)
class ServiceRestored:
    pass


ReaderEvent = (
    ReaderAttached
    | ReaderDetached
    | CardInserted
    | CardRemoved
    | ReaderStuck
    | ReaderRecovered
    | ServiceLost
    | ServiceRestored
)


# -- card session (worker thread only) ------------------------------------------------------------
class _Session:
    """A connected card in a worker thread: transmit commands, check status words."""

    def __init__(self, reader: str, hcard: Any, protocol: int, atr: bytes) -> None:
        self.reader = reader
        self.hcard = hcard
        self.atr = atr
        self.pci = scard.SCARD_PCI_T1 if protocol == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0
        self.transmits = 0

    def transmit(self, command: Command) -> Response:
        response = self._raw(command)
        # T=0 style answers: 61xx more data to fetch, 6Cxx wrong Le (resend with the exact one)
        if response.sw >> 8 == 0x6C and command.le is not None:
            response = self._raw(
                Command(command.cla, command.ins, command.p1, command.p2, command.data,
                        le=response.sw & 0xFF)
            )  # fmt: skip
        data = response.data
        while response.sw >> 8 == 0x61:
            response = self._raw(get_response(response.sw & 0xFF))
            data += response.data
        return Response(data, response.sw)

    def _raw(self, command: Command) -> Response:
        hresult, raw = scard.SCardTransmit(self.hcard, self.pci, list(command.to_bytes()))
        self.transmits += 1
        if hresult != scard.SCARD_S_SUCCESS:
            raise _pcsc_error(hresult, self.reader, "SCardTransmit")
        if len(raw) < 2:
            # vpcd reports success with an empty answer when the card's link breaks mid-command
            raise ReaderError(
                f"卡片无应答 ({self.reader})", f"card on {self.reader!r} returned no status word"
            )
        return Response.parse(bytes(raw))

    def expect_ok(self, command: Command, what: str, *, allow: Iterable[int] = ()) -> bytes:
        response = self.transmit(command)
        if response.sw != SW.OK and response.sw not in allow:
            raise CardCommandError(what, response.sw)
        return response.data


def _read_record(session: _Session) -> CampusRecord:
    session.expect_ok(select_aid(), "SELECT campus application")
    session.expect_ok(select_ef(), "SELECT EF 0001")
    return decode_record(session.expect_ok(read_binary(0, RECORD_LENGTH), "READ BINARY"))


@dataclass(frozen=True, slots=True)
class _ReadOutcome:
    uid: bytes | None
    atr: bytes
    record: CampusRecord | None
    error: ReaderError | CardFileError | None


def _read_job(session: _Session) -> _ReadOutcome:
    try:
        uid = session.expect_ok(get_uid(), "GET DATA UID")
    except CardCommandError as exc:
        return _ReadOutcome(None, session.atr, None, exc)
    try:
        record = _read_record(session)
    except (CardCommandError, CardFileError) as exc:
        return _ReadOutcome(uid, session.atr, None, exc)
    return _ReadOutcome(uid, session.atr, record, None)


# -- per-reader worker -----------------------------------------------------------------------------
_Job = tuple[Callable[[_Session], Any], "concurrent.futures.Future[Any]"]


class _ReaderWorker:
    """One thread per reader that owns its own PC/SC context and does all card I/O."""

    def __init__(self, reader: str, on_recovered: Callable[[str], None]) -> None:
        self.reader = reader
        self._on_recovered = on_recovered
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self.stuck = False
        self._context: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"onecard-pcsc-{reader}", daemon=True
        )
        self._thread.start()

    def submit(self, fn: Callable[[_Session], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def mark_stuck(self) -> bool:
        """Called by the watchdog after a timeout; True if this made the reader stuck."""
        with self._lock:
            if not self._running or self.stuck:
                return False
            self.stuck = True
            return True

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                fn, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                with self._lock:
                    self._running = True
                try:
                    result = self._execute(fn)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the awaiting coroutine
                    outcome: tuple[bool, Any] = (False, exc)
                else:
                    outcome = (True, result)
                with self._lock:
                    self._running = False
                    was_stuck, self.stuck = self.stuck, False
                    if outcome[0]:
                        future.set_result(outcome[1])
                    else:
                        future.set_exception(outcome[1])
                if was_stuck:
                    log.warning("reader %r answered again after being stuck", self.reader)
                    self._on_recovered(self.reader)
        finally:
            self._release()

    def _release(self) -> None:
        if self._context is not None:
            with contextlib.suppress(Exception):
                scard.SCardReleaseContext(self._context)
            self._context = None

    def _ensure_context(self) -> Any:
        if self._context is None:
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult != scard.SCARD_S_SUCCESS:
                raise _pcsc_error(hresult, self.reader, "SCardEstablishContext")
            self._context = context
        return self._context

    def _connect(self) -> tuple[Any, int]:
        context = self._ensure_context()
        hresult, hcard, protocol = scard.SCardConnect(
            context,
            self.reader,
            scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
        )
        if hresult in _SERVICE_GONE:
            # pcscd restarted since the last job: a fresh context, one more try
            self._release()
            context = self._ensure_context()
            hresult, hcard, protocol = scard.SCardConnect(
                context,
                self.reader,
                scard.SCARD_SHARE_SHARED,
                scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
            )
        if hresult != scard.SCARD_S_SUCCESS:
            if hresult in _SERVICE_GONE:
                self._release()
            raise _pcsc_error(hresult, self.reader, "SCardConnect")
        return hcard, int(protocol)

    def _execute(self, fn: Callable[[_Session], T]) -> T:
        hcard, protocol = self._connect()
        try:
            status = scard.SCardStatus(hcard)
            atr = bytes(status[4]) if status[0] == scard.SCARD_S_SUCCESS else b""
            return fn(_Session(self.reader, hcard, protocol, atr))
        except PcscServiceError:
            self._release()
            raise
        finally:
            with contextlib.suppress(Exception):
                scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)


def _join_all(workers: Iterable[_ReaderWorker], timeout: float) -> None:
    for worker in workers:
        worker.join(timeout)


# -- presence changes (monitor thread -> loop) ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Change:
    kind: Literal["attached", "inserted", "removed", "detached"]
    reader: str


class _ServiceGone(Exception):
    def __init__(self, hresult: int) -> None:
        super().__init__(_message(hresult))


# -- the bridge -----------------------------------------------------------------------------------
class PcscReaderBridge:
    """Card readers for asyncio code: an event queue plus async card reads and write-backs.

    Use as ``async with PcscReaderBridge() as bridge:`` (or :meth:`start` / :meth:`close`), then
    ``await bridge.next_event()``, ``await bridge.read_card(reader)``,
    ``await bridge.write_type_group(reader, 1)``. ``readers`` limits the bridge to those reader
    names (default: every reader pcscd announces).
    """

    def __init__(
        self,
        *,
        readers: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        reconnect_delay: float = 0.2,
    ) -> None:
        self._only = frozenset(readers) if readers is not None else None
        self.timeout = timeout
        self._reconnect_delay = reconnect_delay
        self.events: asyncio.Queue[ReaderEvent] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._monitor_context: Any = None
        self._monitor_lock = threading.Lock()
        self._workers: dict[str, _ReaderWorker] = {}
        self._workers_lock = threading.Lock()
        self._changes: dict[str, asyncio.Queue[_Change]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._all_tasks: set[asyncio.Task[None]] = set()
        self._present: dict[str, bool] = {}
        self._nudger: threading.Thread | None = None
        self.service_up = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._monitor is not None:
            raise RuntimeError("bridge already started")
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._monitor = threading.Thread(
            target=self._monitor_main, name="onecard-pcsc-monitor", daemon=True
        )
        self._monitor.start()
        self._nudger = threading.Thread(
            target=self._nudge_main, name="onecard-pcsc-nudge", daemon=True
        )
        self._nudger.start()

    async def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            await asyncio.to_thread(self._stop_monitor, self._monitor)
            self._monitor = None
        if self._nudger is not None:
            await asyncio.to_thread(self._nudger.join, 1.0)
            self._nudger = None
        tasks = list(self._all_tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._changes.clear()
        with self._workers_lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.stop()
        # a stuck worker stays blocked in SCardTransmit; it is a daemon thread: do not wait long
        await asyncio.to_thread(_join_all, workers, 0.5)

    def _stop_monitor(self, monitor: threading.Thread, timeout: float = 5.0) -> None:
        """Cancel the monitor's wait until it exits (a cancel sent just before it starts waiting
        would be lost, hence the loop)."""
        deadline = time.monotonic() + timeout
        while monitor.is_alive() and time.monotonic() < deadline:
            self._nudge()
            monitor.join(0.2)
        if monitor.is_alive():
            log.error("PC/SC monitor thread did not stop")

    async def __aenter__(self) -> PcscReaderBridge:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- public API -------------------------------------------------------------------------------
    async def next_event(self) -> ReaderEvent:
        """The next event (wrap in ``asyncio.timeout`` to bound the wait)."""
        return await self.events.get()

    def readers(self) -> list[str]:
        """Readers currently attached, as pcscd names them."""
        return sorted(self._changes)

    def is_present(self, reader: str) -> bool:
        return self._present.get(reader, False)

    def is_stuck(self, reader: str) -> bool:
        worker = self._workers.get(reader)
        return worker is not None and worker.stuck

    async def read_card(self, reader: str, *, watchdog: float | None = None) -> CardSnapshot:
        """Read the UID and the campus record of the card on ``reader``.

        ``watchdog`` (seconds, default ``self.timeout``) bounds the wait for the reader's thread;
        when it fires the reader is marked stuck. (Cancelling the call from outside, e.g. with
        ``asyncio.timeout``, abandons the result without marking the reader stuck.)

        Raises :class:`ReaderTimeout` (stalled card), :class:`NoCard`, :class:`CardCommandError`
        (not a campus card), :class:`~protocol.cardfile.layout.CardFileError` (bad record).
        """
        outcome = await self._run(reader, _read_job, "read card", watchdog)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.uid is not None
        assert outcome.record is not None
        return CardSnapshot(reader, outcome.uid, outcome.atr, outcome.record)

    async def write_type_group(
        self,
        reader: str,
        group: int,
        *,
        expect_serial: str | None = None,
        watchdog: float | None = None,
    ) -> CampusRecord:
        """Write the card's type group and verify it by reading the record back (MEAL-3, MEAL-4).

        MEAL-3 moves the card into group 1 "电子工作证" (:data:`TYPE_GROUP_MEAL_SUBSIDY`); MEAL-4
        moves it out again. With ``expect_serial`` the card on the reader must carry that serial,
        or nothing is written (:class:`CardMismatch`). Returns the record read back. ``watchdog``
        as in :meth:`read_card`; a timeout leaves the outcome unknown: read the card again.
        """
        value = encode_type_group(group)

        def job(session: _Session) -> CampusRecord:
            before = _read_record(session)
            if expect_serial is not None and before.serial != expect_serial:
                raise CardMismatch(expect_serial, before.serial)
            session.expect_ok(update_binary(TYPE_GROUP_OFFSET, value), "UPDATE BINARY")
            after = decode_record(
                session.expect_ok(read_binary(0, RECORD_LENGTH), "READ BINARY (verify)")
            )
            if after.type_group != group:
                raise WriteBackFailed(group, after.type_group)
            return after

        record = await self._run(reader, job, f"write type group {group}", watchdog)
        log.info("type group %d written to card %s on %r", group, mask(record.serial), reader)
        return record

    # -- running jobs under the watchdog ----------------------------------------------------------
    def _worker(self, reader: str) -> _ReaderWorker:
        with self._workers_lock:
            worker = self._workers.get(reader)
            if worker is None:
                worker = _ReaderWorker(reader, self._worker_recovered)
                self._workers[reader] = worker
            return worker

    async def _run(
        self, reader: str, fn: Callable[[_Session], T], operation: str, watchdog: float | None
    ) -> T:
        limit = self.timeout if watchdog is None else watchdog
        worker = self._worker(reader)
        if worker.stuck:
            raise ReaderTimeout(reader, operation, limit, already=True)
        future = asyncio.wrap_future(worker.submit(fn))
        try:
            done, _ = await asyncio.wait({future}, timeout=limit)
        except asyncio.CancelledError:
            future.cancel()
            raise
        if future in done:
            return future.result()
        future.cancel()  # still queued: never runs; running: its result is dropped
        if worker.mark_stuck():
            log.error("reader %r stuck: %s took longer than %.1f s", reader, operation, limit)
            self._emit(ReaderStuck(reader, operation))
        raise ReaderTimeout(reader, operation, limit)

    # -- event plumbing (loop side) ---------------------------------------------------------------
    def _emit(self, event: ReaderEvent) -> None:
        self.events.put_nowait(event)

    def _post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event loop (from any thread)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # loop closed: the bridge is being torn down
            log.debug("event dropped: loop closed")

    def _worker_recovered(self, reader: str) -> None:
        self._nudge()  # pcscd may have held back this reader's events while it was blocked
        self._post(lambda: self._emit(ReaderRecovered(reader)))

    def _nudge(self) -> None:
        """Make the monitor's pending ``SCardGetStatusChange`` return and re-read the states."""
        with self._monitor_lock:
            if self._monitor_context is not None:
                scard.SCardCancel(self._monitor_context)

    def _nudge_main(self) -> None:
        while not self._stop.wait(STATUS_REFRESH_S):
            self._nudge()

    def _on_change(self, change: _Change) -> None:
        changes = self._changes.get(change.reader)
        if changes is None:
            if change.kind != "attached":
                return
            changes = asyncio.Queue()
            self._changes[change.reader] = changes
            task = asyncio.create_task(
                self._reader_task(change.reader, changes), name=f"onecard-pcsc-{change.reader}"
            )
            self._tasks[change.reader] = task
            self._all_tasks.add(task)
            task.add_done_callback(self._all_tasks.discard)
        if change.kind == "detached":
            del self._changes[change.reader]
        changes.put_nowait(change)

    async def _reader_task(self, reader: str, changes: asyncio.Queue[_Change]) -> None:
        """Turn one reader's presence changes into events, in order."""
        try:
            while True:
                change = await changes.get()
                if change.kind == "attached":
                    self._emit(ReaderAttached(reader))
                elif change.kind == "inserted":
                    event = await self._inserted_event(reader)
                    if event is not None:
                        self._present[reader] = True
                        self._emit(event)
                elif change.kind == "removed":
                    # only removals of cards that were reported as inserted
                    if self._present.get(reader, False):
                        self._present[reader] = False
                        self._emit(CardRemoved(reader))
                else:
                    if self._present.pop(reader, False):
                        self._emit(CardRemoved(reader))
                    self._emit(ReaderDetached(reader))
                    return
        finally:
            if self._tasks.get(reader) is asyncio.current_task():
                del self._tasks[reader]

    async def _inserted_event(self, reader: str) -> CardInserted | None:
        """Read a card that just arrived; ``None`` if it was gone before it could be read.

        pcscd polls vpcd (and many readers) every 400 ms, so a card taken off quickly can still be
        announced as present; such a card is not reported at all (nor its removal).
        """
        try:
            outcome = await self._run(reader, _read_job, "read on insertion", None)
        except NoCard:
            log.info("card on %r left before it could be read", reader)
            return None
        except ReaderError as exc:
            log.warning("card on %r could not be read: %s", reader, exc)
            return CardInserted(reader, None, b"", None, exc)
        event = CardInserted(reader, outcome.uid, outcome.atr, outcome.record, outcome.error)
        log.info("%r", event)
        return event

    # -- monitor thread ---------------------------------------------------------------------------
    def _change(
        self, kind: Literal["attached", "inserted", "removed", "detached"], reader: str
    ) -> None:
        change = _Change(kind, reader)
        log.debug("presence change: %s %r", kind, reader)
        self._post(lambda: self._on_change(change))

    def _monitor_main(self) -> None:
        lost_reported = False
        while not self._stop.is_set():
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult != scard.SCARD_S_SUCCESS:
                if not lost_reported:
                    self._post_event(ServiceLost(_message(hresult)))
                    lost_reported = True
                    log.error("pcscd unavailable: %s; retrying", _message(hresult))
                self._stop.wait(self._reconnect_delay)
                continue
            with self._monitor_lock:
                self._monitor_context = context
            if lost_reported:
                self._post_event(ServiceRestored())
                log.warning("pcscd available again")
                lost_reported = False
            self.service_up.set()
            watched: dict[str, int] = {}
            try:
                self._watch(context, watched)
            except _ServiceGone as exc:
                # reported before the readers detach: the cause comes first in the event queue
                self._service_lost(str(exc))
                lost_reported = True
            finally:
                self.service_up.clear()
                with self._monitor_lock:
                    self._monitor_context = None
                with contextlib.suppress(Exception):
                    scard.SCardReleaseContext(context)
                for reader, state in watched.items():
                    if state & scard.SCARD_STATE_PRESENT:
                        self._change("removed", reader)
                    self._change("detached", reader)
            if lost_reported:
                self._stop.wait(self._reconnect_delay)

    def _service_lost(self, detail: str) -> None:
        log.error("pcscd went away: %s", detail)
        self._post_event(ServiceLost(detail))

    def _post_event(self, event: ReaderEvent) -> None:
        self._post(lambda: self._emit(event))

    def _list_readers(self, context: Any) -> list[str]:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if hresult in _SERVICE_GONE:
            raise _ServiceGone(hresult)
        if hresult != scard.SCARD_S_SUCCESS:
            log.warning("SCardListReaders failed: %s", _message(hresult))
            return []
        return [str(n) for n in names if self._only is None or n in self._only]

    def _sync_readers(self, context: Any, watched: dict[str, int]) -> None:
        current = self._list_readers(context)
        for reader in list(watched):
            if reader not in current:
                if watched[reader] & scard.SCARD_STATE_PRESENT:
                    self._change("removed", reader)
                self._change("detached", reader)
                del watched[reader]
        for reader in current:
            if reader not in watched:
                watched[reader] = scard.SCARD_STATE_UNAWARE
                self._change("attached", reader)

    def _watch(self, context: Any, watched: dict[str, int]) -> None:
        """Wait for state changes until stopped; raises :class:`_ServiceGone` if pcscd dies."""
        self._sync_readers(context, watched)
        pnp_state = scard.SCARD_STATE_UNAWARE
        while not self._stop.is_set():
            states = [(PNP_NOTIFICATION, pnp_state)]
            states += [(r, s & ~scard.SCARD_STATE_CHANGED) for r, s in watched.items()]
            hresult, new_states = scard.SCardGetStatusChange(context, STATUS_WAIT_MS, states)
            if hresult in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
                continue
            if hresult in _SERVICE_GONE:
                raise _ServiceGone(hresult)
            if hresult in _READER_GONE:
                self._sync_readers(context, watched)
                continue
            if hresult != scard.SCARD_S_SUCCESS:
                log.warning("SCardGetStatusChange failed: %s", _message(hresult))
                self._stop.wait(self._reconnect_delay)
                continue
            relist = False
            for name, event_state, _atr in new_states:
                if name == PNP_NOTIFICATION:
                    if event_state & scard.SCARD_STATE_CHANGED:
                        relist = True
                    pnp_state = event_state & ~scard.SCARD_STATE_CHANGED
                elif name in watched:
                    self._reader_state(name, watched[name], int(event_state))
                    watched[name] = int(event_state)
            if relist:
                self._sync_readers(context, watched)

    def _reader_state(self, reader: str, old: int, new: int) -> None:
        """Compare two ``dwEventState`` words; the high 16 bits count card events (pcsc-lite)."""
        log.debug("reader %r state %08X -> %08X", reader, old, new)
        was = bool(old & scard.SCARD_STATE_PRESENT)
        now = bool(new & scard.SCARD_STATE_PRESENT)
        if new & scard.SCARD_STATE_UNAVAILABLE:
            now = False
        missed = was and now and old != scard.SCARD_STATE_UNAWARE and (old >> 16) != (new >> 16)
        if was and (not now or missed):
            self._change("removed", reader)
        if now and (not was or missed):
            self._change("inserted", reader)
