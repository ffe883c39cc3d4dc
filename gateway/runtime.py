"""The gateway process: MQTT intake, the router boundary, deny-list distribution, scheduler,
metrics — named tasks in one TaskGroup with a graceful shutdown (ARCHITECTURE.md §7).

Shutdown order on SIGTERM: stop intake, drain in-flight handlers (with a timeout), cancel the
rest, publish the retained ``offline`` gateway status, disconnect, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import Settings
from gateway.denylist import DenyState, Fleet
from gateway.http import OpsServer
from gateway.leader import Leadership, SoleLeader
from gateway.metrics import Metrics
from gateway.mqtt.client import (
    Inbound,
    LastWill,
    MqttError,
    MqttSession,
    MqttSettings,
    Session,
    SessionFactory,
)
from gateway.retention import RetentionIO, RetentionJob
from gateway.services.base import SYSTEM, Context
from gateway.services.cards import CardService
from gateway.services.taps import Outcome
from gateway.tapengine import TapEngine, build_terminal_service, terminal_config
from protocol.errors import ErrorCode, OnecardError, registry_busy
from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    OPERATIONS,
    REQUEST_FILTER,
    TERMINAL_STATUS_FILTER,
    GatewayStatus,
    HeartbeatRequest,
    HelloRequest,
    Presence,
    ReportLossResponse,
    Request,
    TerminalKind,
    TerminalStatus,
    TopicKind,
    WireError,
    decode_request,
    encode_error,
    encode_reply,
    parse_topic,
    peek_request_id,
    response_topic,
    shared_subscription,
)
from storage.ports import Registry, TapExecutor, TapTx

log = logging.getLogger("onecard.gateway")

#: Kiosk self-service ops that do not run on the batching writer (scrypt, lifecycle events).
ASYNC_OPS = frozenset({"login", "report_loss", "change_password"})
#: Decoded in the gateway even with the tap engine: their replies update the fleet view.
_FLEET_OPS = frozenset({"hello", "heartbeat"})
#: What a Response Topic may hold after ``onecard/v1/t/{id}/resp/``: no wildcard (Mosquitto
#: disconnects a client that publishes to ``+`` or ``#``), no NUL, bounded length (item 2).
_REPLY_SUFFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}(?:/[A-Za-z0-9_.:-]{1,64}){0,3}")
#: How long the deny-list watcher waits for the writer before trying again.
_DENY_READ_TIMEOUT_S = 5.0
#: A batch older than this in the router makes ``/readyz`` answer 503 (a wedged gateway).
_STALL_S = 10.0


@dataclass(slots=True)
class _Pending:
    tid: str
    op: str
    reply_to: str
    correlation: bytes | None
    received: float
    deadline: float | None = None
    kind: str | None = None
    request: Request[Any] | None = None
    outcome: Outcome | None = None
    payload: bytes = b""  # as received: what the tap engine decodes (engine_tap)
    engine_tap: bool = False


class ChangeListener(Protocol):
    """Calls ``on_change(table)`` when another process commits a change (storage/listen.py)."""

    async def run(self, stop: asyncio.Event, on_change: Callable[[str], None]) -> None: ...


class Gateway:
    def __init__(
        self,
        settings: Settings,
        ctx: Context,
        *,
        executor: TapExecutor,
        metrics: Metrics | None = None,
        session_factory: SessionFactory | None = None,
        leader: Leadership | None = None,
        listener: ChangeListener | None = None,
        retention_io: RetentionIO | None = None,
        engine: TapEngine | None = None,
    ) -> None:
        self.executor = executor
        #: PostgreSQL: the counter's commits wake the deny-list watch at once (LISTEN/NOTIFY);
        #: the poll stays as the fallback
        self.listener = listener
        #: Who publishes the deny list and runs the scheduler (several gateways: issue 12).
        self.leader = leader or SoleLeader()
        self.instance = settings.instance_id
        self.session_factory: SessionFactory = session_factory or (
            lambda s, will: MqttSession(s, will=will)
        )
        self.settings = settings
        self.ctx = ctx
        self.registry: Registry = ctx.registry
        self.metrics = metrics or Metrics()
        #: issue 15: the daily retention plan (purge only with [privacy] enabled), the leader's
        self.retention = RetentionJob(ctx, settings.privacy, io=retention_io, metrics=self.metrics)
        self.terminal_config = terminal_config(settings)
        self.deny = DenyState()
        self.service = build_terminal_service(settings, ctx, executor, self.deny.refusal)
        #: SQLite taps decided in a process of their own (gateway/tapengine.py), if given
        self.engine = engine
        self.cards = CardService(ctx)
        self.fleet = Fleet()
        self.kinds: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.ready = False
        #: set once the gateway first became ready: the tap engine starts after it
        self._first_ready = asyncio.Event()
        self.session: Session | None = None
        self._deny_wakeup = asyncio.Event()
        self._fleet_changed = asyncio.Event()
        self._published = asyncio.Condition()
        self._published_version = -1
        self._snapshot_at = 0.0
        #: when the retained delta got its first change (compaction clock, contract 1.1 §8.2)
        self._delta_since: float | None = None
        self._in_flight: dict[asyncio.Task[None], float] = {}
        self._in_flight_items = 0
        self._capacity = asyncio.Event()
        self._pending: list[tuple[Inbound, float]] = []
        self._flush_scheduled = False
        self._decision_children: dict[tuple[str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self.http: OpsServer | None = None

    # --- life cycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        await self._load()
        # long-lived start-up objects (schema, registry, deny set) leave the GC's young
        # generations: full collections stay short on the tap path
        gc.collect()
        gc.freeze()
        self.http = OpsServer(
            self.settings.http.host,
            self.settings.http.port,
            self.metrics.render,
            self.is_ready,
        )
        port = await self.http.start()
        log.info("ops endpoint on %s:%d", self.settings.http.host, port)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mqtt_loop(), name="mqtt")
                tg.create_task(self._deny_watch(), name="denylist")
                tg.create_task(self._scheduler(), name="scheduler")
                tg.create_task(self._gauges(), name="gauges")
                tg.create_task(self.leader.run(self.stop), name="leader")
                tg.create_task(self._leadership(), name="leadership")
                if self.engine is not None and not self.engine.started:
                    tg.create_task(self._start_engine(), name="tap-engine-start")
                if self.listener is not None:
                    tg.create_task(
                        self.listener.run(self.stop, self._registry_changed), name="listen"
                    )
        finally:
            await self.http.close()

    async def _start_engine(self) -> None:
        """Start the tap engine once the gateway is ready (its start-up, an interpreter and the
        registry, ~1-2 s of CPU, must not delay readiness on two cores); until it answers, and
        if it ever dies, the writer thread decides."""
        assert self.engine is not None
        await self._first_ready.wait()
        try:
            await self.engine.start()
        except Exception:
            log.exception("the tap engine did not start: taps are decided in the gateway")
        else:
            log.info("tap engine running (pid %s)", self.engine.pid)

    def _engine(self) -> TapEngine | None:
        """The tap engine while it decides, else None (the writer thread decides)."""
        engine = self.engine
        return engine if engine is not None and engine.alive else None

    def is_ready(self) -> bool:
        """``/readyz``: connected to the broker, the registry writer alive and able to commit
        (not failing on a full disk or a held lock), and no batch stuck in the router (a wedged
        gateway must not look healthy to its supervisor)."""
        if not self.ready:
            return False
        if not getattr(self.executor, "alive", True):
            return False
        if getattr(self.executor, "failing_since", None) is not None:
            return False  # the registry refuses writes (disk full, lock held): taps are refused
        engine = self._engine()
        if engine is not None and engine.failing_since is not None:
            return False  # the decision process's writer cannot commit (disk full, lock held)
        now = time.monotonic()
        busy_since = getattr(self.executor, "busy_since", None)
        if busy_since is not None and now - busy_since > _STALL_S:
            return False
        return not any(now - started > _STALL_S for started in self._in_flight.values())

    async def _load(self) -> None:
        self.deny.load_rows(
            await self.executor.read(functools.partial(_deny_changes_after, version=0, limit=None))
        )
        async with self.registry.read() as tx:
            for row in await tx.find("terminals"):
                self.kinds[row["id"]] = row["kind"]
                self.fleet.seen(row["id"], row["kind"], int(row["denylist_version"]), online=False)
        self.metrics.denylist_version.set(self.deny.version)
        self.metrics.denylist_size.set(len(self.deny.codes))

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True if asked to stop meanwhile.

        ``asyncio.timeout``, not ``wait_for``: Python 3.11's ``wait_for`` can swallow a
        cancellation that arrives as its timeout fires, and a TaskGroup cancels each child once —
        a loop that lost it ran on and the gateway never ended after a task crashed (seen in a
        full test run: test_a_crashed_task_leaves_the_status_offline hung)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()
        return self.stop.is_set()

    # --- MQTT -----------------------------------------------------------------------------------
    def _mqtt_settings(self) -> MqttSettings:
        m = self.settings.mqtt
        return MqttSettings(
            host=m.host,
            port=m.port,
            username=m.username,
            password=m.password,
            client_id=m.client_id,
            keepalive=m.keepalive_s,
            # several gateways: no session kept for a dead member, or Mosquitto goes on dealing
            # it its round-robin share of the requests (queued for an hour) after a kill -9
            **({"session_expiry_s": 0} if m.shared_group else {}),
        )

    async def _mqtt_loop(self) -> None:
        backoff = 0.2
        offline = GatewayStatus(state=Presence.OFFLINE).model_dump_json().encode()
        first = True
        while not self.stop.is_set():
            try:
                async with self.session_factory(
                    self._mqtt_settings(), LastWill(GATEWAY_STATUS_TOPIC, offline)
                ) as session:
                    if not first:
                        self.metrics.mqtt_reconnects.inc()
                    first = False
                    self.session = session
                    self.metrics.mqtt_connected.set(1)
                    backoff = 0.2
                    try:
                        await self._on_connect(session)
                        await self._consume(session)
                        await self._drain()
                    finally:
                        # also when another task crashed and the TaskGroup cancels us: the
                        # retained status must not keep saying `online` (item 12)
                        self.ready = False
                        await self._say_offline(session, offline)
                    return
            except MqttError as exc:
                self.ready = False
                self.session = None
                self.metrics.mqtt_connected.set(0)
                delay = backoff * (0.5 + random.random())
                log.warning("broker connection lost (%s); reconnecting in %.1fs", exc, delay)
                backoff = min(backoff * 2, 5.0)
                if await self._sleep_or_stop(delay):
                    return
            finally:
                self.session = None
                self.metrics.mqtt_connected.set(0)

    async def _say_offline(self, session: Session, offline: bytes) -> None:
        task = asyncio.ensure_future(self._publish_offline(session, offline))
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
        except (MqttError, TimeoutError, asyncio.CancelledError):
            log.warning("could not publish the offline gateway status")

    async def _publish_offline(self, session: Session, offline: bytes) -> None:
        if self.settings.mqtt.shared_group:
            topic = instance_status_topic(self.instance)
            await session.publish(topic, self._instance_status("offline"), retain=True)
        await session.publish(GATEWAY_STATUS_TOPIC, offline, retain=True)

    async def _on_connect(self, session: Session) -> None:
        group = self.settings.mqtt.shared_group
        requests = shared_subscription(REQUEST_FILTER, group) if group else REQUEST_FILTER
        topics = [requests, TERMINAL_STATUS_FILTER]
        if group:
            # several gateways (issue 12): hear the leader's deny-list publications (a
            # follower's kiosk loss report waits for them) and the peers' last wills
            topics += [GATEWAY_STATUS_TOPIC, DENYLIST_SNAPSHOT_TOPIC, DENYLIST_DELTA_TOPIC]
        await session.subscribe(topics)
        if self.leader.is_leader:
            # the snapshot first, then the retained `online` status naming its version
            await self._publish_snapshot(session)
        # a follower names no version before it heard the leader's: its own status only
        await self._say_online(session, shared=False)
        self.ready = True
        self._first_ready.set()
        log.info("connected to the broker; deny list version %d", self.deny.version)

    async def _consume(self, session: Session) -> None:
        """Read until asked to stop; each request is handled in its own task (a reply is never
        awaited inside the read loop: FIELD-NOTES)."""
        reader = asyncio.create_task(self._read(session), name="mqtt-read")
        stopper = asyncio.create_task(self.stop.wait(), name="stop-wait")
        try:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when we are cancelled: no task left behind
            for task in (reader, stopper):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, MqttError):
                        await task
        if reader in done:
            reader.result()  # re-raise a connection error for the reconnect loop

    async def _read(self, session: Session) -> None:
        """Collect what arrives in one loop turn into a batch; each batch is one task and, for
        taps, one job list for the batching writer (one wake-up for many decisions)."""
        loop = asyncio.get_running_loop()
        async for batch in session.batches():
            received = time.perf_counter()
            self._pending.extend((message, received) for message in batch)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush, session)
            while self._in_flight_items >= self.settings.max_in_flight:
                self._capacity.clear()
                await self._capacity.wait()

    def _flush(self, session: Session) -> None:
        self._flush_scheduled = False
        items, self._pending = self._pending, []
        if not items:
            return
        self._in_flight_items += len(items)
        task = asyncio.create_task(self._guarded(self._route(session, items)))
        self._in_flight[task] = time.monotonic()
        task.add_done_callback(functools.partial(self._done, count=len(items)))

    def _done(self, task: asyncio.Task[None], count: int) -> None:
        self._in_flight.pop(task, None)
        self._in_flight_items -= count
        self._capacity.set()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except MqttError:
            self.metrics.dropped.labels(reason="publish_failed").inc()
        except asyncio.CancelledError:
            raise
        except Exception:  # the one boundary: log, count, keep serving (ARCHITECTURE §7)
            log.exception("request handling failed")
            self.metrics.errors.labels(code=ErrorCode.INTERNAL.value).inc()

    # --- the router -----------------------------------------------------------------------------
    async def _route(self, session: Session, items: list[tuple[Inbound, float]]) -> None:
        """Parse and decode a batch; taps go to the writer together, kiosk self-service ops
        (scrypt, lifecycle events) run on their own; then every reply is published."""
        taps: list[_Pending] = []
        replies: list[tuple[_Pending, Outcome]] = []
        others: list[Awaitable[None]] = []
        for message, received in items:
            # one error boundary per message, not per batch (item 6)
            try:
                pending = await self._prepare(message, received)
            except Exception:  # a message that breaks the parser is answered or dropped alone
                log.exception("preparing a request failed")
                self.metrics.dropped.labels(reason="unparseable").inc()
                continue
            if pending is None:
                continue
            if pending.outcome is not None:
                replies.append((pending, pending.outcome))
            elif pending.engine_tap:
                taps.append(pending)
            elif pending.request is None:
                continue
            elif pending.op in ASYNC_OPS:
                others.append(self._guarded(self._one(session, pending)))
            else:
                taps.append(pending)
        if taps:
            results = await self._decide_all(taps)
            for pending, result in zip(taps, results, strict=True):
                replies.append((pending, self._outcome(pending, result)))
        if replies:
            await self._publish_all(session, replies)
        if others:
            await asyncio.gather(*others)

    async def _decide_all(self, taps: list[_Pending]) -> list[Outcome | BaseException]:
        """The writer's decisions, or ``unavailable`` for every tap of the batch when the writer
        cannot decide in time (write lock held by the counter, disk full, writer stopped)."""
        timeout = self.settings.requests.writer_timeout_ms / 1000
        # The writer itself answers `unavailable` for jobs it reaches after `give_up` (checked
        # with the write lock held, so nothing answered `unavailable` is ever committed); the
        # wait below is only a safety net for a writer that hangs (then /readyz says 503).
        give_up = time.monotonic() + timeout
        engine = self._engine()
        refused: dict[int, Outcome] = {}
        decided: Awaitable[list[Outcome | BaseException]]
        if engine is not None:
            items = [(p.tid, p.op, p.payload, p.kind, p.deadline) for p in taps]
            decided = engine.decide_many(items, give_up=give_up)
        else:
            refused = self._decode_here(taps)  # left undecoded for an engine that has died since
            batch = [
                (p.tid, p.op, p.request, p.deadline)
                for i, p in enumerate(taps)
                if i not in refused and p.request is not None
            ]
            decided = self.service.handle_many(batch, give_up=give_up)
        results: list[Outcome | BaseException]
        try:
            results = list(await asyncio.wait_for(decided, timeout=timeout + _STALL_S))
        except TimeoutError:
            log.warning("registry writer did not decide %d requests in %.1fs", len(taps), timeout)
            self.metrics.dropped.labels(reason="writer_timeout").inc(len(taps) - len(refused))
            results = [registry_busy()] * (len(taps) - len(refused))
        except OnecardError as exc:
            results = [exc] * (len(taps) - len(refused))
        except Exception as exc:  # noqa: BLE001 - answered `internal` per request by _outcome
            results = [exc] * (len(taps) - len(refused))
        if not refused:
            return results
        decided_results = iter(results)
        return [refused[i] if i in refused else next(decided_results) for i in range(len(taps))]

    def _decode_here(self, taps: list[_Pending]) -> dict[int, Outcome]:
        """Decode the taps prepared for the tap engine; the malformed ones' replies by index."""
        refused: dict[int, Outcome] = {}
        for index, pending in enumerate(taps):
            if pending.request is not None:
                continue
            kind = TerminalKind(pending.kind) if pending.kind else None
            try:
                pending.request = decode_request(pending.op, pending.payload, kind=kind)
            except WireError as exc:
                error = encode_error(exc.request_id, exc)
                refused[index] = Outcome(error, ok=False, code=exc.code.value)
        return refused

    async def _prepare(self, message: Inbound, received: float) -> _Pending | None:
        try:
            topic = parse_topic(message.topic)
        except WireError:
            self.metrics.dropped.labels(reason="bad_topic").inc()
            return None
        if topic.kind is TopicKind.TERMINAL_STATUS and topic.terminal_id is not None:
            self._on_status(topic.terminal_id, message.payload)
            return None
        if topic.kind in _PEER_TOPICS:
            await self._on_peer(topic.kind, message.payload)
            return None
        if topic.kind is not TopicKind.REQUEST or topic.op is None or topic.terminal_id is None:
            self.metrics.dropped.labels(reason="unexpected_topic").inc()
            return None
        if message.retain:
            # a retained request would be answered again after every restart (item 13)
            self.metrics.dropped.labels(reason="retained_request").inc()
            return None
        tid, op = topic.terminal_id, topic.op
        reply_to = _reply_topic(tid, op, message.response_topic)
        pending = _Pending(tid, op, reply_to, message.correlation_data, received)
        pending.payload = message.payload
        if message.expiry_s is not None:
            pending.deadline = time.monotonic() + message.expiry_s
        kind_name = self.kinds.get(tid)
        if kind_name is None:
            await self._refresh_kinds()
            kind_name = self.kinds.get(tid)
        pending.kind = kind_name
        if self._engine() is not None and op not in ASYNC_OPS and op not in _FLEET_OPS:
            # the tap engine decodes it (and answers a malformed one): not twice per tap
            pending.engine_tap = True
            return pending
        try:
            pending.request = decode_request(
                op, message.payload, kind=TerminalKind(kind_name) if kind_name else None
            )
        except WireError as exc:
            pending.outcome = Outcome(
                encode_error(exc.request_id, exc), ok=False, code=exc.code.value
            )
        return pending

    def _outcome(self, pending: _Pending, result: Outcome | BaseException) -> Outcome:
        request = pending.request
        if request is None:  # decided by the tap engine: its replies are complete
            if isinstance(result, Outcome):
                return result
            if not isinstance(result, OnecardError):
                log.error("handling %s failed", pending.op, exc_info=result)
                result = OnecardError(code=ErrorCode.INTERNAL)
            rid = peek_request_id(pending.payload)
            return Outcome(encode_error(rid, result), ok=False, code=result.code.value)
        if isinstance(result, Outcome):
            if result.ok and isinstance(request.data, HelloRequest | HeartbeatRequest):
                held = min(request.data.denylist_version, self.deny.version)
                self.fleet.seen(pending.tid, pending.kind or "", held, online=True)
                self._fleet_changed.set()
            return result
        if isinstance(result, OnecardError):
            return Outcome(
                encode_error(request.request_id, result), ok=False, code=result.code.value
            )
        log.error("handling %s failed", pending.op, exc_info=result)
        error = OnecardError(code=ErrorCode.INTERNAL)
        return Outcome(encode_error(request.request_id, error), ok=False, code=error.code.value)

    async def _one(self, session: Session, pending: _Pending) -> None:
        """A kiosk self-service request (login, loss report, password change)."""
        assert pending.request is not None
        try:
            outcome = await asyncio.wait_for(
                self.service.handle(pending.tid, pending.op, pending.request, pending.deadline),
                timeout=self.settings.requests.writer_timeout_ms / 1000 * 2,
            )
        except TimeoutError:
            outcome = self._outcome(pending, registry_busy())
        except Exception as exc:  # noqa: BLE001 - turned into a reply by _outcome
            outcome = self._outcome(pending, exc)
        if outcome.denylist_version is not None:
            outcome = await self._with_applied_count(pending.op, outcome)
        await self._publish_all(session, [(pending, outcome)])

    async def _publish_all(self, session: Session, replies: list[tuple[_Pending, Outcome]]) -> None:
        """Publish every reply in one hand-over; one failed publish loses only its own reply
        (counted)."""
        try:
            sent = await session.publish_many(
                [(p.reply_to, o.payload, p.correlation) for p, o in replies]
            )
        except MqttError as exc:
            sent = [exc] * len(replies)
        now = time.perf_counter()
        for (pending, outcome), failure in zip(replies, sent, strict=True):
            if failure is not None:
                self.metrics.dropped.labels(reason="publish_failed").inc()
                continue
            self._count(pending.op, outcome, now - pending.received)

    def _count(self, op: str, outcome: Outcome, seconds: float) -> None:
        # label values are bounded: an op name comes from a terminal's topic (item 8)
        op = op if op in OPERATIONS else "unknown"
        key = (op, outcome.code)
        counter = self._decision_children.get(key)
        if counter is None:
            counter = self._decision_children[key] = self.metrics.decisions.labels(
                op=op, result=outcome.code
            )
        counter.inc()
        histogram = self._latency_children.get(op)
        if histogram is None:
            histogram = self._latency_children[op] = self.metrics.decision_seconds.labels(op=op)
        histogram.observe(seconds)
        if not outcome.ok:
            self.metrics.errors.labels(code=outcome.code).inc()
        if outcome.replayed:
            self.metrics.replays.inc()

    async def _refresh_kinds(self) -> None:
        async with self.registry.read() as tx:
            for row in await tx.find("terminals"):
                self.kinds[row["id"]] = row["kind"]

    def _on_status(self, tid: str, payload: bytes) -> None:
        try:
            status = TerminalStatus.model_validate_json(payload)
        except ValueError:
            self.metrics.dropped.labels(reason="bad_status").inc()
            return
        kind = self.kinds.get(tid) or (status.kind.value if status.kind else "unknown")
        self.fleet.seen(tid, kind, online=status.state is Presence.ONLINE)
        self._fleet_changed.set()

    async def _with_applied_count(self, op: str, outcome: Outcome) -> Outcome:
        """A kiosk loss report: publish the change now, then tell the kiosk how many online
        terminals already applied it (waiting at most ``applied_wait_ms``)."""
        version = outcome.denylist_version
        assert version is not None
        self._deny_wakeup.set()
        deadline = time.monotonic() + self.settings.denylist.applied_wait_ms / 1000
        async with self._published:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._published.wait_for(lambda: self._published_version >= version),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
        online = self.fleet.online_count()
        while self.fleet.applied(version) < online:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._fleet_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fleet_changed.wait(), timeout=remaining)
        request_id = _request_id(outcome.payload)
        data = ReportLossResponse(
            denylist_version=version, terminals_applied=self.fleet.applied(version)
        )
        return Outcome(
            encode_reply(op, request_id, data), ok=True, code=outcome.code, denylist_version=version
        )

    # --- deny list distribution -------------------------------------------------------------------
    def _registry_changed(self, table: str) -> None:
        """A NOTIFY from another process's commit (or "" after (re)connecting): a card's state
        may have changed, so read the deny-list log now."""
        if table in ("", "cards"):
            self._deny_wakeup.set()

    async def _deny_watch(self) -> None:
        interval = self.settings.denylist.poll_interval_ms / 1000
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: see _sleep_or_stop
                async with asyncio.timeout(interval):
                    await self._deny_wakeup.wait()
            self._deny_wakeup.clear()
            read = self.executor.read(  # never takes the write lock from the tap engine
                functools.partial(_deny_changes_after, version=self.deny.version)
            )
            try:
                async with asyncio.timeout(_DENY_READ_TIMEOUT_S):
                    rows = await read
            except (TimeoutError, OnecardError) as exc:
                # the writer is busy or stopped: try again later; never end the gateway on it
                log.warning("reading the deny-list log failed (%s); retrying", exc)
                self.metrics.dropped.labels(reason="denylist_read_failed").inc()
                continue
            changes = self.deny.apply_rows(rows)
            session = self.session
            if not self.leader.is_leader:
                session = None  # the leader publishes; this instance only enforces (issue 12)
                # keep no delta of its own, and make its first publication, should it lead one
                # day, a snapshot (a delta from here would not start at any published version)
                self.deny.pending.clear()
                self.deny.snapshot_version = self.deny.version
                self.deny.needs_snapshot = True
            compact = (
                self._delta_since is not None
                and time.monotonic() - self._delta_since > self.settings.denylist.snapshot_max_age_s
            )
            if (changes or self.deny.needs_snapshot or compact) and session is not None:
                try:
                    await self._publish_changes(session, compact=compact and not changes)
                except MqttError:
                    self.metrics.dropped.labels(reason="denylist_publish_failed").inc()
            self.metrics.denylist_version.set(self.deny.version)
            self.metrics.denylist_size.set(len(self.deny.codes))

    async def _publish_changes(self, session: Session, *, compact: bool = False) -> None:
        """Contract 1.1 §8.2: every change goes out as a delta first. A snapshot replaces the
        delta only when the log has a hole a delta cannot express (``needs_snapshot``), when the
        delta would carry ``snapshot_every_changes`` changes, or as compaction once the delta is
        ``snapshot_max_age_s`` old (then at the delta's own version: nothing new for terminals)."""
        cfg = self.settings.denylist
        full = self.deny.needs_snapshot or len(self.deny.pending) >= cfg.snapshot_every_changes
        if full or compact:
            await self._publish_snapshot(session)
            return
        delta = self.deny.cumulative_delta()
        if delta is not None:
            await session.publish(
                DENYLIST_DELTA_TOPIC, delta.model_dump_json().encode(), retain=True
            )
            if self._delta_since is None:
                self._delta_since = time.monotonic()
        await self._mark_published(session, self.deny.version)

    async def _publish_snapshot(self, session: Session) -> None:
        snapshot = self.deny.snapshot(int(self.ctx.clock.now().timestamp() * 1000))
        await session.publish(
            DENYLIST_SNAPSHOT_TOPIC, snapshot.model_dump_json().encode(), retain=True
        )
        # an empty retained payload clears the old cumulative delta
        await session.publish(DENYLIST_DELTA_TOPIC, b"", retain=True)
        self._snapshot_at = time.monotonic()
        self._delta_since = None
        await self._mark_published(session, snapshot.version)

    async def _mark_published(self, session: Session, version: int) -> None:
        # the retained gateway status names the newest version published (contract 1.1 §8)
        online = GatewayStatus(state=Presence.ONLINE, denylist_version=version)
        await session.publish(GATEWAY_STATUS_TOPIC, online.model_dump_json().encode(), retain=True)
        async with self._published:
            self._published_version = version
            self._published.notify_all()

    # --- time rules and gauges --------------------------------------------------------------------
    async def _scheduler(self) -> None:
        while not await self._sleep_or_stop(self.settings.scheduler_interval_s):
            if not self.leader.is_leader:
                continue  # one scheduler per registry: the leader's (issue 12)
            await self.retention.maybe_run()  # daily; logs its own failures
            try:
                changed = await self.cards.run_due(SYSTEM)
            except OnecardError as exc:  # the registry is busy: the next round applies them
                log.warning("scheduler round failed (%s); retrying next round", exc)
                continue
            if changed:
                log.info("scheduler applied %d due card changes", len(changed))
                self._deny_wakeup.set()

    async def _gauges(self) -> None:
        while not await self._sleep_or_stop(1.0):
            self.update_gauges()

    # --- several gateways (issue 12) ----------------------------------------------------------
    async def _leadership(self) -> None:
        """On becoming the leader: publish a full snapshot at once (whatever the previous leader
        had not published yet is in it), then deltas as usual; status and metrics follow."""
        self.metrics.instance.labels(instance=self.instance).set(1)
        while not self.stop.is_set():
            self.metrics.leader.labels(instance=self.instance).set(int(self.leader.is_leader))
            session = self.session
            if session is not None and self.ready:
                try:
                    if self.leader.is_leader:
                        await self._publish_snapshot(session)
                    await self._say_online(session, shared=False)
                except MqttError:
                    self.metrics.dropped.labels(reason="denylist_publish_failed").inc()
            waiter = asyncio.ensure_future(self.leader.changed.wait())
            stopper = asyncio.ensure_future(self.stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            self.leader.changed.clear()

    async def _say_online(self, session: Session, *, shared: bool = True) -> None:
        """This instance's own retained status and (``shared``) the shared one terminals read,
        naming the newest version published as the leader does (or, before this instance heard
        any, the registry's newest: the leader publishes every change within a poll)."""
        if shared:
            published = self._published_version
            version = published if published >= 0 else self.deny.version
            online = GatewayStatus(state=Presence.ONLINE, denylist_version=version)
            payload = online.model_dump_json().encode()
            await session.publish(GATEWAY_STATUS_TOPIC, payload, retain=True)
        if self.settings.mqtt.shared_group:  # one of several gateways
            topic = instance_status_topic(self.instance)
            await session.publish(topic, self._instance_status("online"), retain=True)

    def _instance_status(self, state: str) -> bytes:
        return json.dumps(
            {
                "instance": self.instance,
                "state": state,
                "leader": self.leader.is_leader,
                "denylist_version": self.deny.version,
            }
        ).encode()

    async def _on_peer(self, kind: TopicKind, payload: bytes) -> None:
        """Another instance's publication. The leader's deny-list version tells a follower's
        kiosk loss report that the change is out; an ``offline`` on the shared status topic (a
        peer's last will, or its clean exit) is corrected while this instance still serves."""
        if kind is TopicKind.GATEWAY_STATUS:
            try:
                status = GatewayStatus.model_validate_json(payload)
            except ValueError:
                return
            session = self.session
            offline = status.state is Presence.OFFLINE
            if offline and self.ready and not self.stop.is_set() and session is not None:
                await self._say_online(session)
            return
        if self.leader.is_leader or not payload:
            return
        try:
            body = json.loads(payload)
            field = "version" if kind is TopicKind.DENYLIST_SNAPSHOT else "to_version"
            version = int(body[field])
        except (ValueError, KeyError, TypeError, RecursionError):
            return
        async with self._published:
            if version > self._published_version:
                self._published_version = version
                self._published.notify_all()

    def update_gauges(self) -> None:
        self.metrics.writer_commits.set(getattr(self.executor, "batches", 0))
        self.metrics.writer_jobs.set(getattr(self.executor, "jobs", 0))
        self.metrics.wal_bytes.set(getattr(self.executor, "wal_bytes", 0))
        for kind, (online, lag, lagging) in self.fleet.lag_by_kind(self.deny.version).items():
            self.metrics.terminals_online.labels(kind=kind).set(online)
            self.metrics.terminal_lag.labels(kind=kind).set(lag)
            self.metrics.terminals_lagging.labels(kind=kind).set(lagging)


#: Topics only a gateway among several subscribes to (issue 12).
_PEER_TOPICS = frozenset(
    {TopicKind.GATEWAY_STATUS, TopicKind.DENYLIST_SNAPSHOT, TopicKind.DENYLIST_DELTA}
)


def instance_status_topic(instance: str) -> str:
    """One gateway instance's own retained status (for operators; terminals read the shared
    ``onecard/v1/gateway/status``). The gateways' ACL covers ``onecard/v1/gateway/#``."""
    return f"onecard/v1/gateway/instance/{instance}/status"


def _deny_changes_after(
    tx: TapTx, version: int, limit: int | None = 10_000
) -> list[dict[str, Any]]:
    return tx.deny_changes_after(version, limit=limit if limit is not None else -1)


def _request_id(payload: bytes) -> str:
    value: Any = json.loads(payload).get("request_id")
    return str(value)


def _reply_topic(tid: str, op: str, given: str | None) -> str:
    """The terminal's Response Topic if it is a safe one under its own ``resp/`` (the broker ACL
    lets the gateway write only there), else the default response topic of ``op``."""
    prefix = f"onecard/v1/t/{tid}/resp/"
    if given and given.startswith(prefix) and _REPLY_SUFFIX.fullmatch(given[len(prefix) :]):
        return given
    return response_topic(tid, op)
