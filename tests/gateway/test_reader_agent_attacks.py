"""The reader agent against another user of the counter PC (issue 11 security review,
docs/security.md §7): a real server on loopback, a client running under another uid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from gateway.readers.agent import ReaderAgent, ReaderState
from gateway.readers.pcsc import PcscReaderBridge

ORIGIN = "http://127.0.0.1:8090"
UID = "04A1B2C3D4E5F6"
#: the system interpreter (the venv under /root is not for other users); stdlib only
PYTHON = "/usr/bin/python3"

#: What another local user runs: the console's origin is not a secret, any client can send it.
PEEK = """
import socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=1)
s.sendall(f"GET /events HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nOrigin: {sys.argv[2]}\\r\\n\\r\\n".encode())
data = b""
while b"uid" not in data and len(data) < 4096:
    try:
        chunk = s.recv(4096)
    except TimeoutError:
        break
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _serving(agent: ReaderAgent) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(agent.app(), host="127.0.0.1", port=agent.port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await task


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(PYTHON), reason="runs a client as another user (root)"
)
@pytest.mark.asyncio
async def test_another_local_user_cannot_read_the_card_uids() -> None:
    """A card's UID is what a cloned card needs (§6); another user logged in to the counter PC
    (or a student's process on a shared PC) could read every UID put on the reader by sending
    the console's Origin itself. Only the agent's own user (the clerk's browser) may listen."""
    port = _free_port()
    agent = ReaderAgent(PcscReaderBridge(), console_origin=ORIGIN, port=port)
    agent.readers["Virtual PCD 00 00"] = ReaderState("inserted", UID)
    async with _serving(agent):
        other = await asyncio.to_thread(
            subprocess.run,
            [PYTHON, "-S", "-c", PEEK, str(port), ORIGIN],
            cwd="/",
            user=65534,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert UID not in other.stdout
        assert " 403 " in other.stdout.splitlines()[0], other.stdout + other.stderr
        # the clerk's own browser (this process's user) still gets the stream
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            headers = {"origin": ORIGIN}
            async with client.stream("GET", "/events", headers=headers, timeout=5) as resp:
                assert resp.status_code == 200
                seen = ""
                async for text in resp.aiter_text():
                    seen += text
                    if UID in seen:
                        break
                assert UID in seen
