"""The lean MQTT v5 adapter (gateway/mqtt/client_lean.py) against a real private Mosquitto, and
against a fake "broker" (a plain asyncio server) for what a real one never sends: malformed
packets must close the session with MqttError, not hang it or grow its memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt import client_lean
from gateway.mqtt.client import MAX_KEPT_PAYLOAD, Inbound, LastWill, MqttError, MqttSettings, kept
from gateway.mqtt.client_lean import LeanSession
from tests.broker import PrivateBroker

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
HOST = "127.0.0.1"


# ---------------------------------------------------------------------- helpers


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """An anonymous broker (this file is about the client, not the ACL) whose receive maximum
    for clients is 20, so the outbound FIFO is easy to reach."""
    b = PrivateBroker(tmp_path / "broker", anonymous=True)
    conf = b.conf_path.read_text()
    assert "max_inflight_messages 1000" in conf
    b.conf_path.write_text(conf.replace("max_inflight_messages 1000", "max_inflight_messages 20"))
    b.start()
    try:
        yield b
    finally:
        if b.proc is not None and b.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(b.proc.pid, signal.SIGCONT)
        b.stop()


def settings(port: int, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {"host": HOST, "port": port, "client_id": "lean-gw", "keepalive": 30}
    base.update(kw)
    return MqttSettings(**base)


def peer(b: PrivateBroker, name: str = "peer") -> aiomqtt.Client:
    return aiomqtt.Client(
        b.host,
        b.port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    )


async def take(session: LeanSession, count: int, timeout: float = 10.0) -> list[Inbound]:
    got: list[Inbound] = []
    async with asyncio.timeout(timeout):
        async for batch in session.batches():
            got.extend(batch)
            if len(got) >= count:
                return got
    return got


async def until_error(session: LeanSession, timeout: float = 5.0) -> tuple[list[Inbound], str]:
    """Everything ``batches()`` yields before its MqttError (which must come within
    ``timeout``), and that error's text."""
    got: list[Inbound] = []
    try:
        async with asyncio.timeout(timeout):
            async for batch in session.batches():
                got.extend(batch)
    except MqttError as exc:
        return got, str(exc)
    raise AssertionError("batches() ended without MqttError")


async def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def peer_messages(client: aiomqtt.Client, count: int, timeout: float = 10.0) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            out.append(message)
            if len(out) >= count:
                break
    return out


