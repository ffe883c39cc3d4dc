"""The only module that imports aiomqtt: swapping the MQTT client is a one-file change.

One :class:`MqttSession` is one broker connection (MQTT v5, TCP_NODELAY, QoS 1, persistent
session). Reconnection is the caller's loop: a new session per attempt (aiomqtt 2.x semantics).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class MqttError(Exception):
    """The seam's own error: a broken or refused connection, or a publish that could not be
    sent. The runtime reconnects on it; both adapters raise only this (ARCHITECTURE.md §10)."""


#: What the gateway keeps of a request's payload: one byte more than the contract's 16 KiB, so
#: the codec refuses it as too big (``malformed``) and a flood of big publishes (the broker lets
#: up to 8 MiB through) costs no memory in the gateway's queues. Deliberately no MQTT v5
#: Maximum Packet Size: Mosquitto 2.0.11 leaks one in-flight slot for every QoS 1 message it
#: drops as too big for a client, and after ``receive maximum`` of them it delivers nothing more
#: to that client (found by the fuzzer, docs/fuzzing.md).
MAX_KEPT_PAYLOAD = 16 * 1024 + 1


def kept(payload: bytes | bytearray) -> bytes:
    """The payload as the gateway keeps it (at most :data:`MAX_KEPT_PAYLOAD` bytes)."""
    return bytes(payload[:MAX_KEPT_PAYLOAD])


NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

#: One reply for :meth:`Session.publish_many`: topic, payload, correlation data (QoS 1, not
#: retained).
Reply = tuple[str, bytes, bytes | None]


async def one_by_one(messages: AsyncIterator[Inbound]) -> AsyncIterator[list[Inbound]]:
    """:meth:`Session.batches` for an adapter that hands over one message at a time."""
    async for message in messages:
        yield [message]


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
    #: Messages received but not yet taken by the runtime. gmqtt: past it the gateway stops
    #: acknowledging, so the broker's flow control (our receive maximum) holds the rest.
    max_queued: int = 2000
    #: aiomqtt (paho acknowledges on receipt, so there is no back-pressure): past this it drops
    #: and logs; a terminal's retry of the same request id is decided (at most 32 KiB each).
    max_queued_aiomqtt: int = 20_000


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    #: MQTT v5 Message Expiry Interval left when the broker delivered it (seconds), if any.
    expiry_s: int | None = None


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
    def batches(self) -> AsyncIterator[list[Inbound]]:
        """What :meth:`messages` yields, as lists of everything that arrived together (the
        lean adapter hands over a whole socket read at once)."""
        ...

    async def publish_many(self, replies: Sequence[Reply]) -> list[MqttError | None]:
        """Publish every reply (QoS 1, not retained); for each, None once it is handed to the
        connection, or the error that kept it from being sent (one failure loses only its own
        reply)."""
        ...

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


def _failure(result: BaseException | None) -> MqttError | None:
    """A gathered publish's outcome: None, the MqttError, or (never swallowed) anything else."""
    if result is None or isinstance(result, MqttError):
        return result
    raise result


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
            # bounded: past it aiomqtt logs and drops (paho has already acknowledged; the
            # terminal's retry of the same request id gets it decided). gmqtt, the default,
            # applies back-pressure instead (gateway/mqtt/client_gmqtt.py).
            max_queued_incoming_messages=settings.max_queued_aiomqtt,
            timeout=10,
        )

    async def __aenter__(self) -> Self:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise MqttError(str(exc)) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as error:
            raise MqttError(str(error)) from error

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        try:
            for topic_filter in filters:
                await self._client.subscribe(topic_filter, qos=qos)
        except aiomqtt.MqttError as exc:
            raise MqttError(str(exc)) from exc

    async def messages(self) -> AsyncIterator[Inbound]:
        try:
            async for message in self._client.messages:
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                props = message.properties
                yield Inbound(
                    topic=message.topic.value,
                    payload=kept(payload),
                    retain=message.retain,
                    response_topic=getattr(props, "ResponseTopic", None) if props else None,
                    correlation_data=getattr(props, "CorrelationData", None) if props else None,
                    expiry_s=getattr(props, "MessageExpiryInterval", None) if props else None,
                )
        except aiomqtt.MqttError as exc:
            raise MqttError(str(exc)) from exc

    def batches(self) -> AsyncIterator[list[Inbound]]:
        return one_by_one(self.messages())

    async def publish_many(self, replies: Sequence[Reply]) -> list[MqttError | None]:
        # paho completes a QoS 1 publish on its PUBACK: concurrently, not one round trip each
        sent = await asyncio.gather(
            *(self.publish(t, p, correlation_data=c) for t, p, c in replies),
            return_exceptions=True,
        )
        return [_failure(r) for r in sent]

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
        try:
            await self._client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties
            )
        except aiomqtt.MqttError as exc:
            raise MqttError(str(exc)) from exc
