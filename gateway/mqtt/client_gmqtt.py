"""The gmqtt adapter: the same :class:`MqttSession` shape as :mod:`gateway.mqtt.client`, on
gmqtt (asyncio transports, which set TCP_NODELAY themselves). Chosen by ``mqtt.client = "gmqtt"``;
the benchmarks (docs/benchmarks.md) record why. The only module that imports gmqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]

from gateway.mqtt.client import Inbound, LastWill, MqttError, MqttSettings

_LOST = object()


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
            will_message=will_message,
            session_expiry_interval=settings.session_expiry_s,
            receive_maximum=settings.max_inflight,
        )
        self._client.set_config({"reconnect_retries": 0, "reconnect_delay": 0})
        if settings.username is not None:
            self._client.set_auth_credentials(settings.username, settings.password)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._closing = False

    def _on_message(
        self, _client: Any, topic: str, payload: bytes, _qos: int, properties: dict[str, Any]
    ) -> int:
        response = properties.get("response_topic")
        correlation = properties.get("correlation_data")
        self._queue.put_nowait(
            Inbound(
                topic=topic,
                payload=bytes(payload),
                retain=bool(properties.get("retain")),
                response_topic=response[0] if response else None,
                correlation_data=correlation[0] if correlation else None,
            )
        )
        return 0

    def _on_disconnect(self, *_args: Any, **_kw: Any) -> None:
        if not self._closing:
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
            item = await self._queue.get()
            if item is _LOST:
                raise MqttError("connection to the broker lost")
            yield item

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> None:
        if not self._client.is_connected:
            raise MqttError("not connected")
        kwargs: dict[str, Any] = {}
        if correlation_data is not None:
            kwargs["correlation_data"] = correlation_data
        self._client.publish(topic, payload, qos=qos, retain=retain, **kwargs)
