"""The lean adapter: our own MQTT v5 client, the same :class:`Session` shape as the others, chosen
by ``mqtt.client = "lean"``. No third-party MQTT code: an :class:`asyncio.Protocol` that parses
straight from ``data_received`` into the hand-over queue, and "corks" its writes: everything
produced while one received chunk is handled (PUBACKs, PINGREQ, publishes released by PUBACKs)
and every :meth:`LeanSession.publish_many` leaves in ONE ``transport.write``.

Every byte from the broker is untrusted: any malformed or unexpected packet (QoS 2, an unknown
or duplicated property, a Topic Alias, a variable byte integer over 4 bytes, a length that does
not fit its packet, more than :data:`WITHHELD_MAX` unacknowledged QoS 1 messages, a packet over
:data:`MAX_INBOUND_PACKET`) ends the connection with an :class:`MqttError`, surfaced to
:meth:`~LeanSession.batches` after what was already queued. One exception, documented choice: an
inbound PUBLISH whose topic is not valid UTF-8 (or holds U+0000) is skipped but still
acknowledged and counted (``invalid_topics``): dropping the connection would make the broker
redeliver it to the persistent session on every reconnect, a poison message.

Flow control, both ways (as the gmqtt adapter):

- inbound: a QoS 1 message is acknowledged as soon as it is queued while the queue holds fewer
  than ``max_queued``; otherwise its PUBACK (and every later one: PUBACKs leave in order) is
  withheld until the consumer takes messages, so the broker stops at our Receive Maximum.
  Mosquitto 2.0.11 honours that only until the first withheld PUBACKs are released; then it can
  send its whole queue for us (see :data:`WITHHELD_MAX`, the hard bound). QoS 0 messages (no
  flow control) are dropped and counted (``dropped``) past ``max_queued + max_inflight``.
- outbound: at most the broker's Receive Maximum QoS 1 publishes unacknowledged; beyond it they
  wait in a local FIFO and leave as PUBACKs free slots (never lost). A publish waits (at most
  :data:`PUBLISH_WAIT_S`) while that FIFO is over :data:`MAX_FIFO` or the transport's write
  buffer is over its high-water mark.

Deliberately no Maximum Packet Size and no Topic Alias Maximum in CONNECT (see
:data:`gateway.mqtt.client.MAX_KEPT_PAYLOAD`). Payloads are never logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self, cast

from gateway.mqtt.client import (
    MAX_KEPT_PAYLOAD,
    Inbound,
    LastWill,
    MqttError,
    MqttSettings,
    Reply,
)

log = logging.getLogger(__name__)

__all__ = ["MAX_FIFO", "MAX_INBOUND_PACKET", "PUBLISH_WAIT_S", "LeanSession"]

#: Connect (TCP + CONNACK) and SUBACK time limit.
CONNECT_TIMEOUT_S = 10.0
#: How long a publish waits for room (local FIFO or paused transport) before MqttError.
PUBLISH_WAIT_S = 10.0
#: Outbound publishes waiting for the broker's Receive Maximum past which a publish waits.
MAX_FIFO = 10_000
#: Largest inbound packet we buffer (the broker forwards up to its 8 MiB max_packet_size): past
#: it the connection is dropped, so the receive buffer never holds more than this plus one read.
MAX_INBOUND_PACKET = 9 * 1024 * 1024
#: Most QoS 1 messages we hold unacknowledged (their PUBACKs withheld) before we drop the
#: connection (reason 0x93). A broker may not send more than our Receive Maximum, but Mosquitto
#: 2.0.11 does: once a PUBACK frees a slot it moves its whole queue for us in flight (up to its
#: ``max_queued_messages``, 10,000), measured by tests/gateway/test_mqtt_lean.py. So the bound
#: is the broker's queue plus its in-flight window, not our Receive Maximum; a broker past it is
#: not doing flow control at all.
WITHHELD_MAX = 20_000
#: Encoded topics kept (cleared when full).
TOPIC_CACHE_SIZE = 50_000
#: __aexit__: how long the local FIFO may take to drain, and the close handshake.
CLOSE_WAIT_S = 2.0

_CONNECT = 0x10
_CONNACK = 0x20
_PUBLISH = 0x30
_PUBACK = 0x40
_SUBSCRIBE = 0x82
_SUBACK = 0x90
_PINGREQ = b"\xc0\x00"
_PINGRESP = 0xD0
_DISCONNECT = 0xE0
_DISCONNECT_NORMAL = b"\xe0\x00"

_MALFORMED = 0x81
_PROTOCOL_ERROR = 0x82
_RECEIVE_MAXIMUM_EXCEEDED = 0x93

# MQTT v5 properties by value type (every property the standard defines)
_P_BYTE = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_P_U16 = frozenset({0x13, 0x21, 0x22, 0x23})
_P_U32 = frozenset({0x02, 0x11, 0x18, 0x27})
_P_VARINT = frozenset({0x0B})
_P_STRING = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F})
_P_BINARY = frozenset({0x09, 0x16})
_P_PAIR = 0x26
_P_EXPIRY = 0x02
_P_RESPONSE_TOPIC = 0x08
_P_CORRELATION = 0x09
_P_SERVER_KEEPALIVE = 0x13
_P_RECEIVE_MAXIMUM = 0x21
_P_TOPIC_ALIAS = 0x23
_P_MAXIMUM_QOS = 0x24
_P_RETAIN_AVAILABLE = 0x25
_P_MAXIMUM_PACKET = 0x27
_P_REASON_STRING = 0x1F

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

PropValue = int | bytes


class _ProtocolError(Exception):
    """The broker sent something we do not accept; ``reason`` is the DISCONNECT reason code."""

    def __init__(self, message: str, reason: int = _PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytearray, pos: int, end: int) -> tuple[int, int]:
    """(value, next position); -1 as value when ``buf`` ends (at ``end``) inside the integer.
    More than 4 bytes is malformed."""
    value = 0
    shift = 0
    for _ in range(4):
        if pos >= end:
            return -1, pos
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _ProtocolError("malformed variable byte integer", _MALFORMED)


def _remaining_length(buf: bytearray, pos: int, end: int) -> tuple[int, int]:
    """A fixed header's remaining length (-1 while incomplete) and where the body starts."""
    length, start = _read_varint(buf, pos, end)
    if length > MAX_INBOUND_PACKET:
        raise _ProtocolError("packet too large", 0x95)
    return length, start


