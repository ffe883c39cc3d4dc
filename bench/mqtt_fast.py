"""A minimal asyncio MQTT client (v5, or 3.1.1) for load generation and the echo floor.

Only what the benchmarks need: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH at QoS 0 and 1 with
PUBACK both ways, PINGREQ/PINGRESP and DISCONNECT. It is an :class:`asyncio.Protocol`: an
inbound PUBLISH is handed to a plain callback straight from ``data_received`` (no queue, no task
per message), and everything written while a received chunk is being processed (PUBACKs, replies
the callback publishes) leaves in one ``write``. TCP_NODELAY is set on the socket (FIELD-NOTES:
without it a round trip through mosquitto costs ~44 ms).

Not a general-purpose client: no reconnect, no QoS 2, no session resumption, properties other
than the broker's Receive Maximum are skipped. Outbound QoS 1 publishes beyond the broker's
Receive Maximum wait in a local queue until a PUBACK frees a slot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
from collections.abc import Callable, Sequence

__all__ = ["MqttClient", "MqttProtocolError"]

OnMessage = Callable[[str, bytes], None]

_CONNECT = 0x10
_CONNACK = 0x20
_PUBLISH = 0x30
_PUBACK = 0x40
_SUBSCRIBE = 0x82
_SUBACK = 0x90
_PINGREQ = b"\xc0\x00"
_PINGRESP = 0xD0
_DISCONNECT = b"\xe0\x00"

# MQTT v5 property identifiers by value type (for skipping what we do not use)
_PROP_BYTE = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_PROP_U16 = frozenset({0x13, 0x21, 0x22, 0x23})
_PROP_U32 = frozenset({0x02, 0x11, 0x18, 0x27})
_PROP_VARINT = frozenset({0x0B})
_PROP_STRING = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F})
_PROP_BINARY = frozenset({0x09, 0x16})
_PROP_PAIR = frozenset({0x26})
_RECEIVE_MAXIMUM = 0x21


class MqttProtocolError(RuntimeError):
    """The broker refused us or sent something this client does not understand."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None when the buffer ends inside the integer."""
    value = 0
    shift = 0
    for _ in range(4):
        if pos >= len(buf):
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MqttProtocolError("malformed variable byte integer")


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _properties(buf: bytes | bytearray, pos: int) -> tuple[dict[int, int], int]:
    """Parse a v5 property block; returns the integer-valued ones and the next position."""
    parsed = _read_varint(buf, pos)
    if parsed is None:
        raise MqttProtocolError("truncated properties")
    length, pos = parsed
    end = pos + length
    found: dict[int, int] = {}
    while pos < end:
        ident = buf[pos]
        pos += 1
        if ident in _PROP_BYTE:
            found[ident] = buf[pos]
            pos += 1
        elif ident in _PROP_U16:
            found[ident] = struct.unpack_from("!H", buf, pos)[0]
            pos += 2
        elif ident in _PROP_U32:
            found[ident] = struct.unpack_from("!I", buf, pos)[0]
            pos += 4
        elif ident in _PROP_VARINT:
            value = _read_varint(buf, pos)
            if value is None:
                raise MqttProtocolError("truncated property")
            found[ident], pos = value
        elif ident in _PROP_STRING or ident in _PROP_BINARY:
            pos += 2 + struct.unpack_from("!H", buf, pos)[0]
        elif ident in _PROP_PAIR:
            pos += 2 + struct.unpack_from("!H", buf, pos)[0]
            pos += 2 + struct.unpack_from("!H", buf, pos)[0]
        else:
            raise MqttProtocolError(f"unknown property 0x{ident:02x}")
    return found, end


