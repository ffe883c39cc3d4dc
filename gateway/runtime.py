"""The gateway process: MQTT intake, the router boundary, deny-list distribution, scheduler,
metrics — named tasks in one TaskGroup with a graceful shutdown (ARCHITECTURE.md §7).

Shutdown order on SIGTERM: stop intake, drain in-flight handlers (with a timeout), cancel the
rest, publish the retained ``offline`` gateway status, disconnect, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable
from typing import Any

from gateway.config import Settings
from gateway.denylist import DenyState, Fleet
from gateway.http import OpsServer
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
from gateway.services.base import SYSTEM, Context
from gateway.services.cards import CardService
from gateway.services.taps import Outcome, TerminalService
from protocol.errors import ErrorCode, OnecardError
from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    REQUEST_FILTER,
    TERMINAL_STATUS_FILTER,
    GatewayStatus,
    HeartbeatRequest,
    HelloRequest,
    Presence,
    ReportLossResponse,
    TerminalConfig,
    TerminalKind,
    TerminalStatus,
    TopicKind,
    WireError,
    decode_request,
    encode_error,
    encode_reply,
    parse_topic,
    response_topic,
    shared_subscription,
)
from storage.ports import Registry, TapExecutor

log = logging.getLogger("onecard.gateway")


class Gateway:
    def __init__(
        self,
        settings: Settings,
        ctx: Context,
        *,
        executor: TapExecutor,
        metrics: Metrics | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.session_factory: SessionFactory = session_factory or (
            lambda s, will: MqttSession(s, will=will)
        )
        self.settings = settings
        self.ctx = ctx
        self.registry: Registry = ctx.registry
        self.metrics = metrics or Metrics()
        off = settings.offline
        self.terminal_config = TerminalConfig(
            heartbeat_interval_s=off.heartbeat_interval_s,
            offline_max_age_s=settings.denylist.max_offline_age_s,
            offline_max_amount_fen=off.offline_max_amount_fen,
            offline_max_daily_fen=off.offline_max_daily_fen,
            offline_max_count=off.offline_max_count,
        )
        self.deny = DenyState()
        self.service = TerminalService(ctx, self.terminal_config, executor, self.deny.refusal)
        self.cards = CardService(ctx)
        self.fleet = Fleet()
        self.kinds: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.ready = False
        self.session: Session | None = None
        self._deny_wakeup = asyncio.Event()
        self._fleet_changed = asyncio.Event()
        self._published = asyncio.Condition()
        self._published_version = -1
        self._snapshot_at = 0.0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self.http: OpsServer | None = None

    # --- life cycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        await self._load()
        self.http = OpsServer(
            self.settings.http.host,
            self.settings.http.port,
            self.metrics.render,
            lambda: self.ready,
        )
        port = await self.http.start()
        log.info("ops endpoint on %s:%d", self.settings.http.host, port)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mqtt_loop(), name="mqtt")
                tg.create_task(self._deny_watch(), name="denylist")
                tg.create_task(self._scheduler(), name="scheduler")
                tg.create_task(self._gauges(), name="gauges")
        finally:
            await self.http.close()

    async def _load(self) -> None:
        async with self.registry.read() as tx:
            self.deny.apply_rows(await tx.deny_changes_after(0, limit=10_000_000))
            for row in await tx.find("terminals"):
                self.kinds[row["id"]] = row["kind"]
                self.fleet.seen(row["id"], row["kind"], int(row["denylist_version"]), online=False)
        self.metrics.denylist_version.set(self.deny.version)
        self.metrics.denylist_size.set(len(self.deny.codes))

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True if asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
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
                    await self._on_connect(session)
                    await self._consume(session)
                    await self._drain()
                    await session.publish(GATEWAY_STATUS_TOPIC, offline, retain=True)
                    self.ready = False
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

    async def _on_connect(self, session: Session) -> None:
        group = self.settings.mqtt.shared_group
        requests = shared_subscription(REQUEST_FILTER, group) if group else REQUEST_FILTER
        await session.subscribe([requests, TERMINAL_STATUS_FILTER])
        online = GatewayStatus(state=Presence.ONLINE, denylist_version=self.deny.version)
        await session.publish(GATEWAY_STATUS_TOPIC, online.model_dump_json().encode(), retain=True)
        await self._publish_snapshot(session)
        self.ready = True
        log.info("connected to the broker; deny list version %d", self.deny.version)

    async def _consume(self, session: Session) -> None:
        """Read until asked to stop; each request is handled in its own task (a reply is never
        awaited inside the read loop: FIELD-NOTES)."""
        reader = asyncio.create_task(self._read(session), name="mqtt-read")
        stopper = asyncio.create_task(self.stop.wait(), name="stop-wait")
        done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (reader, stopper):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if reader in done:
            reader.result()  # re-raise a connection error for the reconnect loop

    async def _read(self, session: Session) -> None:
        async for message in session.messages():
            received = time.perf_counter()
            await self._slots.acquire()
            task = asyncio.create_task(self._guarded(self._on_message(session, message, received)))
            self._in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

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
    async def _on_message(self, session: Session, message: Inbound, received: float) -> None:
        try:
            topic = parse_topic(message.topic)
        except WireError:
            self.metrics.dropped.labels(reason="bad_topic").inc()
            return
        if topic.kind is TopicKind.TERMINAL_STATUS and topic.terminal_id is not None:
            self._on_status(topic.terminal_id, message.payload)
            return
        if topic.kind is not TopicKind.REQUEST or topic.op is None or topic.terminal_id is None:
            self.metrics.dropped.labels(reason="unexpected_topic").inc()
            return
        tid, op = topic.terminal_id, topic.op
        reply_to = message.response_topic
        # the broker ACL lets the gateway write only under .../resp/ (deploy/mosquitto)
        if not reply_to or not reply_to.startswith(f"onecard/v1/t/{tid}/resp/"):
            reply_to = response_topic(tid, op)
        try:
            outcome = await self._decide(tid, op, message.payload)
        except Exception:  # the one boundary: an error reply, a metric and a log line (§7)
            log.exception("handling %s from a terminal failed", op)
            error = OnecardError(code=ErrorCode.INTERNAL)
            outcome = Outcome(
                encode_error(_peek_id(message.payload), error), ok=False, code=error.code.value
            )
        if outcome.denylist_version is not None:
            outcome = await self._with_applied_count(op, outcome)
        await session.publish(reply_to, outcome.payload, correlation_data=message.correlation_data)
        self.metrics.decisions.labels(op=op, result=outcome.code).inc()
        self.metrics.decision_seconds.labels(op=op).observe(time.perf_counter() - received)
        if not outcome.ok:
            self.metrics.errors.labels(code=outcome.code).inc()
        if outcome.replayed:
            self.metrics.replays.inc()

    async def _decide(self, tid: str, op: str, payload: bytes) -> Outcome:
        kind_name = self.kinds.get(tid)
        if kind_name is None:
            await self._refresh_kinds()
            kind_name = self.kinds.get(tid)
        kind = TerminalKind(kind_name) if kind_name else None
        try:
            request = decode_request(op, payload, kind=kind)
        except WireError as exc:
            return Outcome(encode_error(exc.request_id, exc), ok=False, code=exc.code.value)
        try:
            outcome = await self.service.handle(tid, op, request)
        except OnecardError as exc:
            return Outcome(encode_error(request.request_id, exc), ok=False, code=exc.code.value)
        if outcome.ok and isinstance(request.data, HelloRequest | HeartbeatRequest):
            self.fleet.seen(tid, kind_name or "", request.data.denylist_version, online=True)
            self._fleet_changed.set()
        return outcome

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
    async def _deny_watch(self) -> None:
        interval = self.settings.denylist.poll_interval_ms / 1000
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deny_wakeup.wait(), timeout=interval)
            self._deny_wakeup.clear()
            async with self.registry.read() as tx:
                rows = await tx.deny_changes_after(self.deny.version)
            changes = self.deny.apply_rows(rows)
            session = self.session
            if changes and session is not None:
                try:
                    await self._publish_changes(session)
                except MqttError:
                    self.metrics.dropped.labels(reason="denylist_publish_failed").inc()
            self.metrics.denylist_version.set(self.deny.version)
            self.metrics.denylist_size.set(len(self.deny.codes))

    async def _publish_changes(self, session: Session) -> None:
        cfg = self.settings.denylist
        too_old = time.monotonic() - self._snapshot_at > cfg.snapshot_max_age_s
        if len(self.deny.pending) >= cfg.snapshot_every_changes or too_old:
            await self._publish_snapshot(session)
            return
        delta = self.deny.cumulative_delta()
        if delta is not None:
            await session.publish(
                DENYLIST_DELTA_TOPIC, delta.model_dump_json().encode(), retain=True
            )
        await self._mark_published(self.deny.version)

    async def _publish_snapshot(self, session: Session) -> None:
        snapshot = self.deny.snapshot(int(self.ctx.clock.now().timestamp() * 1000))
        await session.publish(
            DENYLIST_SNAPSHOT_TOPIC, snapshot.model_dump_json().encode(), retain=True
        )
        # an empty retained payload clears the old cumulative delta
        await session.publish(DENYLIST_DELTA_TOPIC, b"", retain=True)
        self._snapshot_at = time.monotonic()
        await self._mark_published(snapshot.version)

    async def _mark_published(self, version: int) -> None:
        async with self._published:
            self._published_version = version
            self._published.notify_all()

    # --- time rules and gauges --------------------------------------------------------------------
    async def _scheduler(self) -> None:
        while not await self._sleep_or_stop(self.settings.scheduler_interval_s):
            changed = await self.cards.run_due(SYSTEM)
            if changed:
                log.info("scheduler applied %d due card changes", len(changed))
                self._deny_wakeup.set()

    async def _gauges(self) -> None:
        while not await self._sleep_or_stop(1.0):
            self.update_gauges()

    def update_gauges(self) -> None:
        for kind, (online, lag, lagging) in self.fleet.lag_by_kind(self.deny.version).items():
            self.metrics.terminals_online.labels(kind=kind).set(online)
            self.metrics.terminal_lag.labels(kind=kind).set(lag)
            self.metrics.terminals_lagging.labels(kind=kind).set(lagging)


def _peek_id(payload: bytes) -> str | None:
    try:
        value = json.loads(payload).get("request_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


def _request_id(payload: bytes) -> str:
    value: Any = json.loads(payload).get("request_id")
    return str(value)
