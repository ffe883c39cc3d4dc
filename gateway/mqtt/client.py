"""The only module that imports aiomqtt: swapping the MQTT client is a one-file change.

One :class:`MqttSession` is one broker connection (MQTT v5, TCP_NODELAY, QoS 1, persistent
session). Reconnection is the caller's loop: a new session per attempt (aiomqtt 2.x semantics).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

#: The errors a broken or refused connection raises; the runtime reconnects on these.
MqttError = aiomqtt.MqttError

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str = "onecard-gateway"
    keepalive: int = 30
    session_expiry_s: int = 3600  # keep our subscriptions and queued requests while we restart
    max_inflight: int = 1000


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class LastWill:
    topic: str
    payload: bytes
    retain: bool = True


class Session(Protocol):
    """What the gateway needs of a broker connection (both adapters provide it)."""

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None: ...
    def messages(self) -> AsyncIterator[Inbound]: ...
    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> None: ...


SessionFactory = Callable[[MqttSettings, LastWill], Session]


class MqttSession:
    def __init__(
        self, settings: MqttSettings, *, will: LastWill | None = None, clean_start: bool = False
    ) -> None:
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = settings.session_expiry_s
        self._client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=settings.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean_start,
            keepalive=settings.keepalive,
            will=aiomqtt.Will(will.topic, will.payload, qos=1, retain=will.retain)
            if will
            else None,
            properties=connect_props,
            socket_options=NODELAY,
            max_inflight_messages=settings.max_inflight,
            timeout=10,
        )

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        for topic_filter in filters:
            await self._client.subscribe(topic_filter, qos=qos)

    async def messages(self) -> AsyncIterator[Inbound]:
        async for message in self._client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            props = message.properties
            response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
            correlation = getattr(props, "CorrelationData", None) if props is not None else None
            yield Inbound(
                topic=message.topic.value,
                payload=bytes(payload),
                retain=message.retain,
                response_topic=response_topic,
                correlation_data=correlation,
            )

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> None:
        properties = None
        if correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation_data
        await self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
