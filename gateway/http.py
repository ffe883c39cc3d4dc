"""A minimal HTTP endpoint for operators: ``/metrics`` (Prometheus), ``/livez``, ``/readyz``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class OpsServer:
    def __init__(
        self, host: str, port: int, metrics: Callable[[], bytes], ready: Callable[[], bool]
    ) -> None:
        self.host, self.port = host, port
        self._metrics, self._ready = metrics, ready
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request_line.decode("latin-1").split()
            status, body, ctype = self._route(parts)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, parts: list[str]) -> tuple[int, bytes, str]:
        if len(parts) < 2 or parts[0] != "GET":
            return 405, b"method not allowed\n", "text/plain"
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            return 200, self._metrics(), "text/plain; version=0.0.4; charset=utf-8"
        if path == "/livez":
            return 200, b"ok\n", "text/plain"
        if path == "/readyz":
            return (
                (200, b"ready\n", "text/plain")
                if self._ready()
                else (503, b"not ready\n", "text/plain")
            )
        return 404, b"not found\n", "text/plain"
