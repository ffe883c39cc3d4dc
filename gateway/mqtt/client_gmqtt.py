"""The gmqtt adapter: the same :class:`MqttSession` shape as :mod:`gateway.mqtt.client`, on
gmqtt (asyncio transports, which set TCP_NODELAY themselves). Chosen by ``mqtt.client = "gmqtt"``;
the benchmarks (docs/benchmarks.md) record why. The only module that imports gmqtt.

Flow control, both ways (issue 8, item 7 and the unbounded queues of item 12):

- inbound: a request is acknowledged (PUBACK) only once it is in the bounded hand-over queue
  (at once while there is room: no task per message); while the runtime is behind,
  acknowledgements wait, and the broker stops sending once our receive maximum of
  unacknowledged messages is reached. Nothing is buffered without bound.
- outbound: gmqtt raises ``OverflowError`` when more QoS 1 publishes are unacknowledged than the
  broker's receive maximum; :meth:`GmqttSession.publish` waits for a PUBACK to free a packet id
  instead, so a burst of replies is delayed, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]
from gmqtt.mqtt.protocol import MQTTProtocol  # type: ignore[import-untyped]

from gateway.mqtt.client import (
    Inbound,
    LastWill,
    MqttError,
    MqttSettings,
    Reply,
    kept,
    one_by_one,
)

_LOST = object()
_READ_CHUNK = 65536


async def _read_loop_linear(self: Any) -> None:
    """gmqtt's read loop, in linear time: gmqtt assembles a packet with ``buf += read(64 KiB)``,
    copying the whole buffer on every read (a 100 MiB publish cost tens of seconds of CPU before
    any size check could run: issue 8, item 1). Here the buffer is a ``bytearray`` that grows in
    place and only what was parsed is dropped from its front."""
    await self._connected.wait()
    buf = bytearray()
    while self._connected.is_set():
        try:
            buf += await self.read(_READ_CHUNK)
            parsed_size = self._read_packet(buf)
            if parsed_size == -1 or self._transport.is_closing():
                break
            if parsed_size:
                del buf[:parsed_size]
        except ConnectionResetError:
            break


MQTTProtocol._read_loop = _read_loop_linear
#: How long a publish waits for the broker to acknowledge earlier ones before giving up.
PUBLISH_WAIT_S = 10.0


def _watch_pubacks(client: Any, freed: asyncio.Event) -> None:
    """Set ``freed`` whenever a PUBACK frees one of our packet ids."""
    handler = client._package_handler
    original = handler._handle_puback_packet

    def on_puback(cmd: int, packet: bytes) -> None:
        original(cmd, packet)
        freed.set()

    handler._handle_puback_packet = on_puback


def _acknowledge_when_queued(client: Any, session: GmqttSession) -> None:
    """QoS 1 requests: queue and PUBACK at once while the hand-over queue has room (no task per
    message on the hot path); when it is full, the PUBACK waits for room (back-pressure)."""
    handler = client._package_handler

    def on_qos1(mid: int, packet: bytes, topic: str, properties: dict[str, Any]) -> None:
        item = session.inbound(topic, packet, properties)
        if session.offer(item):
            handler._send_puback(mid)
            return
        task = asyncio.ensure_future(session.put(item))
        task.add_done_callback(lambda _t: handler._send_puback(mid))

    handler._handle_qos_1_publish_packet = on_qos1


def _inflight_full(client: Any) -> bool:
    generator = client._package_handler.id_generator
    return bool(len(generator._used_ids) >= generator._max - 1)


class GmqttSession:
    def __init__(
        self, settings: MqttSettings, *, will: LastWill | None = None, clean_start: bool = False
    ) -> None:
        self.settings = settings
        will_message = (
            gmqtt.Message(will.topic, will.payload, qos=1, retain=will.retain) if will else None
        )
        self._client = gmqtt.Client(
            settings.client_id,
            clean_session=clean_start,
            optimistic_acknowledgement=False,
            will_message=will_message,
            session_expiry_interval=settings.session_expiry_s,
            receive_maximum=settings.max_inflight,
        )
        self._freed = asyncio.Event()
        _watch_pubacks(self._client, self._freed)
        _acknowledge_when_queued(self._client, self)
        self._client.set_config({"reconnect_retries": 0, "reconnect_delay": 0})
        if settings.username is not None:
            self._client.set_auth_credentials(settings.username, settings.password)
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.max_queued)
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._closing = False
        self._lost = asyncio.Event()

    @staticmethod
    def inbound(topic: str, payload: bytes, properties: dict[str, Any]) -> Inbound:
        response = properties.get("response_topic")
        correlation = properties.get("correlation_data")
        expiry = properties.get("message_expiry_interval")
        return Inbound(
            topic=topic,
            payload=kept(payload),
            retain=bool(properties.get("retain")),
            response_topic=response[0] if response else None,
            correlation_data=correlation[0] if correlation else None,
            expiry_s=int(expiry[0]) if expiry else None,
        )

    def offer(self, item: Inbound) -> bool:
        """Queue ``item`` if there is room (the caller then acknowledges it at once)."""
        if self._queue.full():
            return False
        self._queue.put_nowait(item)
        return True

    async def put(self, item: Inbound) -> None:
        """Wait for room (or the connection's end), then queue ``item``."""
        put = asyncio.ensure_future(self._queue.put(item))
        lost = asyncio.ensure_future(self._lost.wait())
        await asyncio.wait({put, lost}, return_when=asyncio.FIRST_COMPLETED)
        for task in (put, lost):
            task.cancel()

    async def _on_message(
        self, _client: Any, topic: str, payload: bytes, _qos: int, properties: dict[str, Any]
    ) -> int:
        """QoS 0 and 2 (terminals use QoS 1, handled by ``_acknowledge_when_queued``)."""
        item = self.inbound(topic, payload, properties)
        if not self.offer(item):
            await self.put(item)
        return 0

    def _on_disconnect(self, *_args: Any, **_kw: Any) -> None:
        self._lost.set()
        self._freed.set()
        if not self._closing:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_LOST)

    async def __aenter__(self) -> Self:
        try:
            await self._client.connect(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive,
                version=MQTTv50,
            )
        except (OSError, Exception) as exc:  # gmqtt raises its own and OS errors on refusal
            raise MqttError(f"connect failed: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.disconnect(), timeout=5)

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        for topic_filter in filters:
            self._client.subscribe(topic_filter, qos=qos)

    async def messages(self) -> AsyncIterator[Inbound]:
        while True:
            if self._lost.is_set() and self._queue.empty():
                raise MqttError("connection to the broker lost")
            item = await self._queue.get()
            if item is _LOST:
                if not self._queue.empty():  # what arrived before the loss is still served
                    self._queue.put_nowait(_LOST)
                    continue
                raise MqttError("connection to the broker lost")
            yield item

    def batches(self) -> AsyncIterator[list[Inbound]]:
        return one_by_one(self.messages())

    async def publish_many(self, replies: Sequence[Reply]) -> list[MqttError | None]:
        # gmqtt hands a publish to the transport at once (it waits only while the broker's
        # receive maximum is reached): one after the other, no task each
        out: list[MqttError | None] = []
        for topic, payload, correlation in replies:
            try:
                await self.publish(topic, payload, correlation_data=correlation)
            except MqttError as exc:
                out.append(exc)
            else:
                out.append(None)
        return out

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> None:
        client = self._client
        if qos > 0 and client.is_connected and _inflight_full(client):
            deadline = asyncio.get_running_loop().time() + PUBLISH_WAIT_S
            while client.is_connected and _inflight_full(client):
                self._freed.clear()
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise MqttError("broker did not acknowledge earlier publishes")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), timeout=remaining)
        if not client.is_connected:
            raise MqttError("not connected")
        kwargs: dict[str, Any] = {}
        if correlation_data is not None:
            kwargs["correlation_data"] = correlation_data
        try:
            client.publish(topic, payload, qos=qos, retain=retain, **kwargs)
        except OverflowError as exc:  # a race with the check above: treat as not sent
            raise MqttError(str(exc)) from exc
