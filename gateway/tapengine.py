"""SQLite tap decisions in a process of their own (issue 14, ``requests.engine = "process"``).

Measured on the 2-core benchmark machine: with the batching writer as a thread of the gateway,
the writer and the MQTT event loop together held the interpreter lock ~75 % of the time at
~8k decisions/s while the machine still had CPU to spare — the lock, not the CPU, was the
wall. Here the decisions run in a child process with its own interpreter: the same
:class:`~gateway.services.taps.TerminalService` on the same batching writer
(:class:`~storage.tapwriter.SqliteTapWriter`), fed whole batches over a socket pair.

- Parent (:class:`TapEngine`): sends ``(seq, give_up, [(terminal, op, payload, kind,
  deadline), ...])`` — each tap's raw request bytes, not decoded in the gateway — and awaits
  one answer per batch: each item's reply (:class:`~gateway.services.taps.Outcome`), error
  replies included. Frames are a
  4-byte length and a pickle (both ends are this program; nothing from a terminal is ever
  unpickled: payloads travel as bytes and are decoded by the child's wire codec).
- Child (``python -m gateway.tapengine FD``, settings as JSON on stdin): decodes, decides and
  commits exactly as the in-process writer does (durable before it answers), and reports
  whether its writer is failing (disk full, lock held) with every answer, for ``/readyz``.
- The child dies with the gateway (``PR_SET_PDEATHSIG``), and exits when the socket closes. The
  gateway starts it once it is ready itself (an interpreter and the registry take 1-2 s of CPU,
  which must not delay readiness) and decides taps with its writer thread until the engine
  answers, and again if the engine dies
  (the batches it held are answered ``unavailable``: retried with the same request id, they are
  decided once). ``/readyz`` says 503 while the engine's writer cannot commit.
- The gateway's in-memory deny set is not consulted here: on SQLite the writer re-reads every
  card row after any other connection committed (``PRAGMA data_version``, under the write
  lock), so the registry row it decides on is never older than the deny set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from gateway.config import Settings
from gateway.services.alerts import AlertRules
from gateway.services.base import Context, SystemClock
from gateway.services.offline import SettlementRules
from gateway.services.taps import Outcome, TerminalService
from protocol.errors import ErrorCode, OnecardError
from protocol.wire import TerminalConfig, TerminalKind, WireError, decode_request, encode_error
from storage.ports import TapExecutor

log = logging.getLogger("onecard.gateway")

_HEADER = struct.Struct("!I")
#: No batch answer comes near this (256 replies of at most a few KiB); a bigger length is a bug.
MAX_FRAME = 64 * 2**20
#: How long the child may take to open the registry and start its writer.
START_TIMEOUT_S = 60.0
_STOP = -1
_PR_SET_PDEATHSIG = 1

#: One tap for the engine: terminal id, op, the request's payload bytes, the terminal's kind
#: (as registered), its deadline on ``time.monotonic()`` (MQTT Message Expiry) if any.
TapItem = tuple[str, str, bytes, str | None, float | None]
Result = Outcome | BaseException


def terminal_config(settings: Settings) -> TerminalConfig:
    off = settings.offline
    return TerminalConfig(
        heartbeat_interval_s=off.heartbeat_interval_s,
        offline_max_age_s=settings.denylist.max_offline_age_s,
        offline_max_amount_fen=off.offline_max_amount_fen,
        offline_max_daily_fen=off.offline_max_daily_fen,
        offline_max_count=off.offline_max_count,
        request_ttl_ms=settings.requests.ttl_ms,
        clock_tolerance_ms=settings.requests.clock_tolerance_ms,
    )


def build_terminal_service(
    settings: Settings,
    ctx: Context,
    executor: TapExecutor,
    deny_lookup: Callable[[str], ErrorCode | None],
) -> TerminalService:
    """The tap service as the gateway configures it (in process or in the engine)."""
    config = terminal_config(settings)
    off = settings.offline
    settlement = SettlementRules.from_config(
        config,
        clock_tolerance_s=off.settle_clock_tolerance_s,
        max_sale_age_s=off.settle_max_age_s,
    )
    alerts = AlertRules(
        low_balance_fen=settings.alerts.low_balance_fen,
        presented_window=timedelta(seconds=settings.alerts.presented_window_s),
    )
    return TerminalService(ctx, config, executor, deny_lookup, settlement=settlement, alerts=alerts)


def _frame(value: Any) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        msg = f"tap engine frame of {size} bytes"
        raise ConnectionError(msg)
    return pickle.loads(await reader.readexactly(size))  # noqa: S301 - our own child/parent


def _encode(result: Result) -> tuple[Any, ...]:
    if isinstance(result, Outcome):
        return (0, result.payload, result.ok, result.code, result.replayed, result.denylist_version)
    if isinstance(result, OnecardError):
        return (1, result.code.value, result.message_zh, result.message_en, result.rule)
    return (2, f"{type(result).__name__}: {result}")


def _decode(raw: tuple[Any, ...]) -> Result:
    if raw[0] == 0:
        _, payload, ok, code, replayed, version = raw
        return Outcome(payload, ok=ok, code=code, replayed=replayed, denylist_version=version)
    if raw[0] == 1:
        _, code, zh, en, rule = raw
        return OnecardError(zh, en, code=ErrorCode(code), rule=rule)
    return RuntimeError(f"tap engine: {raw[1]}")


def _answer(op: str, request_id: str, result: Result) -> Outcome:
    """The reply for one decided tap, as the gateway's router builds it from a result."""
    if isinstance(result, Outcome):
        return result
    if not isinstance(result, OnecardError):
        log.error("handling %s failed", op, exc_info=result)
        result = OnecardError(code=ErrorCode.INTERNAL)
    return Outcome(encode_error(request_id, result), ok=False, code=result.code.value)


