"""``onecard reader-agent``: the counter PC's card reader for the operator console (issue 11).

Runs on the counter PC beside the browser. It owns the PC/SC bridge (:mod:`gateway.readers.pcsc`)
and serves one Server-Sent Events stream on the loopback interface: ``inserted`` (the card's UID)
and ``removed``. The console page opens the holder of that UID through the console (which checks
the operator's rights); the agent itself sends no personal data, only the UID.

MEAL-3/MEAL-4 write-back: when the registry says a card's type must still be written
(``card_write_pending``), the agent writes the type group onto the card on the reader (checking
the card's serial first), reads it back, and only then clears the flag.

Who may listen: only the configured console origin (CORS), only through a loopback Host header
(a DNS-rebinding page names another host), only from the loopback address, and (on Linux) only a
connection owned by the agent's own user — the clerk's browser, the agent being a user service.
A curious student on the counter network cannot reach a loopback socket; a page of another origin
in the counter's browser is refused; another user of the PC, who can send any Origin header, is
refused by the owner of its socket (a card's UID is all a cloned card needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.readers.pcsc import (
    CardInserted,
    CardRemoved,
    PcscReaderBridge,
    ReaderError,
    ReaderEvent,
    ServiceLost,
)
from protocol.cardfile.layout import mask
from protocol.errors import OnecardError

log = logging.getLogger("onecard.reader_agent")
MAX_LISTENERS = 16
KEEPALIVE_S = 15.0

#: (canonical uid, serial on the card) -> the type group still to write, or None.
PendingLookup = Callable[[str, str], Awaitable[int | None]]
#: (serial, group written) -> the registry's flag cleared.
WrittenConfirm = Callable[[str, int], Awaitable[None]]


@dataclass
class ReaderState:
    state: str = "empty"  # empty, inserted, removed
    uid: str | None = None
    written: int | None = None
    error: str | None = None
    seq: int = 0

    def payload(self, reader: str) -> dict[str, Any]:
        return {
            "reader": reader,
            "state": self.state,
            "uid": self.uid,
            "written": self.written,
            "error": self.error,
            "seq": self.seq,
        }


class ReaderAgent:
    def __init__(
        self,
        bridge: PcscReaderBridge,
        *,
        console_origin: str,
        port: int,
        pending_group: PendingLookup | None = None,
        confirm_written: WrittenConfirm | None = None,
    ) -> None:
        self.bridge = bridge
        self.console_origin = console_origin.rstrip("/")
        self.port = port
        self.pending_group = pending_group
        self.confirm_written = confirm_written
        self.readers: dict[str, ReaderState] = {}
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._seq = 0
        #: The HTTP server while :func:`serve` runs (``server.should_exit = True`` stops it).
        self.server: Any = None

    # --- card events --------------------------------------------------------------------------
    async def follow(self) -> None:
        """Turn reader events into stream events until cancelled (the bridge must be started)."""
        while True:
            event = await self.bridge.next_event()
            await self.handle(event)

    async def handle(self, event: ReaderEvent) -> None:
        if isinstance(event, CardInserted):
            state = ReaderState("inserted", event.card_uid)
            if event.error is not None or event.record is None:
                state.error = str(event.error)[:200] if event.error else "unreadable"
            else:
                state.written, state.error = await self._write_back(event)
            self._publish(event.reader, state)
        elif isinstance(event, CardRemoved):
            self._publish(event.reader, ReaderState("removed"))
        elif isinstance(event, ServiceLost):
            log.warning("reader agent: PC/SC service lost (%s)", event.detail)

    async def _write_back(self, event: CardInserted) -> tuple[int | None, str | None]:
        """MEAL-3/4: write the type group the registry holds, verify, then clear the flag."""
        uid, record = event.card_uid, event.record
        if uid is None or record is None or self.pending_group is None:
            return None, None
        try:
            group = await self.pending_group(uid, record.serial)
            if group is None:
                return None, None
            await self.bridge.write_type_group(event.reader, group, expect_serial=record.serial)
            if self.confirm_written is not None:
                await self.confirm_written(record.serial, group)
        except (ReaderError, OnecardError) as exc:
            log.warning("reader agent: write-back to %s failed: %s", mask(record.serial), exc.code)
            return None, f"{exc.message_zh} / {exc.message_en}"[:200]
        log.info("reader agent: type group %d written to %s", group, mask(record.serial))
        return group, None

    def _publish(self, reader: str, state: ReaderState) -> None:
        self._seq += 1
        state.seq = self._seq
        self.readers[reader] = state
        payload = state.payload(reader)
        for queue in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(payload)

    # --- the loopback stream ------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/events", self.events),
                Route("/healthz", self.healthz),
            ]
        )

    def _refusal(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        allowed_hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"}
        if host not in allowed_hosts:
            return PlainTextResponse("forbidden host\n", status_code=403)
        client = request.client.host if request.client else ""
        if client not in ("127.0.0.1", "::1"):
            return PlainTextResponse("loopback only\n", status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and origin != self.console_origin:
            log.warning("reader agent: refused a page of another origin")
            return PlainTextResponse("forbidden origin\n", status_code=403)
        return None

    async def healthz(self, request: Request) -> Response:
        refusal = self._refusal(request)
        return refusal or PlainTextResponse("ok\n")

    async def events(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if request.headers.get("origin") != self.console_origin:
            # the console's EventSource always names its origin; a no-cors request from any page
            # (an <img> pointing here) names none and would only hold a listener slot
            return PlainTextResponse("the console's origin only\n", status_code=403)
        client = request.client
        owner = peer_uid(client.host, client.port, self.port) if client else None
        if owner is not None and owner != os.getuid():
            log.warning("reader agent: refused a connection of another local user (uid %d)", owner)
            return PlainTextResponse("another user's connection\n", status_code=403)
        if len(self._listeners) >= MAX_LISTENERS:
            return PlainTextResponse("too many listeners\n", status_code=503)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self._listeners.add(queue)
        current = [s.payload(r) for r, s in sorted(self.readers.items())]
        if not current:
            current = [ReaderState().payload("")]

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                for payload in current:
                    yield _sse(payload)
                while True:
                    try:
                        payload = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield _sse(payload)
            finally:
                self._listeners.discard(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={
                "cache-control": "no-store",
                "access-control-allow-origin": self.console_origin,
                "vary": "Origin",
                "x-content-type-options": "nosniff",
            },
        )


def _proc_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` of /proc/net/tcp{,6} as (address, port): the address is printed as the
    raw 32-bit words in host order."""
    hex_addr, hex_port = text.split(":")
    raw = b"".join(
        struct.pack("=I", int(hex_addr[i : i + 8], 16)) for i in range(0, len(hex_addr), 8)
    )
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(hex_port, 16)


