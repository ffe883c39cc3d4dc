"""A terminal's connection to the broker: the simulators' only aiomqtt user (ARCHITECTURE §2.5).

What it does, per ``docs/terminal-contract.md``:

- §2: MQTT v5, client id = username = terminal id, the terminal's own password, clean start
  **false** with a session expiry, keep alive 60 s, QoS 1, TCP_NODELAY, last will = retained
  ``{"v":1,"state":"offline"}`` on ``onecard/v1/t/{id}/status``;
- §2 after connecting: subscribe to ``resp/+``, the deny-list snapshot and delta (and the gateway
  status, §7), then publish the retained ``online`` status;
- §4/§5: request/response: the request goes to ``req/{op}`` with the request id as MQTT v5
  Correlation Data; the reply is matched by correlation data, else by ``request_id``, else (a
  ``null`` id) by the single request outstanding on that op;
- reconnection with jittered exponential backoff, a new client per attempt (aiomqtt 2.x).

The reader loop never awaits a publish (FIELD-NOTES): incoming messages are handed to plain
callbacks; anything that must publish in response runs in its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    Presence,
    Reply,
    TerminalStatus,
    WireError,
    decode_reply,
    encode_request,
    request_topic,
    response_filter,
    terminal_status_topic,
)

__all__ = ["Link", "LinkError", "LinkSettings", "NoReply", "NotConnected"]

log = logging.getLogger("onecard.simulators.link")

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
OFFLINE = TerminalStatus(state=Presence.OFFLINE).model_dump_json(exclude_none=True).encode()


class LinkError(Exception):
    """The gateway could not be asked."""


class NotConnected(LinkError):
    """Not connected: nothing was sent, so the terminal may decide offline (contract §8.3)."""


class NoReply(LinkError):
    """Sent, but no reply (timeout or connection lost): the request is *in doubt* and must be
    retried with the same ``request_id`` before anything else (contract §6)."""


@dataclass(frozen=True, slots=True)
class LinkSettings:
    host: str
    port: int
    terminal_id: str
    password: str
    keepalive_s: int = 60
    session_expiry_s: int = 3600
    backoff_min_s: float = 0.2
    backoff_max_s: float = 10.0
    connect_timeout_s: float = 10.0
    #: MQTT v5 Message Expiry Interval of every request (contract §6.1): a request that waits
    #: longer (at the broker, behind a busy registry) is dropped or answered ``expired``, never
    #: executed after the terminal gave up on it. ``ceil(request_ttl_ms / 1000)`` of ``hello``.
    request_expiry_s: int = 5


class Link:
    """One terminal's MQTT session, kept up by :meth:`run` until :meth:`close`.

    Callbacks (all synchronous, called from the reader loop): ``on_up`` after the subscriptions
    and the ``online`` status are in place, ``on_down`` when the connection is gone,
    ``on_message(topic, payload)`` for deny-list and gateway-status messages, ``on_reply(op,
    reply)`` for every reply received, awaited or not (QoS 1 duplicates, late replies).
    """

    def __init__(
        self,
        settings: LinkSettings,
        status: TerminalStatus,
        *,
        on_up: Callable[[], None],
        on_down: Callable[[], None],
        on_message: Callable[[str, bytes], None],
        on_reply: Callable[[str, Reply[Any]], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.tid = settings.terminal_id
        self._status_topic = terminal_status_topic(self.tid)
        self._online = status.model_dump_json(exclude_none=True).encode()
        self._resp_prefix = response_filter(self.tid)[:-1]  # ".../resp/"
        self._on_up, self._on_down = on_up, on_down
        self._on_message, self._on_reply = on_message, on_reply
        self._rng = rng or random.Random()
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[str, tuple[str, asyncio.Future[Reply[Any]]]] = {}
        self._enabled = asyncio.Event()
        self._enabled.set()
        self._wake = asyncio.Event()
        self._closed = False
        self._down = asyncio.Event()
        self._down.set()
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.up = False
        self.connects = 0

    @property
    def closing(self) -> bool:
        return self._closed

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"link-{self.tid}")

    async def close(self, within_s: float = 5.0) -> None:
        """Publish ``offline`` (retained), disconnect and stop reconnecting."""
        self._closed = True
        self._enabled.set()
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(within_s):
                    await self._task
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def pause(self, within_s: float = 5.0) -> None:
        """Disconnect (publishing ``offline``) and stay down until :meth:`resume`."""
        self._enabled.clear()
        self._wake.set()
        async with asyncio.timeout(within_s):
            await self._down.wait()

    def resume(self) -> None:
        self._enabled.set()

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s
        return aiomqtt.Client(
            s.host,
            s.port,
            username=self.tid,
            password=s.password,
            identifier=self.tid,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=s.keepalive_s,
            will=aiomqtt.Will(self._status_topic, OFFLINE, qos=1, retain=True),
            socket_options=NODELAY,
            timeout=s.connect_timeout_s,
        )

    async def run(self) -> None:
        """Connect, serve, reconnect with jittered exponential backoff; until :meth:`close`."""
        backoff = self.settings.backoff_min_s
        while not self._closed:
            await self._enabled.wait()
            if self.closing:
                break
            self._wake.clear()
            try:
                async with self._new_client() as client:
                    backoff = self.settings.backoff_min_s
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                log.info("%s: connection lost or refused (%s)", self.tid, exc)
            finally:
                self._set_down()
            if self._closed or not self._enabled.is_set():
                continue
            delay = backoff * (0.5 + self._rng.random())
            backoff = min(backoff * 2, self.settings.backoff_max_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        for topic in (
            response_filter(self.tid),
            DENYLIST_SNAPSHOT_TOPIC,  # before the delta: the retained snapshot comes first
            DENYLIST_DELTA_TOPIC,
            GATEWAY_STATUS_TOPIC,
        ):
            await client.subscribe(topic, qos=1)
        await client.publish(self._status_topic, self._online, qos=1, retain=True)
        self._client = client
        self.up = True
        self._down.clear()
        self.connects += 1
        self._on_up()
        reader = asyncio.create_task(self._read(client), name=f"read-{self.tid}")
        waker = asyncio.create_task(self._wake.wait(), name=f"wake-{self.tid}")
        done, _ = await asyncio.wait({reader, waker}, return_when=asyncio.FIRST_COMPLETED)
        for task in (reader, waker):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if reader in done:
            reader.result()  # re-raise the connection error
            return
        # asked to stop: say so (a clean disconnect does not fire the last will)
        self._set_down()
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self._status_topic, OFFLINE, qos=1, retain=True, timeout=2)

    def _set_down(self) -> None:
        self._client = None
        for _, future in self._waiting.values():
            if not future.done():
                future.cancel()
        if self.up:
            self.up = False
            self._down.set()
            self._on_down()

    # --- incoming -------------------------------------------------------------------------------
    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            props = message.properties
            correlation = getattr(props, "CorrelationData", None) if props is not None else None
            self._dispatch(message.topic.value, bytes(payload), correlation)

    def _dispatch(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        if not topic.startswith(self._resp_prefix):
            self._on_message(topic, payload)
            return
        op = topic[len(self._resp_prefix) :]
        try:
            reply = decode_reply(op, payload)
        except WireError as exc:
            log.warning("%s: unreadable reply on %s: %s", self.tid, op, exc)
            return
        key = correlation.decode(errors="replace") if correlation else reply.request_id
        entry = self._waiting.get(key) if key is not None else None
        if entry is None and key is None:
            on_op = [e for e in self._waiting.values() if e[0] == op]
            entry = on_op[0] if len(on_op) == 1 else None
        if entry is not None and not entry[1].done():
            entry[1].set_result(reply)
        if self._on_reply is not None:
            self._on_reply(op, reply)

    # --- outgoing -------------------------------------------------------------------------------
    async def request(
        self, op: str, request_id: str, data: BaseModel, within_s: float
    ) -> Reply[Any]:
        """Publish one request and wait for its reply.

        :class:`NotConnected` if nothing could be sent; :class:`NoReply` if it was (or may have
        been) sent and no reply came within ``within_s`` seconds.
        """
        client = self._client
        if client is None or not self.up:
            raise NotConnected(f"{self.tid} is not connected")
        payload = encode_request(op, request_id, data)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = request_id.encode()
        props.MessageExpiryInterval = self.settings.request_expiry_s
        future: asyncio.Future[Reply[Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (op, future)
        try:
            async with asyncio.timeout(within_s):
                await client.publish(request_topic(self.tid, op), payload, qos=1, properties=props)
                return await asyncio.shield(future)
        except (TimeoutError, aiomqtt.MqttError, asyncio.CancelledError) as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and (task is None or task.cancelling()):
                raise  # our caller was cancelled, not the connection: never swallow that
            raise NoReply(f"{op} {request_id}: no reply ({type(exc).__name__})") from None
        finally:
            self._waiting.pop(request_id, None)
            if not future.done():
                future.cancel()

    def resubscribe(self, topic: str) -> None:
        """Unsubscribe and subscribe again, so the broker sends the retained message anew
        (contract §8.2, deny-list gap). Runs in its own task."""
        client = self._client
        if client is None:
            return

        async def again() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic)
                await client.subscribe(topic, qos=1)

        task = asyncio.create_task(again(), name=f"resub-{self.tid}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