def count_writes(session: LeanSession, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the session's transport so every write is recorded (its size)."""
    transport = session._transport
    assert transport is not None
    sizes: list[int] = []
    original = transport.write

    def write(data: bytes | bytearray | memoryview) -> None:
        sizes.append(len(data))
        original(data)

    monkeypatch.setattr(transport, "write", write)
    return sizes


# ---------------------------------------------------------------------- a real broker


async def test_round_trip_with_properties_and_corked_replies(
    broker: PrivateBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LeanSession(settings(broker.port)) as session, peer(broker) as other:
        assert session.receive_maximum == 20  # the broker's, from CONNACK
        await session.subscribe(["req/#"])
        await other.subscribe("resp/#", qos=1)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "resp/pos-1"
        props.CorrelationData = b"\x00corr\xff"
        props.MessageExpiryInterval = 30
        await other.publish("req/pos-1/purchase", b'{"a":1}', qos=1, properties=props)
        await other.publish("req/pos-1/plain", b"", qos=1)
        first, second = await take(session, 2)
        assert first.topic == "req/pos-1/purchase"
        assert first.payload == b'{"a":1}'
        assert first.response_topic == "resp/pos-1"
        assert first.correlation_data == b"\x00corr\xff"
        assert first.expiry_s is not None and 25 <= first.expiry_s <= 30
        assert first.retain is False
        assert (second.topic, second.payload, second.response_topic) == (
            "req/pos-1/plain",
            b"",
            None,
        )
        assert second.correlation_data is None and second.expiry_s is None

        writes = count_writes(session, monkeypatch)
        replies = [(f"resp/pos-1/{i}", f"reply {i}".encode(), f"c{i}".encode()) for i in range(10)]
        assert await session.publish_many(replies) == [None] * 10
        assert len(writes) == 1  # ten replies, one send
        got = await peer_messages(other, 10)
        assert [m.topic.value for m in got] == [r[0] for r in replies]
        assert [m.payload for m in got] == [r[1] for r in replies]
        assert [m.properties.CorrelationData for m in got] == [r[2] for r in replies]


async def test_bad_reply_fails_alone(broker: PrivateBroker) -> None:
    """A wildcard, empty or non-UTF-8 topic or a packet over the broker's Maximum Packet Size
    (8 MiB) fails that reply only; the connection and the other replies are fine."""
    async with LeanSession(settings(broker.port)) as session, peer(broker) as other:
        assert session.maximum_packet_size == 8 * 1024 * 1024
        await other.subscribe("resp/#", qos=1)
        replies = [
            ("resp/a", b"1", None),
            ("resp/#", b"wildcard", None),
            ("", b"empty", None),
            ("resp/\udcff", b"surrogate", None),
            ("resp/big", b"x" * (8 * 1024 * 1024), None),
            ("resp/b", b"2", b"c" * 70_000),  # correlation data over 65535 bytes
            ("resp/c", b"3", None),
        ]
        results = await session.publish_many(replies)
        assert results[0] is None and results[6] is None
        assert all(isinstance(r, MqttError) for r in results[1:6])
        got = await peer_messages(other, 2)
        assert [(m.topic.value, m.payload) for m in got] == [("resp/a", b"1"), ("resp/c", b"3")]
        with pytest.raises(MqttError):
            await session.publish("resp/+", b"x")


async def test_retained_publish_is_retained(broker: PrivateBroker) -> None:
    async with LeanSession(settings(broker.port)) as session:
        await session.publish("status/gw", b"online", retain=True)
        await session.publish("status/other", b"not kept", retain=False)
    async with peer(broker, "late") as late:
        await late.subscribe("status/#", qos=1)
        got = await peer_messages(late, 1)
        assert got[0].topic.value == "status/gw"
        assert got[0].payload == b"online"
        assert got[0].retain is True
        with pytest.raises(TimeoutError):
            await peer_messages(late, 1, timeout=0.5)  # the non-retained one is not there


async def test_will_is_published_when_the_connection_dies(broker: PrivateBroker) -> None:
    async with peer(broker) as watcher:
        await watcher.subscribe("status/gw", qos=1)
        will = LastWill("status/gw", b"offline")
        session = LeanSession(settings(broker.port), will=will)
        async with session:
            await session.publish("status/gw", b"online", retain=True)
            got = await peer_messages(watcher, 1)
            assert got[0].payload == b"online"
            assert session._transport is not None
            session._transport.abort()
            got = await peer_messages(watcher, 1)
            assert got[0].payload == b"offline"
            assert got[0].topic.value == "status/gw"
            with pytest.raises(MqttError, match="not connected"):
                await session.publish("status/gw", b"x")
        # and the will was retained
    async with peer(broker, "late") as late:
        await late.subscribe("status/gw", qos=1)
        got = await peer_messages(late, 1)
        assert (got[0].payload, got[0].retain) == (b"offline", True)


async def test_clean_disconnect_sends_no_will(broker: PrivateBroker) -> None:
    async with peer(broker) as watcher:
        await watcher.subscribe("status/gw", qos=1)
        async with LeanSession(settings(broker.port), will=LastWill("status/gw", b"offline")):
            pass
        with pytest.raises(TimeoutError):
            await peer_messages(watcher, 1, timeout=1.0)


async def test_back_pressure_stops_the_broker_and_loses_nothing(broker: PrivateBroker) -> None:
    max_queued, inflight, sent = 5, 10, 200
    s = settings(broker.port, max_queued=max_queued, max_inflight=inflight)
    async with LeanSession(s) as session, peer(broker) as other:
        await session.subscribe(["req/#"])
        for i in range(sent):
            await other.publish("req/t", str(i).encode(), qos=1)
        # nobody reads: the broker stops at our receive maximum of withheld PUBACKs
        await wait_for(lambda: len(session._inbox) >= max_queued + inflight)
        await asyncio.sleep(0.5)
        assert len(session._inbox) == max_queued + inflight
        assert len(session._withheld) == inflight
        got = await take(session, sent)
        assert [m.payload for m in got] == [str(i).encode() for i in range(sent)]
        assert len(session._withheld) == 0
        with pytest.raises(TimeoutError):  # and nothing more (no duplicate)
            await take(session, 1, timeout=0.5)


async def test_publish_many_beyond_the_brokers_receive_maximum(broker: PrivateBroker) -> None:
    count = 500
    async with LeanSession(settings(broker.port)) as session, peer(broker) as other:
        assert session.receive_maximum == 20
        await other.subscribe("resp/#", qos=1)
        replies = [(f"resp/{i % 7}", str(i).encode(), None) for i in range(count)]
        results = await session.publish_many(replies[:250])
        results += await session.publish_many(replies[250:])
        assert results == [None] * count
        assert len(session._inflight) <= 20
        assert len(session._fifo) > 0  # the rest waits for PUBACKs, locally
        got = await peer_messages(other, count)
        assert [m.payload for m in got] == [r[1] for r in replies]
        await wait_for(lambda: not session._fifo and not session._inflight)
        assert session.publish_failures == 0


async def test_broker_killed(broker: PrivateBroker) -> None:
    session = LeanSession(settings(broker.port))
    async with session:
        await session.subscribe(["req/#"])
        async with peer(broker) as other:
            for i in range(3):
                await other.publish("req/t", str(i).encode(), qos=1)
        await wait_for(lambda: len(session._inbox) == 3)
        broker.kill()
        await wait_for(lambda: session._error is not None)
        got, _ = await until_error(session)
        assert [m.payload for m in got] == [b"0", b"1", b"2"]  # what was queued comes first
        with pytest.raises(MqttError, match="not connected"):
            await session.publish("resp/x", b"y")
        results = await session.publish_many([("resp/x", b"y", None)])
        assert len(results) == 1 and isinstance(results[0], MqttError)
        with pytest.raises(MqttError):
            async for _ in session.messages():
                pass
        started = time.monotonic()
    assert time.monotonic() - started < 3  # __aexit__ on a dead connection: quick, no raise


async def test_big_payload_is_truncated_and_the_next_still_arrives(broker: PrivateBroker) -> None:
    big = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    async with LeanSession(settings(broker.port)) as session, peer(broker) as other:
        await session.subscribe(["req/#"])
        await other.publish("req/big", big, qos=1)
        await other.publish("req/small", b"small", qos=1)
        first, second = await take(session, 2)
        assert first.topic == "req/big"
        assert first.payload == kept(big)
        assert len(first.payload) == MAX_KEPT_PAYLOAD
        assert (second.topic, second.payload) == ("req/small", b"small")
        assert len(session._buf) == 0


async def test_keepalive_detects_a_frozen_broker(broker: PrivateBroker) -> None:
    async with LeanSession(settings(broker.port, keepalive=1)) as session:
        await session.subscribe(["req/#"])
        started = time.monotonic()
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            _, error = await until_error(session)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        elapsed = time.monotonic() - started
        assert "keepalive" in error
        assert 1.4 <= elapsed < 3.5
        with pytest.raises(MqttError):
            await session.publish("resp/x", b"y")


async def test_keepalive_pings_an_idle_connection(broker: PrivateBroker) -> None:
    async with LeanSession(settings(broker.port, keepalive=1)) as session:
        await asyncio.sleep(3.5)  # past 1.5 x keepalive: only PINGREQ/PINGRESP kept it up
        assert session._error is None
        await session.subscribe(["req/#"])


async def test_refused_and_unreachable(broker: PrivateBroker, tmp_path: Path) -> None:
    with pytest.raises(MqttError):
        async with LeanSession(settings(broker.port, client_id="x" * 70_000)):
            pass
    secured = PrivateBroker(tmp_path / "secured", users={"gateway": "right"})
    with secured:
        bad = settings(secured.port, username="gateway", password="wrong", client_id="gateway")
        with pytest.raises(MqttError, match="refused"):
            async with LeanSession(bad):
                pass
        good = settings(secured.port, username="gateway", password="right", client_id="gateway")
        async with LeanSession(good) as session:
            await session.subscribe(["onecard/v1/t/+/req/#"])
    with pytest.raises(MqttError, match="failed"):
        async with LeanSession(settings(secured.port)):  # stopped: nothing listens
            pass


# ---------------------------------------------------------------------- a fake broker

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CONNACK = b"\x20\x03\x00\x00\x00"


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


def publish(topic: bytes, payload: bytes, *, pid: int = 0, props: bytes = b"\x00") -> bytes:
    first = 0x32 if pid else 0x30
    body = struct.pack("!H", len(topic)) + topic
    if pid:
        body += struct.pack("!H", pid)
    body += props + payload
    return bytes((first,)) + varint(len(body)) + body


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@contextlib.asynccontextmanager
async def fake_broker(handler: Handler) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server that reads CONNECT, then runs ``handler``; yields its port and everything the
    client sent after CONNECT (filled once the client's connection ends)."""
    received: list[bytes] = []
    tasks: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            first, _ = await read_packet(reader)
            assert first == 0x10
            await handler(reader, writer)
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(5):
                    while data := await reader.read(65536):
                        received.append(data)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, received
    finally:
        server.close()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 6)
        await server.wait_closed()


def sends(*chunks: bytes) -> Handler:
    async def handler(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()

    return handler


async def expect_protocol_error(port: int, match: str = "protocol error") -> list[Inbound]:
    """Connect to the fake broker and read until MqttError (within 3 s): what came before."""
    session = LeanSession(settings(port))
    async with session:
        got, error = await until_error(session, 3)
        assert match in error
        assert len(session._buf) == 0
    return got


@pytest.mark.parametrize(
    ("name", "garbage"),
    [
        ("reserved packet type", b"\x00\x00"),
        ("qos 2", b"\x34" + publish(b"req/t", b"x", pid=1)[1:]),
        ("qos 3", b"\x36" + publish(b"req/t", b"x", pid=1)[1:]),
        ("unknown property", publish(b"req/t", b"x", pid=1, props=b"\x02\x7f\x00")),
        ("topic alias", publish(b"req/t", b"x", pid=1, props=b"\x03\x23\x00\x01")),
        ("varint over 4 bytes", b"\x30\xff\xff\xff\xff\x7f"),
        ("property varint over 4 bytes", publish(b"t", b"", props=b"\xff\xff\xff\xff\x7f")),
        ("property longer than packet", publish(b"t", b"", props=b"\x10\x02")),
        ("truncated string property", publish(b"t", b"", props=b"\x04\x08\x00\x09a")),
        ("truncated user property", publish(b"t", b"", props=b"\x05\x26\x00\x01a\x00")),
        (
            "duplicate property",
            publish(b"t", b"", props=b"\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x01"),
        ),
        ("topic longer than packet", b"\x30\x03\x00\x09a"),
        ("empty topic", publish(b"", b"x")),
        ("packet id 0", b"\x32\x06\x00\x01t\x00\x00\x00"),
        ("puback not in flight", b"\x40\x02\x00\x05"),
        ("second connack", CONNACK),
        ("pubrel", b"\x62\x02\x00\x01"),
        ("suback not ours", b"\x90\x03\x00\x09\x00"),
    ],
)
async def test_malformed_input_closes_the_session(name: str, garbage: bytes) -> None:
    good = publish(b"req/ok", b"before", pid=1)
    async with fake_broker(sends(CONNACK, good, garbage)) as (port, received):
        got = await expect_protocol_error(port)
    assert [m.payload for m in got] == [b"before"]  # what came before still reaches the consumer
    sent = b"".join(received)
    assert sent.startswith(b"\x40\x02\x00\x01")  # its PUBACK left before the DISCONNECT
    assert b"\xe0\x01" in sent  # DISCONNECT with a reason (malformed / protocol error)


async def test_huge_packet_is_refused_from_its_header() -> None:
    """A 256 MiB remaining length: the session drops the connection after the header, without
    buffering what follows (the fake broker keeps streaming)."""
    streamed = 0

    async def flood(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal streamed
        writer.write(CONNACK + b"\x30\xff\xff\xff\x7f" + b"\x00\x01t\x00")
        chunk = b"z" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(4096):
                writer.write(chunk)
                await writer.drain()
                streamed += len(chunk)

    async with fake_broker(flood) as (port, _):
        await expect_protocol_error(port, "too large")
    assert streamed < 64 * 1024 * 1024


async def test_slow_big_packet_is_parsed_in_linear_time() -> None:
    """An 8 MiB publish in 4 KiB pieces: each piece only appends to the buffer."""
    big = publish(b"req/big", b"b" * (8 * 1024 * 1024), pid=3)

    async def trickle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CONNACK)
        for i in range(0, len(big), 4096):
            writer.write(big[i : i + 4096])
        writer.write(publish(b"req/small", b"s", pid=4))
        await writer.drain()

    async with fake_broker(trickle) as (port, received):
        session = LeanSession(settings(port))
        async with session:
            started = time.process_time()
            got = await take(session, 2)
            assert time.process_time() - started < 2.0
    assert [m.topic for m in got] == ["req/big", "req/small"]
    assert got[0].payload == b"b" * MAX_KEPT_PAYLOAD
    assert b"".join(received).startswith(b"\x40\x02\x00\x03\x40\x02\x00\x04")


async def test_invalid_utf8_is_skipped_but_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Documented choice: a message whose topic is not UTF-8 is skipped and acknowledged (else
    the broker would redeliver it on every reconnect); a response topic that is not UTF-8
    becomes None. All PUBACKs of one chunk leave in one write, in order."""
    chunk = (
        publish(b"req/\xff\xfe", b"bad", pid=7)
        + publish(b"req/\x00nul", b"nul", pid=8)
        + publish(b"req/ok", b"good", pid=9, props=b"\x06\x08\x00\x03r\xffx")
    )
    ready = asyncio.Event()

    async def handler(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CONNACK)
        await ready.wait()
        writer.write(chunk)

    async with fake_broker(handler) as (port, received):
        session = LeanSession(settings(port))
        async with session:
            writes = count_writes(session, monkeypatch)
            ready.set()
            (got,) = await take(session, 1)
            assert (got.topic, got.payload, got.response_topic) == ("req/ok", b"good", None)
            assert session.invalid_topics == 2
            assert writes == [12]  # three PUBACKs, one write
    sent = b"".join(received)
    assert sent.startswith(b"\x40\x02\x00\x07\x40\x02\x00\x08\x40\x02\x00\x09")
    assert sent.endswith(b"\xe0\x00")  # our DISCONNECT, normal


async def test_skips_known_properties() -> None:
    props = (
        b"\x01\x01"  # payload format
        + b"\x02\x00\x00\x00\x09"  # expiry
        + b"\x03\x00\x04json"  # content type
        + b"\x0b\x81\x01"  # subscription identifier (varint 129)
        + b"\x26\x00\x01k\x00\x01v"  # user property
        + b"\x26\x00\x01k\x00\x02v2"  # repeated
        + b"\x09\x00\x02\xca\xfe"  # correlation data
    )
    packet = publish(b"req/p", b"payload", pid=2, props=varint(len(props)) + props)
    async with fake_broker(sends(CONNACK, packet)) as (port, _), LeanSession(settings(port)) as s:
        (got,) = await take(s, 1)
    assert got.expiry_s == 9
    assert got.correlation_data == b"\xca\xfe"
    assert got.payload == b"payload"


async def test_unbounded_sending_broker_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """max_queued 1: after the first message every PUBACK is withheld; a broker that sends more
    than WITHHELD_MAX unacknowledged messages is not doing flow control: dropped (0x93)."""
    monkeypatch.setattr(client_lean, "WITHHELD_MAX", 50)
    flood = b"".join(publish(b"req/t", str(i).encode(), pid=i) for i in range(1, 100))
    async with fake_broker(sends(CONNACK, flood)) as (port, received):
        session = LeanSession(settings(port, max_queued=1, max_inflight=2))
        async with session:
            got, error = await until_error(session, 3)
            assert "receive maximum" in error
            assert len(got) == 52  # one acknowledged, 50 withheld, the one that broke the bound
    sent = b"".join(received)
    assert sent.startswith(b"\x40\x02\x00\x01")  # only the first one was acknowledged
    assert b"\x40\x02\x00\x02" not in sent
    assert b"\xe0\x01\x93" in sent


async def test_connack_limits_and_server_keepalive() -> None:
    """The broker's Maximum Packet Size, Receive Maximum and Server Keep Alive are obeyed."""
    props = b"\x27\x00\x00\x00\x40" + b"\x21\x00\x02" + b"\x13\x00\x02"  # 64 bytes, 2, 2 s
    connack = b"\x20" + varint(2 + 1 + len(props)) + b"\x00\x00" + varint(len(props)) + props

    async with fake_broker(sends(connack)) as (port, received):
        session = LeanSession(settings(port, keepalive=60))
        async with session:
            assert session.maximum_packet_size == 64
            assert session.receive_maximum == 2
            results = await session.publish_many(
                [("r/1", b"a", None), ("r/2", b"b" * 64, None), ("r/3", b"c", None)]
            )
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], MqttError)
            await session.publish("r/4", b"d")  # the broker never acknowledges: it waits
            assert len(session._inflight) == 2 and len(session._fifo) == 1
            # Server Keep Alive 2 s (not our 60): no PINGRESP ever -> dropped after 3 s
            _, error = await until_error(session)
            assert "keepalive" in error
    assert b"\xc0\x00" in b"".join(received)  # it sent PINGREQ


async def test_no_connack_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_lean, "CONNECT_TIMEOUT_S", 0.5)

    async def silent(reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await reader.read(1)

    async with fake_broker(silent) as (port, _):
        started = time.monotonic()
        with pytest.raises(MqttError, match="CONNACK"):
            async with LeanSession(settings(port)):
                pass
        assert time.monotonic() - started < 2


async def test_broker_disconnect_is_an_error() -> None:
    async with fake_broker(sends(CONNACK, publish(b"req/a", b"1"), b"\xe0\x01\x8e")) as (port, _):
        got = await expect_protocol_error(port, match="disconnected us: 0x8e")
    assert [m.payload for m in got] == [b"1"]


async def test_publish_waits_for_a_full_fifo_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that never acknowledges, receive maximum 2: publishes queue locally up to
    MAX_FIFO, then a publish waits (bounded) and fails with MqttError; nothing is lost silently."""
    monkeypatch.setattr(client_lean, "MAX_FIFO", 3)
    monkeypatch.setattr(client_lean, "PUBLISH_WAIT_S", 0.3)
    connack = b"\x20\x06\x00\x00\x03\x21\x00\x02"
    async with fake_broker(sends(connack)) as (port, _), LeanSession(settings(port)) as session:
        results = await session.publish_many([(f"r/{i}", b"x", None) for i in range(5)])
        assert results == [None] * 5
        assert (len(session._inflight), len(session._fifo)) == (2, 3)
        started = time.monotonic()
        with pytest.raises(MqttError, match="not taking"):
            await session.publish("r/6", b"x")
        assert 0.25 <= time.monotonic() - started < 2
        late = await session.publish_many([("r/7", b"x", None)])
        assert isinstance(late[0], MqttError)
        assert len(session._fifo) == 3


async def flood(session: LeanSession, chunk: bytes) -> None:
    async with asyncio.timeout(10):
        for _ in range(1000):
            await session.publish("r/big", chunk, qos=0)


async def test_publish_waits_while_the_transport_is_paused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that stops reading: once the write buffer is over its high-water mark a publish
    waits (pause_writing), and fails after PUBLISH_WAIT_S instead of buffering without bound."""
    monkeypatch.setattr(client_lean, "PUBLISH_WAIT_S", 0.3)
    stop_reading = asyncio.Event()

    async def stalls(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CONNACK)
        await stop_reading.wait()

    async with fake_broker(stalls) as (port, _):
        session = LeanSession(settings(port))
        async with session:
            assert session._transport is not None
            session._transport.set_write_buffer_limits(high=64 * 1024)
            with pytest.raises(MqttError, match="not taking"):
                await flood(session, b"p" * 256 * 1024)
            assert session._paused
            buffered = session._transport.get_write_buffer_size()
            assert buffered < 64 * 1024 * 1024
            stop_reading.set()
            session._transport.abort()