def _stopped(detail: str) -> OnecardError:
    return OnecardError(
        "交易处理进程已停止", f"tap engine stopped: {detail}", code=ErrorCode.UNAVAILABLE
    )


class TapEngine:
    """The parent's handle on the decision process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.failure: str | None = None
        #: ``time.monotonic()`` since the child's writer has been failing, None while it commits
        self.failing_since: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[list[tuple[Any, ...]]]] = {}
        self._seq = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self.failure is None

    async def start(self) -> None:
        parent, child = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.tapengine",
                str(child.fileno()),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(child.fileno(),),
            )
        finally:
            child.close()
        assert self._proc.stdin is not None
        self._proc.stdin.write(self.settings.model_dump_json().encode())
        await self._proc.stdin.drain()
        self._proc.stdin.close()
        reader, self._writer = await asyncio.open_connection(sock=parent)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await _read_frame(reader)
        except BaseException:
            await self.close()
            raise
        if ready != (_STOP, False, "ready"):
            await self.close()
            raise _stopped(f"unexpected greeting {ready!r}")
        self._reader_task = asyncio.create_task(self._read_loop(reader), name="tap-engine")

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                seq, failing, results = await _read_frame(reader)
                if not failing:
                    self.failing_since = None
                elif self.failing_since is None:
                    self.failing_since = time.monotonic()
                future = self._waiting.pop(seq, None)
                if future is not None and not future.done():
                    future.set_result(results)
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            self._fail("closed")
            raise

    def _fail(self, detail: str) -> None:
        if self.failure is None:
            self.failure = detail
            log.error("the tap engine stopped (%s): the gateway decides taps itself", detail)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(_stopped(detail))
        self._waiting.clear()

    async def decide_many(self, items: list[TapItem], *, give_up: float) -> list[Result]:
        """Each tap's outcome (or error), durable before this returns. Past ``give_up``
        (``time.monotonic()``) the child runs none of them: ``unavailable``."""
        if not self.alive or self._writer is None:
            raise _stopped(self.failure or "not running")
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[list[tuple[Any, ...]]] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        try:
            self._writer.write(_frame((seq, give_up, items)))
            raw = await future
        finally:
            self._waiting.pop(seq, None)
        return [_decode(r) for r in raw]

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(_frame((_STOP, 0.0, [])))
                await self._writer.drain()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._fail("closed")


# ----------------------------------------------------------------------------- the child


def _die_with_parent() -> None:
    """SIGKILL this process when the gateway dies (kill -9 included): no orphan keeps the
    registry's write lock or decides taps nobody will answer."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)


async def _serve(settings: Settings, fd: int) -> None:
    # imported here: the parent never needs the registry code of the child
    from storage.engine import database_url
    from storage.sql import SqlRegistry
    from storage.tapwriter import SqliteTapWriter

    url = database_url(settings.db)
    path = url.split(":///", 1)[1]
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    registry = await SqlRegistry.open(settings.db, migrate=False)
    executor = SqliteTapWriter(path, lock_wait_s=settings.requests.lock_wait_ms / 1000)
    executor.start()
    service = build_terminal_service(
        settings, Context(registry=registry, clock=SystemClock()), executor, lambda _uid: None
    )
    tasks: set[asyncio.Task[None]] = set()

    async def decide(seq: int, give_up: float, items: list[TapItem]) -> None:
        # every item is answered with the reply to publish, as the gateway would build it
        results: list[tuple[Any, ...] | None] = [None] * len(items)
        requests = []
        where = []
        for index, (tid, op, payload, kind, deadline) in enumerate(items):
            try:
                request = decode_request(op, payload, kind=TerminalKind(kind) if kind else None)
            except WireError as exc:
                refused = Outcome(encode_error(exc.request_id, exc), ok=False, code=exc.code.value)
                results[index] = _encode(refused)
                continue
            requests.append((tid, op, request, deadline))
            where.append(index)
        if requests:
            outcomes: list[Result]
            try:
                outcomes = list(await service.handle_many(requests, give_up=give_up))
            except Exception as exc:  # noqa: BLE001 - every tap of the batch gets this answer
                outcomes = [exc] * len(requests)
            for index, item, outcome in zip(where, requests, outcomes, strict=True):
                results[index] = _encode(_answer(item[1], item[2].request_id, outcome))
        failing = executor.failing_since is not None or not executor.alive
        writer.write(_frame((seq, failing, results)))

    writer.write(_frame((_STOP, False, "ready")))
    try:
        while True:
            try:
                seq, give_up, items = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the gateway is gone
            if seq == _STOP:
                break
            task = asyncio.create_task(decide(seq, give_up, items))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        with contextlib.suppress(Exception):
            await writer.drain()
        await executor.close()
        await registry.close()
        writer.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    from gateway.logs import setup_logging

    setup_logging(settings.log_level)
    # the gateway stops us through the socket once its last batch is answered (a Ctrl-C or a
    # supervisor's SIGTERM to the whole process group must not cut a batch short)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    coroutine = _serve(settings, int(args[0]))
    if settings.event_loop == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.run(coroutine)
            return 0
    asyncio.run(coroutine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
