"""The kit's MQTT v5 client (its only aiomqtt user): connect, subscribe, publish with the v5
properties the contract uses, and a queue of everything received, each traced into the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = ["Broker", "Message", "Peer", "PeerError"]

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
Tracer = Callable[[str, str, bytes], None]


class PeerError(Exception):
    """The broker refused or dropped the connection."""


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    cafile: str | None = None  # TLS with this CA (host name checked) when given

    def tls(self) -> ssl.SSLContext | None:
        if self.cafile is None:
            return None
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    response_topic: str | None
    expiry_s: int | None
    at: float  # monotonic


class Peer:
    """One MQTT v5 session; ``async with Peer(...)`` connects and starts reading."""

    def __init__(
        self,
        broker: Broker,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        will: tuple[str, bytes] | None = None,
        trace: Tracer | None = None,
    ) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if clean_start else 3600
        self.client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=username,
            password=password,
            identifier=client_id or username,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean_start,
            properties=props,
            will=aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None,
            socket_options=NODELAY,
            tls_context=broker.tls(),
            timeout=10,
        )
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._trace = trace
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        try:
            await self.client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise PeerError(str(exc)) from None
        self._reader = asyncio.create_task(self._read(), name="conformance-read")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(et, e, tb)

    async def _read(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in self.client.messages:
                payload = bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else b""
                props = m.properties
                corr = getattr(props, "CorrelationData", None) if props is not None else None
                reply_to = getattr(props, "ResponseTopic", None) if props is not None else None
                expiry = getattr(props, "MessageExpiryInterval", None) if props else None
                msg = Message(
                    m.topic.value,
                    payload,
                    bool(m.retain),
                    bytes(corr) if corr is not None else None,
                    reply_to,
                    expiry,
                    time.monotonic(),
                )
                if self._trace is not None:
                    self._trace("received", msg.topic, payload)
                await self.inbox.put(msg)

    async def subscribe(self, *topics: str, retain_as_published: bool = False) -> None:
        """QoS 1; ``retain_as_published`` keeps the retain flag on live messages (to check that
        a device publishes its status retained)."""
        options = SubscribeOptions(qos=1, retainAsPublished=retain_as_published)
        for topic in topics:
            await self.client.subscribe(topic, options=options)

    async def unsubscribe(self, topic: str) -> None:
        await self.client.unsubscribe(topic)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        if self._trace is not None:
            self._trace("sent", topic, payload)
        await self.client.publish(topic, payload, qos=1, retain=retain, properties=props)

    async def next(
        self, match: Callable[[Message], bool], within_s: float, *, keep: bool = False
    ) -> Message:
        """The next message that ``match``es; others are dropped unless ``keep``. Raises
        ``TimeoutError`` after ``within_s`` seconds."""
        kept: list[Message] = []
        try:
            async with asyncio.timeout(within_s):
                while True:
                    msg = await self.inbox.get()
                    if match(msg):
                        return msg
                    if keep:
                        kept.append(msg)
        finally:
            for msg in kept:
                self.inbox.put_nowait(msg)

    def drain(self) -> list[Message]:
        out = []
        while not self.inbox.empty():
            out.append(self.inbox.get_nowait())
        return out
