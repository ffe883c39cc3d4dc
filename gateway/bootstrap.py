"""The composition root: the one place that picks concrete classes for the gateway process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from gateway.config import Settings
from gateway.leader import LeaseLeader, SoleLeader
from gateway.metrics import Metrics
from gateway.mqtt.client import MqttSession, SessionFactory
from gateway.retention import RetentionIO
from gateway.runtime import Gateway
from gateway.services.base import Clock, Context, SystemClock
from gateway.tapengine import TapEngine
from protocol.errors import ErrorCode, OnecardError
from storage import pii, piidb
from storage.engine import database_url
from storage.lease import PgLease
from storage.listen import PgChangeListener
from storage.pgtap import PgTapExecutor
from storage.sql import SqlRegistry
from storage.tapwriter import SqliteTapWriter

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from gateway.web.app import WebServices
    from gateway.web.console.app import ConsoleServices


def sqlite_path(db: str) -> str:
    url = database_url(db)
    if not url.startswith("sqlite"):
        raise OnecardError(
            "网关的刷卡通道目前需要 SQLite 登记库",
            "the gateway's tap path runs on a SQLite registry for now (PostgreSQL: counter only)",
            code=ErrorCode.UNAVAILABLE,
        )
    return url.split(":///", 1)[1]


def session_factory(settings: Settings) -> SessionFactory:
    """The MQTT adapter named by ``mqtt.client``."""
    if settings.mqtt.client == "gmqtt":
        from gateway.mqtt.client_gmqtt import GmqttSession

        return lambda s, will: GmqttSession(s, will=will)
    if settings.mqtt.client == "lean":
        from gateway.mqtt.client_lean import LeanSession

        return lambda s, will: LeanSession(s, will=will)
    return lambda s, will: MqttSession(s, will=will)


def retention_io(registry: SqlRegistry) -> RetentionIO:
    """Retention archives sealed under the registry's current key; after a purge, SQLite's WAL
    folded in and emptied (issue 15). Not PostgreSQL's ``VACUUM FULL holders``: it locks the
    table the tap path reads; docs/privacy.md §5 leaves it to a maintenance window."""
    writer = registry.engines.writer
    return RetentionIO(
        seal=lambda data: pii.seal_bytes(registry.pii.enc_keys[0], data, pii.AAD_EXPORT),
        compact=(lambda: piidb.checkpoint(writer)) if writer.dialect.name == "sqlite" else None,
    )


@asynccontextmanager
async def open_gateway(
    settings: Settings,
    *,
    migrate: bool = False,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[Gateway]:
    """Registry, batching tap executor and gateway, closed in reverse order.

    SQLite: the batching writer thread, and this gateway is the only one (always the leader).
    PostgreSQL: group commit on asyncpg, and leadership through an advisory lock, so several
    gateways can share the registry behind a shared subscription (issue 12)."""
    registry = await SqlRegistry.open(settings.db, migrate=migrate)
    lock_wait_s = settings.requests.lock_wait_ms / 1000
    executor: SqliteTapWriter | PgTapExecutor
    leader: SoleLeader | LeaseLeader
    listener: PgChangeListener | None = None
    engine: TapEngine | None = None
    thread_writer: SqliteTapWriter | None = None
    try:
        if database_url(settings.db).startswith("postgresql"):
            executor = PgTapExecutor(
                settings.db, max_batch=settings.ha.max_batch, lock_wait_s=lock_wait_s
            )
            await executor.start()
            leader = LeaseLeader(PgLease(settings.db), retry_s=settings.ha.leader_retry_s)
            listener = PgChangeListener(settings.db, retry_s=settings.ha.leader_retry_s)
        else:
            executor = thread_writer = SqliteTapWriter(
                sqlite_path(settings.db), lock_wait_s=lock_wait_s
            )
            executor.start()
            leader = SoleLeader()
            # a clock given by a test must decide taps too: only the thread sees it
            if settings.requests.engine == "process" and clock is None:
                engine = TapEngine(settings)  # started by Gateway.run, beside the deny list
    except BaseException:
        if engine is not None:
            await engine.close()
        if thread_writer is not None:
            await thread_writer.close()
        await registry.close()
        raise
    try:
        ctx = Context(registry=registry, clock=clock or SystemClock())
        yield Gateway(
            settings,
            ctx,
            executor=executor,
            metrics=metrics,
            session_factory=session_factory(settings),
            leader=leader,
            listener=listener,
            retention_io=retention_io(registry),
            engine=engine,
        )
    finally:
        if engine is not None:
            await engine.close()
        await executor.close()
        await registry.close()


@asynccontextmanager
async def open_web_services(
    settings: Settings, *, clock: Clock | None = None, migrate: bool = False
) -> AsyncIterator[WebServices]:
    """The services the web process calls, over its own connection to the same registry."""
    from gateway.payments import payment_service
    from gateway.services.alerts import AlertService
    from gateway.services.portal import PortalService
    from gateway.web.app import WebServices

    registry = await SqlRegistry.open(settings.db, migrate=migrate)
    try:
        ctx = Context(registry=registry, clock=clock or SystemClock())
        pay = settings.payments
        # online top-up only where the provider's signing key is configured
        topup = payment_service(ctx, pay) if pay.key or pay.key_file else None
        yield WebServices(
            portal=PortalService(ctx),
            alerts=AlertService(ctx),
            topup=topup,
            sweep_interval_s=pay.sweep_interval_s,
        )
    finally:
        await registry.close()


def web_app(settings: Settings, *, clock: Clock | None = None) -> Starlette:
    """``onecard web``: the cardholder platform, composed over ``settings``."""
    from gateway.web.app import create_app

    return create_app(
        settings.web,
        lambda: open_web_services(settings, clock=clock),
        deny_poll_ms=settings.denylist.poll_interval_ms,
    )


@asynccontextmanager
async def open_console_services(
    settings: Settings, *, clock: Clock | None = None, migrate: bool = False
) -> AsyncIterator[ConsoleServices]:
    """The operator console's services over its own connection to the registry, and the
    terminals' retained status from the broker when a monitor account is configured."""
    import asyncio
    import contextlib

    from gateway.fleetwatch import FleetWatch
    from gateway.mqtt.broker_files import mosquitto_password_hash, new_password
    from gateway.services.center import CardCenter
    from gateway.services.console_view import ConsoleViews
    from gateway.services.search import SearchService
    from gateway.web.console.app import ConsoleServices

    registry = await SqlRegistry.open(settings.db, migrate=migrate)
    c = settings.console
    watch = (
        FleetWatch(settings.mqtt.host, settings.mqtt.port, c.mqtt_username, c.mqtt_password)
        if c.mqtt_username
        else None
    )
    task = asyncio.create_task(watch.run(), name="console-fleet") if watch else None
    try:
        ctx = Context(
            registry=registry,
            clock=clock or SystemClock(),
            wall_clock=SystemClock(),
            mass_block_threshold=c.mass_block_threshold,
        )
        center = CardCenter.build(ctx)
        yield ConsoleServices(
            center=center,
            views=ConsoleViews(ctx),
            approvals=center.approvals,
            search=SearchService(ctx),
            password_hash=mosquitto_password_hash,
            new_password=new_password,
            fleet=watch.snapshot if watch else None,
        )
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await registry.close()


def console_app(settings: Settings, *, clock: Clock | None = None) -> Starlette:
    """``onecard console``: the operator console, composed over ``settings``."""
    from gateway.web.console.app import create_console

    return create_console(settings.console, lambda: open_console_services(settings, clock=clock))