def peer_uid(host: str, port: int, agent_port: int, proc: str = "/proc/net") -> int | None:
    """The uid owning the client end (``host``:``port``) of a loopback connection to the agent,
    from Linux's socket tables; None where there are none (not Linux).  A connection the tables
    do not show (it closed meanwhile) belongs to nobody: -1."""
    tables = [f"{proc}/tcp", f"{proc}/tcp6"]
    if not any(os.path.exists(t) for t in tables):
        return None
    for table in tables:
        with contextlib.suppress(OSError), open(table, encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                if len(fields) < 8:
                    continue
                with contextlib.suppress(ValueError):
                    local, remote = _proc_address(fields[1]), _proc_address(fields[2])
                    if local == (host, port) and remote[1] == agent_port:
                        return int(fields[7])
    return -1


def _sse(payload: dict[str, Any]) -> bytes:
    return f"event: card\ndata: {json.dumps(payload)}\n\n".encode()


def server_config(agent: ReaderAgent, host: str) -> Any:
    """uvicorn's config for the agent: no proxy headers (uvicorn trusts X-Forwarded-For from
    127.0.0.1 by default, so another local user could name the clerk's connection as the client
    and pass the owner check)."""
    import uvicorn

    return uvicorn.Config(
        agent.app(),
        host=host,
        port=agent.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


async def serve(agent: ReaderAgent, host: str = "127.0.0.1") -> None:
    """Serve the stream on ``host``:``agent.port`` and follow the readers until cancelled."""
    import uvicorn

    if host not in ("127.0.0.1", "::1", "localhost"):
        raise OnecardError(
            "读卡代理只监听本机回环地址", "the reader agent listens on the loopback address only"
        )
    server = uvicorn.Server(server_config(agent, host))
    agent.server = server
    async with agent.bridge:
        follow = asyncio.create_task(agent.follow(), name="reader-agent-follow")
        try:
            await server.serve()  # until SIGINT/SIGTERM (uvicorn's handlers)
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
