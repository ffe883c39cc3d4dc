"""A simulated terminal behind the conformance kit's hook protocol (JSON lines on stdin/stdout),
so ``python -m conformance terminal --hook "python -m simulators rig ..."`` certifies our own
simulator exactly as a vendor's automated rig would drive a real terminal.

Requests, one JSON object per line: ``{"action": "start"}``, ``{"action": "stop"}``,
``{"action": "power_cut"}`` (the TCP connection dropped without a DISCONNECT, the terminal's
tasks killed: the broker publishes its last will), ``{"action": "tap", "card": UID,
"amount_fen": N}`` (a sale on a POS, an access request on a door reader). Each gets one reply
line: ``{"ok": true}``, ``{"ok": true, "approved": false, "code": "card_lost"}``,
``{"ok": false, "unsupported": true}`` or ``{"ok": false, "error": "..."}``. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from typing import Any

from simulators.terminals import Credentials, DoorReader, Pos, Terminal, make_terminal

__all__ = ["pull_plug", "serve_rig"]


async def pull_plug(terminal: Terminal) -> None:
    """A power cut: the connection drops without a DISCONNECT (so the broker publishes the last
    will) and the terminal's tasks die without a goodbye; nothing is published."""
    client = terminal.link._client
    sock = client._client.socket() if client is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    for task in (terminal._session_task, terminal.link._task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _handle(
    request: dict[str, Any],
    creds: Credentials,
    host: str,
    port: int,
    state: dict[str, Terminal],
    timeout_s: float,
) -> dict[str, Any]:
    action = request.get("action")
    terminal = state.get("terminal")
    if action == "start":
        if terminal is None:
            terminal = make_terminal(creds, host, port, request_timeout_s=timeout_s)
            state["terminal"] = terminal
            await terminal.start()
        return {"ok": True}
    if action == "stop":
        if terminal is not None:
            del state["terminal"]
            await terminal.stop()
        return {"ok": True}
    if action == "tap" and terminal is not None:
        card, amount = str(request.get("card", "")), int(request.get("amount_fen", 0))
        if isinstance(terminal, Pos):
            result = await terminal.sale(card, amount)
        elif isinstance(terminal, DoorReader):
            result = await terminal.access(card)
        else:
            return {"ok": False, "unsupported": True}
        return {"ok": True, "approved": result.approved, "code": result.code}
    if action == "power_cut":
        if terminal is not None:
            del state["terminal"]
            await pull_plug(terminal)
        return {"ok": True}
    if action == "tap":
        return {"ok": False, "unsupported": True}
    return {"ok": False, "error": f"unknown action {action!r}"}


async def serve_rig(creds: Credentials, host: str, port: int, timeout_s: float = 2.0) -> int:
    """Answer hook requests until stdin closes; the terminal is stopped at the end."""
    state: dict[str, Terminal] = {}
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return 0
            try:
                request = json.loads(line)
                reply = (
                    await _handle(request, creds, host, port, state, timeout_s)
                    if isinstance(request, dict)
                    else {"ok": False, "error": "not an object"}
                )
            except (ValueError, TypeError) as exc:
                reply = {"ok": False, "error": str(exc)}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        if "terminal" in state:
            await state["terminal"].stop()
