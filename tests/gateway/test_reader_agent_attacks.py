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

from gateway.readers.agent import ReaderAgent, ReaderState, server_config
from gateway.readers.pcsc import PcscReaderBridge

ORIGIN = "http://127.0.0.1:8090"
UID = "04A1B2C3D4E5F6"
#: the system interpreter (the venv under /root is not for other users); stdlib only
PYTHON = "/usr/bin/python3"

#: What another local user runs: the console's origin is not a secret, any client can send it.
PEEK = """
import socket, sys
port = int(sys.argv[1])
extra = ""
if len(sys.argv) > 3:  # pose as the clerk's own connection (its port is in /proc/net/tcp)
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if int(f[2].split(":")[1], 16) == port and f[3] == "01":
            extra = f"X-Forwarded-For: 127.0.0.1:{int(f[1].split(':')[1], 16)}\\r\\n"
s = socket.create_connection(("127.0.0.1", port), timeout=1)
s.sendall(f"GET /events HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nOrigin: {sys.argv[2]}\\r\\n{extra}\\r\\n".encode())
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
    server = uvicorn.Server(server_config(agent, "127.0.0.1"))  # as `onecard reader-agent`
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
        other = await _peek(port)
        assert UID not in other
        assert " 403 " in other.splitlines()[0], other
        # the clerk's own browser (this process's user) still gets the stream
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            headers = {"origin": ORIGIN}
            async with client.stream("GET", "/events", headers=headers, timeout=5) as resp:
                assert resp.status_code == 200
                chunks, seen = resp.aiter_text(), ""
                while UID not in seen:  # (no break out of the iterator: that closes it)
                    seen += await anext(chunks)
                # while it is open, the other user names its address in X-Forwarded-For
                posing = await _peek(port, "pose")
                assert UID not in posing
                assert " 403 " in posing.splitlines()[0], posing


async def _peek(port: int, *extra: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "-S", "-c", PEEK, str(port), ORIGIN, *extra],
        cwd="/",
        user=65534,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout + done.stderr