def _int(props: dict[int, PropValue], ident: int, default: int) -> int:
    value = props.get(ident, default)
    return value if isinstance(value, int) else default


def _utf8(text: str, what: str) -> bytes:
    """``text`` as a length-prefixed MQTT string; MqttError when it cannot be one."""
    try:
        raw = text.encode()
    except UnicodeEncodeError as exc:
        raise MqttError(f"{what} is not valid UTF-8") from exc
    if len(raw) > 0xFFFF:
        raise MqttError(f"{what} is longer than 65535 bytes")
    if "\x00" in text:
        raise MqttError(f"{what} contains U+0000")
    return _U16.pack(len(raw)) + raw


def _binary(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise MqttError(f"{what} is longer than 65535 bytes")
    return _U16.pack(len(data)) + data


def _properties(buf: bytearray, pos: int, end: int) -> tuple[dict[int, PropValue], int]:
    """Parse a property block that must lie within ``buf[pos:end]``: the values by identifier
    (strings and binary data as bytes; user properties skipped) and the position after it.
    An unknown, duplicated or truncated property, or a Topic Alias, is a protocol error."""
    length, pos = _read_varint(buf, pos, end)
    if length < 0:
        raise _ProtocolError("truncated property length", _MALFORMED)
    stop = pos + length
    if stop > end:
        raise _ProtocolError("property block longer than its packet", _MALFORMED)
    found: dict[int, PropValue] = {}
    while pos < stop:
        ident = buf[pos]
        pos += 1
        value: PropValue
        if ident == _P_PAIR:
            for _ in range(2):
                if pos + 2 > stop:
                    raise _ProtocolError("truncated user property", _MALFORMED)
                pos += 2 + ((buf[pos] << 8) | buf[pos + 1])
            if pos > stop:
                raise _ProtocolError("truncated user property", _MALFORMED)
            continue
        if ident in _P_STRING or ident in _P_BINARY:
            if pos + 2 > stop:
                raise _ProtocolError("truncated property", _MALFORMED)
            size = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            if pos + size > stop:
                raise _ProtocolError("truncated property", _MALFORMED)
            value = bytes(buf[pos : pos + size])
            pos += size
        elif ident in _P_U32:
            if pos + 4 > stop:
                raise _ProtocolError("truncated property", _MALFORMED)
            value = _U32.unpack_from(buf, pos)[0]
            pos += 4
        elif ident in _P_U16:
            if ident == _P_TOPIC_ALIAS:
                raise _ProtocolError("topic alias, which we never allowed")
            if pos + 2 > stop:
                raise _ProtocolError("truncated property", _MALFORMED)
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif ident in _P_BYTE:
            if pos >= stop:
                raise _ProtocolError("truncated property", _MALFORMED)
            value = buf[pos]
            pos += 1
        elif ident in _P_VARINT:
            value, pos = _read_varint(buf, pos, stop)
            if value < 0:
                raise _ProtocolError("truncated property", _MALFORMED)
            continue  # subscription identifiers may repeat; we do not use them
        else:
            raise _ProtocolError(f"unknown property 0x{ident:02x}")
        if ident in found:
            raise _ProtocolError(f"property 0x{ident:02x} given twice")
        found[ident] = value
    return found, stop


def _reason_text(props: dict[int, PropValue]) -> str:
    """The broker's reason string for a log line or error (untrusted: repr, truncated)."""
    text = props.get(_P_REASON_STRING)
    if not isinstance(text, bytes):
        return ""
    return f" ({text[:200].decode(errors='replace')!r})"


def _topic_ok(topic: str) -> bool:
    return bool(topic) and "#" not in topic and "+" not in topic


class LeanSession(asyncio.Protocol):
    """One broker connection (MQTT v5, TCP_NODELAY, QoS 0/1). No reconnect: the runtime makes a
    new session per attempt. Counters: ``publish_failures`` (PUBACKs with a failure reason),
    ``dropped`` (QoS 0 messages past the queue bound), ``invalid_topics`` (skipped inbound
    messages)."""

    def __init__(
        self, settings: MqttSettings, *, will: LastWill | None = None, clean_start: bool = False
    ) -> None:
        self.settings = settings
        self._will = will
        self._clean_start = clean_start
        self._receive_max_ours = min(max(settings.max_inflight, 1), 0xFFFF)
        self._max_queued = max(settings.max_queued, 1)
        self._withheld_max = max(WITHHELD_MAX, self._receive_max_ours)
        self._keepalive = float(min(max(settings.keepalive, 0), 0xFFFF))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._started = False
        self._closing = False
        #: why the connection ended (or is ending); None while it is up
        self._error: MqttError | None = None
        self._closed: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[None] | None = None
        self._connected = False
        # inbound
        self._buf = bytearray()
        self._inbox: collections.deque[Inbound] = collections.deque()
        self._withheld: collections.deque[int] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        # outbound
        self._out: list[bytes] | None = None  # corked: what leaves in the next single write
        self._inflight: set[int] = set()
        self._next_id = 0
        #: QoS 1 publishes past the broker's receive maximum: (fixed header + topic, properties,
        #: payload); the packet id is given when one leaves
        self._fifo: collections.deque[tuple[bytes, bytes, bytes]] = collections.deque()
        self._room: asyncio.Future[None] | None = None  # resolved when publishers may go on
        self._paused = False
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._topics: dict[str, bytes] = {}
        # what the broker allows (CONNACK)
        self.receive_maximum = 0xFFFF
        self.maximum_packet_size = 0  # 0: no limit announced
        self._maximum_qos = 1
        self._retain_available = True
        # keepalive
        self._timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._last_sent = 0.0
        self._last_received = 0.0
        self._last_ping = 0.0
        # counters
        self.publish_failures = 0
        self.dropped = 0
        self.invalid_topics = 0

    # ------------------------------------------------------------------ connection

    async def __aenter__(self) -> Self:
        if self._started:
            raise MqttError("a session connects once; make a new one")
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closed = loop.create_future()
        self._connack = loop.create_future()
        connect = self._connect_packet()  # MqttError for a will or credentials that cannot be
        s = self.settings
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.create_connection(lambda: self, s.host, s.port)
                self._transport_write(connect)
                await self._connack
        except MqttError:
            self._abort()
            raise
        except TimeoutError as exc:
            self._abort()
            raise MqttError(f"connect to {s.host}:{s.port}: no CONNACK in time") from exc
        except OSError as exc:
            self._abort()
            raise MqttError(f"connect to {s.host}:{s.port} failed: {exc}") from exc
        except BaseException:
            self._abort()
            raise
        self._connected = True
        now = loop.time()
        self._last_received = self._last_sent = now
        self._arm_keepalive(now)
        return self

    def _connect_packet(self) -> bytes:
        s = self.settings
        flags = 0x02 if self._clean_start else 0
        props = (
            b"\x11"
            + _U32.pack(min(max(s.session_expiry_s, 0), 0xFFFFFFFF))
            + b"\x21"
            + _U16.pack(self._receive_max_ours)
        )
        payload = _utf8(s.client_id, "client id")
        will = self._will
        if will is not None:
            flags |= 0x04 | 0x08 | (0x20 if will.retain else 0)  # will, QoS 1, retain
            if not _topic_ok(will.topic):
                raise MqttError("invalid will topic")
            payload += b"\x00" + _utf8(will.topic, "will topic") + _binary(will.payload, "will")
        if s.username is not None:
            flags |= 0x80
            payload += _utf8(s.username, "username")
        if s.password is not None:
            flags |= 0x40
            payload += _binary(s.password.encode(), "password")
        keepalive = min(max(s.keepalive, 0), 0xFFFF)
        body = (
            b"\x00\x04MQTT\x05"
            + bytes((flags,))
            + _U16.pack(keepalive)
            + _varint(len(props))
            + props
            + payload
        )
        return bytes((_CONNECT,)) + _varint(len(body)) + body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport from loop.create_connection; uvloop's is not an asyncio.Transport
        # subclass (an isinstance check refused every connection under uvloop, the default loop)
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._connected = False
        if self._error is None:
            if self._closing:
                self._error = MqttError("session closed")
            else:
                detail = f": {exc}" if exc is not None else ""
                self._error = MqttError(f"connection to the broker lost{detail}")
        self._settle(self._error)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _settle(self, error: MqttError) -> None:
        """The connection is over (or being dropped): stop timers, fail every waiter, wake the
        consumer (who still gets what was queued first)."""
        for timer in (self._timer,):
            if timer is not None:
                timer.cancel()
        self._timer = None
        for future in (self._connack, *self._subacks.values()):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: no "never retrieved" warning if nobody waits
        self._wake_consumer()
        self._wake_publishers()

    def _fail(self, error: MqttError, reason: int | None = None) -> None:
        """Drop the connection now (protocol error, keepalive timeout)."""
        if self._error is None:
            self._error = error
        self._connected = False
        self._buf.clear()
        self._settle(self._error)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        out, self._out = self._out, None
        data = b"".join(out) if out else b""  # PUBACKs of messages the consumer will still get
        if reason is not None:
            data += bytes((_DISCONNECT, 1, reason))
        if data:
            with contextlib.suppress(Exception):
                transport.write(data)
        transport.close()
        # a peer that does not read would keep a closing transport open forever
        if self._loop is not None:
            self._abort_timer = self._loop.call_later(1.0, transport.abort)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """DISCONNECT (reason 0: no will) and close; bounded, never raises."""
        try:
            # publishes still waiting for the broker's receive maximum (a retained status)
            async with asyncio.timeout(CLOSE_WAIT_S):
                while self._fifo and self._error is None:
                    await self._wait_room()
        except TimeoutError:
            log.warning("closing with %d publishes not sent", len(self._fifo))
        except asyncio.CancelledError:
            self._closing = True
            self._abort()
            raise
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            out, self._out = self._out, None
            with contextlib.suppress(Exception):
                transport.write((b"".join(out) if out else b"") + _DISCONNECT_NORMAL)
            transport.close()
        if self._error is None:
            self._error = MqttError("session closed")
            self._settle(self._error)
        closed = self._closed
        if closed is not None and not closed.done() and self._transport is not None:
            try:
                await asyncio.wait_for(asyncio.shield(closed), CLOSE_WAIT_S)
            except TimeoutError:
                self._abort()
            except asyncio.CancelledError:
                self._abort()
                raise
        if self._abort_timer is not None:
            self._abort_timer.cancel()

    # ------------------------------------------------------------------ keepalive

    def _arm_keepalive(self, now: float) -> None:
        ka = self._keepalive
        if ka <= 0 or self._loop is None:
            return
        due = min(self._last_sent + ka, self._last_received + 1.5 * ka)
        if self._last_ping <= self._last_received:  # no PINGREQ since the broker last spoke
            due = min(due, self._last_received + ka)
        self._timer = self._loop.call_later(max(due - now, 0.01), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None or self._error is not None or self._loop is None:
            return
        now = self._loop.time()
        ka = self._keepalive
        silent = now - self._last_received
        if silent >= 1.5 * ka:
            self._fail(MqttError(f"keepalive: nothing from the broker for {silent:.1f}s"))
            if self._transport is not None:
                self._transport.abort()
            return
        if now - self._last_sent >= ka or (silent >= ka and self._last_ping <= self._last_received):
            self._last_ping = now
            self._transport_write(_PINGREQ)
        self._arm_keepalive(now)

    # ------------------------------------------------------------------ writing

    def _transport_write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None:
            transport.write(data)
            if self._loop is not None:
                self._last_sent = self._loop.time()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_publishers()

    def _wake_publishers(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)
        self._room = None

    def _wake_consumer(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        self._wakeup = None

    async def _wait_room(self) -> None:
        if self._room is None or self._room.done():
            self._room = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._room)

    def _busy(self) -> bool:
        return self._paused or len(self._fifo) >= MAX_FIFO

    async def _ready_to_publish(self) -> None:
        """Raise MqttError when not connected; wait (bounded) while the FIFO is over its bound
        or the transport's write buffer is full."""
        if self._error is not None or not self._connected:
            raise MqttError("not connected")
        if not self._busy():
            return
        try:
            async with asyncio.timeout(PUBLISH_WAIT_S):
                while self._busy():
                    await self._wait_room()
                    if self._error is not None:
                        raise MqttError("not connected")
        except TimeoutError as exc:
            raise MqttError("the broker is not taking our publishes") from exc

    def _topic_bytes(self, topic: str) -> bytes:
        encoded = self._topics.get(topic)
        if encoded is None:
            if not _topic_ok(topic):
                raise MqttError("invalid topic name (empty or a wildcard)")
            encoded = _utf8(topic, "topic")
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = encoded
        return encoded

    def _packet_id(self) -> int:
        inflight = self._inflight
        subacks = self._subacks
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in inflight and self._next_id not in subacks:
                return self._next_id
        raise MqttError("no free packet id")

    def _stage(
        self,
        out: list[bytes],
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        correlation: bytes | None,
    ) -> None:
        """Append one PUBLISH to ``out`` (or to the FIFO when the broker's receive maximum is
        reached); MqttError when this one cannot be sent."""
        if qos not in (0, 1):
            raise MqttError("only QoS 0 and 1")
        if qos > self._maximum_qos:
            raise MqttError("the broker does not accept QoS 1")
        if retain and not self._retain_available:
            raise MqttError("the broker does not accept retained messages")
        topic_b = self._topic_bytes(topic)
        if correlation is None:
            props = b"\x00"
        else:
            prop = b"\x09" + _binary(correlation, "correlation data")
            props = _varint(len(prop)) + prop
        body = len(topic_b) + (2 if qos else 0) + len(props) + len(payload)
        limit = self.maximum_packet_size
        if limit and 1 + len(_varint(body)) + body > limit:
            raise MqttError("publish bigger than the broker's maximum packet size")
        first = _PUBLISH | (qos << 1) | (1 if retain else 0)
        head = bytes((first,)) + _varint(body) + topic_b
        if not qos:
            out.append(head + props)
            out.append(payload)
        elif len(self._inflight) < self.receive_maximum and not self._fifo:
            pid = self._packet_id()
            self._inflight.add(pid)
            out.append(head + _U16.pack(pid) + props)
            out.append(payload)
        else:
            self._fifo.append((head, props, payload))

    def _release_fifo(self, out: list[bytes]) -> None:
        fifo = self._fifo
        inflight = self._inflight
        while fifo and len(inflight) < self.receive_maximum:
            head, props, payload = fifo.popleft()
            pid = self._packet_id()
            inflight.add(pid)
            out.append(head + _U16.pack(pid) + props)
            out.append(payload)
        self._wake_publishers()

    def _flush(self, out: list[bytes]) -> None:
        if out and self._transport is not None:
            self._transport_write(b"".join(out))

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> None:
        await self._ready_to_publish()
        out: list[bytes] = []
        self._stage(out, topic, payload, qos, retain, correlation_data)
        self._flush(out)

    async def publish_many(self, replies: Sequence[Reply]) -> list[MqttError | None]:
        """All replies built first, then ONE write (those past the broker's receive maximum wait
        in the FIFO). Not connected, or no room in time: that error for every reply."""
        try:
            await self._ready_to_publish()
        except MqttError as exc:
            return [exc] * len(replies)
        out: list[bytes] = []
        results: list[MqttError | None] = []
        stage = self._stage
        for topic, payload, correlation in replies:
            try:
                stage(out, topic, payload, 1, False, correlation)
            except MqttError as exc:
                results.append(exc)
            else:
                results.append(None)
        self._flush(out)
        return results

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        if self._error is not None or not self._connected:
            raise MqttError("not connected")
        if not filters:
            return
        if qos not in (0, 1):
            raise MqttError("only QoS 0 and 1")
        pid = self._packet_id()
        body = _U16.pack(pid) + b"\x00"
        for topic_filter in filters:
            if not topic_filter:
                raise MqttError("empty topic filter")
            body += _utf8(topic_filter, "topic filter") + bytes((qos,))
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._subacks[pid] = future
        try:
            self._transport_write(bytes((_SUBSCRIBE,)) + _varint(len(body)) + body)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reasons = await future
        except TimeoutError as exc:
            raise MqttError("no SUBACK in time") from exc
        finally:
            self._subacks.pop(pid, None)
        if len(reasons) != len(filters):
            raise MqttError("SUBACK does not match the SUBSCRIBE")
        refused = [f"{f!r}: 0x{r:02x}" for f, r in zip(filters, reasons, strict=True) if r >= 0x80]
        if refused:
            raise MqttError(f"subscription refused: {', '.join(refused)}")

    # ------------------------------------------------------------------ consuming

    def _took(self) -> None:
        """The consumer took messages: send withheld PUBACKs while the queue has room."""
        withheld = self._withheld
        if not withheld or self._transport is None or self._error is not None:
            return
        out: list[bytes] = []
        room = self._max_queued - (len(self._inbox) - len(withheld))
        while withheld and room > 0:
            out.append(b"\x40\x02" + _U16.pack(withheld.popleft()))
            room -= 1
        self._flush(out)

    def _lost(self) -> MqttError:
        return self._error or MqttError("connection to the broker lost")

    async def batches(self) -> AsyncIterator[list[Inbound]]:
        inbox = self._inbox
        while True:
            if not inbox:
                if self._error is not None:
                    raise self._lost()
                wakeup = asyncio.get_running_loop().create_future()
                self._wakeup = wakeup
                await wakeup
                continue
            batch = list(inbox)
            inbox.clear()
            self._took()
            yield batch

    async def messages(self) -> AsyncIterator[Inbound]:
        inbox = self._inbox
        while True:
            if not inbox:
                if self._error is not None:
                    raise self._lost()
                wakeup = asyncio.get_running_loop().create_future()
                self._wakeup = wakeup
                await wakeup
                continue
            item = inbox.popleft()
            self._took()
            yield item

    # ------------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        buf = self._buf
        buf += data
        loop = self._loop
        if loop is not None:
            self._last_received = loop.time()
        out: list[bytes] = []
        self._out = out
        queued = len(self._inbox)
        pos = 0
        try:
            end = len(buf)
            while end - pos >= 2:
                first = buf[pos]
                length, start = _remaining_length(buf, pos + 1, end)
                if length < 0:
                    break
                stop = start + length
                if stop > end:
                    break
                if first & 0xF0 == _PUBLISH:
                    self._on_publish(first, buf, start, stop, out)
                else:
                    self._on_control(first, buf, start, stop, out)
                pos = stop
                if self._out is not out:  # dropped (the broker's DISCONNECT, a refusal)
                    return
            if pos:
                del buf[:pos]
        except _ProtocolError as exc:
            buf.clear()
            self._fail(MqttError(f"protocol error from the broker: {exc}"), exc.reason)
            return
        finally:
            if len(self._inbox) != queued:
                self._wake_consumer()
        if self._out is out:
            self._out = None
            self._flush(out)

    def eof_received(self) -> bool | None:
        return False  # close the transport: the broker hung up

    def _on_publish(
        self, first: int, buf: bytearray, start: int, stop: int, out: list[bytes]
    ) -> None:
        qos = (first >> 1) & 0x03
        if qos > 1:
            raise _ProtocolError(f"PUBLISH with QoS {qos}")
        if not self._connected and self._connack is not None and not self._connack.done():
            raise _ProtocolError("PUBLISH before CONNACK")
        if start + 2 > stop:
            raise _ProtocolError("truncated PUBLISH", _MALFORMED)
        pos = start + 2 + ((buf[start] << 8) | buf[start + 1])
        if pos + (2 if qos else 0) > stop:
            raise _ProtocolError("truncated PUBLISH", _MALFORMED)
        if pos == start + 2:
            raise _ProtocolError("PUBLISH without a topic")
        raw_topic = buf[start + 2 : pos]
        pid = 0
        if qos:
            pid = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            if pid == 0:
                raise _ProtocolError("PUBLISH with packet id 0")
        if pos < stop and buf[pos] == 0:  # no properties: the common case of a plain publish
            props: dict[int, PropValue] = {}
            pos += 1
        else:
            props, pos = _properties(buf, pos, stop)
        try:
            topic = raw_topic.decode()
            valid = "\x00" not in topic
        except UnicodeDecodeError:
            valid = False
        inbox = self._inbox
        if not valid:
            self.invalid_topics += 1
            log.warning("skipped a message whose topic is not valid UTF-8 (acknowledged)")
        elif qos == 0 and len(inbox) >= self._max_queued + self._receive_max_ours:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("QoS 0 messages dropped, the queue is full: %d so far", self.dropped)
        else:
            response: str | None = None
            correlation: bytes | None = None
            expiry: int | None = None
            if props:
                raw_response = props.get(_P_RESPONSE_TOPIC)
                if isinstance(raw_response, bytes):
                    with contextlib.suppress(UnicodeDecodeError):
                        response = raw_response.decode()
                raw_correlation = props.get(_P_CORRELATION)
                if isinstance(raw_correlation, bytes):
                    correlation = raw_correlation
                raw_expiry = props.get(_P_EXPIRY)
                if isinstance(raw_expiry, int):
                    expiry = raw_expiry
            inbox.append(
                Inbound(
                    topic,
                    bytes(buf[pos : min(stop, pos + MAX_KEPT_PAYLOAD)]),
                    bool(first & 0x01),
                    response,
                    correlation,
                    expiry,
                )
            )
        if not qos:
            return
        withheld = self._withheld
        if withheld or (valid and len(inbox) > self._max_queued):
            if len(withheld) >= self._withheld_max:
                raise _ProtocolError("receive maximum exceeded", _RECEIVE_MAXIMUM_EXCEEDED)
            withheld.append(pid)
        else:
            out.append(b"\x40\x02" + _U16.pack(pid))

    def _on_control(
        self, first: int, buf: bytearray, start: int, stop: int, out: list[bytes]
    ) -> None:
        kind = first & 0xF0
        if first & 0x0F:
            raise _ProtocolError(f"packet 0x{first:02x} with reserved flags", _MALFORMED)
        if kind == _PUBACK:
            if stop - start < 2:
                raise _ProtocolError("truncated PUBACK", _MALFORMED)
            pid = (buf[start] << 8) | buf[start + 1]
            reason = buf[start + 2] if stop - start > 2 else 0
            if stop - start > 3:
                _properties(buf, start + 3, stop)
            if pid not in self._inflight:
                raise _ProtocolError("PUBACK for a packet id not in flight")
            self._inflight.discard(pid)
            if reason >= 0x80:
                self.publish_failures += 1
                log.warning("the broker refused a publish: reason 0x%02x", reason)
            if self._fifo:
                self._release_fifo(out)
        elif kind == _PINGRESP:
            if stop != start:
                raise _ProtocolError("PINGRESP with a body", _MALFORMED)
        elif kind == _CONNACK:
            self._on_connack(buf, start, stop)
        elif kind == _SUBACK:
            if stop - start < 3:
                raise _ProtocolError("truncated SUBACK", _MALFORMED)
            pid = (buf[start] << 8) | buf[start + 1]
            _, pos = _properties(buf, start + 2, stop)
            future = self._subacks.get(pid)
            if future is None:
                raise _ProtocolError("SUBACK for a packet id we did not use")
            if not future.done():
                future.set_result(list(buf[pos:stop]))
        elif kind == _DISCONNECT:
            reason = buf[start] if stop > start else 0
            props = _properties(buf, start + 1, stop)[0] if stop - start > 1 else {}
            self._fail(
                MqttError(f"the broker disconnected us: 0x{reason:02x}{_reason_text(props)}")
            )
        else:
            raise _ProtocolError(f"unexpected packet type 0x{first:02x}")

    def _on_connack(self, buf: bytearray, start: int, stop: int) -> None:
        future = self._connack
        if future is None or future.done() or self._connected:
            raise _ProtocolError("unexpected CONNACK")
        if stop - start < 2 or buf[start] & 0xFE:
            raise _ProtocolError("malformed CONNACK", _MALFORMED)
        reason = buf[start + 1]
        props = _properties(buf, start + 2, stop)[0] if stop - start > 2 else {}
        if reason != 0:
            error = MqttError(
                f"connection refused by the broker: 0x{reason:02x}{_reason_text(props)}"
            )
            self._fail(error)
            return
        receive_max = _int(props, _P_RECEIVE_MAXIMUM, 0xFFFF)
        packet_max = _int(props, _P_MAXIMUM_PACKET, 0)
        if receive_max == 0 or (_P_MAXIMUM_PACKET in props and packet_max == 0):
            raise _ProtocolError("CONNACK with a zero limit")
        self.receive_maximum = receive_max
        self.maximum_packet_size = packet_max
        if _P_SERVER_KEEPALIVE in props:
            self._keepalive = float(_int(props, _P_SERVER_KEEPALIVE, 0))
        self._maximum_qos = min(_int(props, _P_MAXIMUM_QOS, 2), 1)
        self._retain_available = _int(props, _P_RETAIN_AVAILABLE, 1) == 1
        future.set_result(None)