class MqttClient(asyncio.Protocol):
    """One connection. Create it, ``await connect(...)``, then ``subscribe``/``publish``."""

    def __init__(
        self,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        clean_start: bool = True,
        version: int = 5,
        on_message: OnMessage | None = None,
    ) -> None:
        if version not in (4, 5):
            raise ValueError("MQTT version must be 4 (3.1.1) or 5")
        self.client_id = client_id
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.v5 = version == 5
        self.on_message: OnMessage = on_message or (lambda _t, _p: None)
        self.transport: asyncio.Transport | None = None
        self.receive_maximum = 65535
        self.received = 0
        self.sent = 0
        self._buf = bytearray()
        self._out: list[bytes] | None = None  # corked while a chunk is processed
        self._next_id = 0
        self._inflight: set[int] = set()
        self._queued: collections.deque[tuple[bytes, bytes, bool]] = collections.deque()
        self._acks: dict[int, asyncio.Future[list[int]]] = {}
        self._connack: asyncio.Future[None] | None = None
        self._ping: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] | None = None
        self._topics: dict[str, bytes] = {}

    # ------------------------------------------------------------------ connection

    async def connect(self, host: str, port: int, limit_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        self._connack = loop.create_future()
        async with asyncio.timeout(limit_s):
            await loop.create_connection(lambda: self, host, port)
            await self._connack
        self._schedule_ping()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self._connect_packet())

    def _connect_packet(self) -> bytes:
        flags = 0x02 if self.clean_start else 0
        payload = _string(self.client_id)
        if self.username is not None:
            flags |= 0x80
            payload += _string(self.username)
        if self.password is not None:
            flags |= 0x40
            payload += _string(self.password)
        body = _string("MQTT") + bytes((5 if self.v5 else 4, flags))
        body += struct.pack("!H", self.keepalive)
        if self.v5:
            body += b"\x00"  # no properties: Receive Maximum 65535, no session expiry
        return _packet(_CONNECT, body + payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._ping is not None:
            self._ping.cancel()
        error = exc or ConnectionResetError("connection closed")
        for fut in (self._connack, *self._acks.values()):
            if fut is not None and not fut.done():
                fut.set_exception(error)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def _schedule_ping(self) -> None:
        if self.keepalive <= 0 or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        self._ping = loop.call_later(self.keepalive * 0.5, self._send_ping)

    def _send_ping(self) -> None:
        if self.transport is not None:
            self._write(_PINGREQ)
            self._schedule_ping()

    async def disconnect(self, limit_s: float = 5.0) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self.transport is None:
            return
        self.transport.write(_DISCONNECT)
        self.transport.close()
        if self.closed is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.closed), limit_s)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ outbound

    def _write(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._inflight and self._next_id not in self._acks:
                return self._next_id

    def topic_bytes(self, topic: str) -> bytes:
        """The length-prefixed encoding of ``topic`` (cached: load generators reuse topics)."""
        encoded = self._topics.get(topic)
        if encoded is None:
            encoded = _string(topic)
            if len(self._topics) < 10_000:
                self._topics[topic] = encoded
        return encoded

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Send (or queue, when the broker's Receive Maximum is reached) one PUBLISH."""
        if qos not in (0, 1):
            raise ValueError("only QoS 0 and 1")
        encoded = self.topic_bytes(topic)
        if qos == 1 and len(self._inflight) >= self.receive_maximum:
            self._queued.append((encoded, payload, retain))
            return
        self._send_publish(encoded, payload, qos, retain)

    def _send_publish(self, encoded_topic: bytes, payload: bytes, qos: int, retain: bool) -> None:
        first = _PUBLISH | (qos << 1) | (1 if retain else 0)
        head = encoded_topic
        if qos:
            pid = self._packet_id()
            self._inflight.add(pid)
            head += struct.pack("!H", pid)
        if self.v5:
            head += b"\x00"
        self._write(bytes((first,)) + _varint(len(head) + len(payload)) + head + payload)
        self.sent += 1

    async def subscribe(
        self, filters: Sequence[str] | str, qos: int = 1, limit_s: float = 10.0
    ) -> list[int]:
        """Subscribe and return the SUBACK reason codes (one per filter)."""
        items = [filters] if isinstance(filters, str) else list(filters)
        pid = self._packet_id()
        body = struct.pack("!H", pid) + (b"\x00" if self.v5 else b"")
        for item in items:
            body += _string(item) + bytes((qos,))
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        self._write(_packet(_SUBSCRIBE, body))
        try:
            async with asyncio.timeout(limit_s):
                return await fut
        finally:
            self._acks.pop(pid, None)

    @property
    def pending_acks(self) -> int:
        """QoS 1 publishes sent or queued and not yet acknowledged."""
        return len(self._inflight) + len(self._queued)

    # ------------------------------------------------------------------ inbound

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        self._out = []
        try:
            pos = 0
            end = len(buf)
            while end - pos >= 2:
                first = buf[pos]
                parsed = _read_varint(buf, pos + 1)
                if parsed is None:
                    break
                length, start = parsed
                stop = start + length
                if stop > end:
                    break
                self._dispatch(first, buf, start, stop)
                pos = stop
            if pos:
                del buf[:pos]
        finally:
            out, self._out = self._out, None
            if out and self.transport is not None:
                self.transport.write(b"".join(out))

    def _dispatch(self, first: int, buf: bytearray, start: int, stop: int) -> None:
        kind = first & 0xF0
        if kind == _PUBLISH:
            self._on_publish(first, buf, start, stop)
        elif kind == _PUBACK:
            pid = (buf[start] << 8) | buf[start + 1]
            self._inflight.discard(pid)
            while self._queued and len(self._inflight) < self.receive_maximum:
                topic, payload, retain = self._queued.popleft()
                self._send_publish(topic, payload, 1, retain)
        elif kind == _SUBACK:
            pid = (buf[start] << 8) | buf[start + 1]
            pos = start + 2
            if self.v5:
                _, pos = _properties(buf, pos)
            fut = self._acks.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(list(buf[pos:stop]))
        elif kind == _CONNACK:
            self._on_connack(buf, start, stop)
        elif kind == _PINGRESP:
            pass
        elif kind == 0xE0:  # DISCONNECT from the broker
            reason = buf[start] if stop > start else 0
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(MqttProtocolError(f"disconnected: 0x{reason:02x}"))
        else:
            raise MqttProtocolError(f"unexpected packet type 0x{first:02x}")

    def _on_connack(self, buf: bytearray, start: int, stop: int) -> None:
        reason = buf[start + 1]
        fut = self._connack
        if fut is None or fut.done():
            return
        if reason != 0:
            refused = f"{self.client_id}: CONNACK refused 0x{reason:02x}"
            fut.set_exception(MqttProtocolError(refused))
            return
        if self.v5 and stop > start + 2:
            props, _ = _properties(buf, start + 2)
            self.receive_maximum = props.get(_RECEIVE_MAXIMUM, 65535)
        fut.set_result(None)

    def _on_publish(self, first: int, buf: bytearray, start: int, stop: int) -> None:
        tlen = (buf[start] << 8) | buf[start + 1]
        pos = start + 2 + tlen
        topic = buf[start + 2 : pos].decode()
        qos = (first >> 1) & 0x03
        if qos:
            pid_bytes = bytes(buf[pos : pos + 2])
            pos += 2
            self._write(b"\x40\x02" + pid_bytes)
        if self.v5:
            plen_parsed = _read_varint(buf, pos)
            if plen_parsed is None:
                raise MqttProtocolError("truncated publish properties")
            plen, pos = plen_parsed
            pos += plen
        self.received += 1
        self.on_message(topic, bytes(buf[pos:stop]))


async def connect_many(
    clients: Sequence[MqttClient], host: str, port: int, *, parallel: int = 50
) -> None:
    """Connect ``clients`` with at most ``parallel`` handshakes in flight."""
    gate = asyncio.Semaphore(parallel)

    async def one(client: MqttClient) -> None:
        async with gate:
            await client.connect(host, port)

    await asyncio.gather(*(one(c) for c in clients))
