"""Terminal presence for the operator console, from the broker's retained statuses (issue 11).

A read-only broker account (a ``monitor`` in the ACL) subscribes to every terminal's retained
``status`` and the gateway's; the last will makes a vanished terminal ``offline``. The console
process reads :meth:`FleetWatch.snapshot`; nothing here writes to the registry or the broker.
Payloads are untrusted: a malformed one is counted and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.mqtt.client import MqttError, MqttSession, MqttSettings
from protocol.wire.messages import GatewayStatus, Presence, TerminalStatus
from protocol.wire.topics import (
    GATEWAY_STATUS_TOPIC,
    TERMINAL_STATUS_FILTER,
    TopicError,
    TopicKind,
    parse_topic,
)

log = logging.getLogger("onecard.console.fleet")
MAX_TERMINALS = 100_000


@dataclass(frozen=True, slots=True)
class TerminalPresence:
    online: bool
    kind: str | None
    since: datetime


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    connected: bool
    terminals: dict[str, TerminalPresence]
    gateway_online: bool | None
    gateway_version: int | None
    malformed: int


class FleetWatch:
    def __init__(self, host: str, port: int, username: str | None, password: str | None) -> None:
        self.settings = MqttSettings(
            host=host,
            port=port,
            username=username,
            password=password,
            client_id=username or f"onecard-console-{secrets.token_hex(4)}",
            keepalive=10,
            session_expiry_s=0,
        )
        self._terminals: dict[str, TerminalPresence] = {}
        self._gateway: GatewayStatus | None = None
        self._connected = False
        self._malformed = 0

    def snapshot(self) -> FleetSnapshot:
        gw = self._gateway
        return FleetSnapshot(
            connected=self._connected,
            terminals=dict(self._terminals),
            gateway_online=None if gw is None else gw.state is Presence.ONLINE,
            gateway_version=None if gw is None else gw.denylist_version,
            malformed=self._malformed,
        )

    async def run(self) -> None:
        """Subscribe and follow until cancelled; reconnect after a second on broker loss."""
        while True:
            try:
                # no will: this watcher publishes nothing
                session = MqttSession(self.settings, will=None, clean_start=True)
                async with session:
                    await session.subscribe([TERMINAL_STATUS_FILTER, GATEWAY_STATUS_TOPIC])
                    self._connected = True
                    async for message in session.messages():
                        self.apply(message.topic, message.payload)
            except MqttError as exc:
                log.warning("console fleet watch: broker unavailable (%s)", exc)
            finally:
                self._connected = False
            await asyncio.sleep(1.0)

    def apply(self, topic: str, payload: bytes) -> None:
        try:
            parsed = parse_topic(topic)
            if parsed.kind is TopicKind.GATEWAY_STATUS:
                self._gateway = GatewayStatus.model_validate_json(payload)
                return
            if parsed.kind is not TopicKind.TERMINAL_STATUS or parsed.terminal_id is None:
                return
            if not payload:  # a cleared retained status: the terminal was removed
                self._terminals.pop(parsed.terminal_id, None)
                return
            status = TerminalStatus.model_validate_json(payload)
        except (TopicError, ValueError):
            self._malformed += 1
            return
        if parsed.terminal_id not in self._terminals and len(self._terminals) >= MAX_TERMINALS:
            return
        self._terminals[parsed.terminal_id] = TerminalPresence(
            online=status.state is Presence.ONLINE,
            kind=status.kind.value if status.kind else None,
            since=datetime.now(UTC),
        )
