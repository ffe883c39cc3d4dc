"""An in-process rig around the project's simulators (what a vendor's automated rig does with a
real terminal: switch it on and off, present a card, report what it showed), and deliberately
broken simulator variants, one per contract rule the kit checks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from conformance import TapOutcome
from protocol.errors import ErrorCode
from protocol.wire import (
    DENYLIST_SNAPSHOT_TOPIC,
    DenyDelta,
    DenyList,
    DenySnapshot,
    HeartbeatRequest,
    OfflineUploadRequest,
    Reply,
)
from simulators.mqttlink import NoReply, NotConnected
from simulators.rig import pull_plug
from simulators.terminals import Credentials, DoorReader, Pos, Terminal


class SimRig:
    """Drives one simulated terminal; a new one per ``start`` (a power-on)."""

    def __init__(self, make: Callable[[], Terminal]) -> None:
        self.make = make
        self.terminal: Terminal | None = None

    async def start(self) -> None:
        if self.terminal is None:
            self.terminal = self.make()
            await self.terminal.start()

    async def stop(self) -> None:
        terminal, self.terminal = self.terminal, None
        if terminal is not None:
            await terminal.stop()

    async def power_cut(self) -> bool:
        """Pull the plug: the TCP connection drops without a DISCONNECT (the broker then
        publishes the last will) and the terminal's tasks die without a goodbye."""
        terminal, self.terminal = self.terminal, None
        if terminal is not None:
            await pull_plug(terminal)
        return True

    async def tap(self, card: str, amount_fen: int) -> TapOutcome:
        t = self.terminal
        assert t is not None
        if isinstance(t, Pos):
            result = await t.sale(card, amount_fen)
        else:
            assert isinstance(t, DoorReader)
            result = await t.access(card)
        return TapOutcome(result.approved, result.code)


def factory(
    cls: type[Terminal], creds: Credentials, host: str, port: int
) -> Callable[[], Terminal]:
    def make() -> Terminal:
        return cls(creds, host, port, request_timeout_s=0.5, retries=2, firmware="sim 1.1")

    return make


# --- broken variants: each breaks exactly one rule -------------------------------------------
class NewIdOnRetry(Pos):
    """§6 broken: every attempt gets a new request_id."""

    async def _call(self, op: str, data: Any, request_id: str) -> Reply[Any]:
        for _ in range(1 + self.retries):
            try:
                reply = await self.link.request(
                    op, self.next_request_id(), data, self.request_timeout_s
                )
            except NoReply:
                continue
            if reply.error is not None and reply.error.code is ErrorCode.UNAVAILABLE:
                continue
            return reply
        raise NoReply(f"{op}: no reply")


class HeartbeatBeforeHello(Pos):
    """§2.3 broken: a heartbeat goes out before hello."""

    async def _sync(self) -> bool:
        data = HeartbeatRequest(denylist_version=self.deny.version)
        with contextlib.suppress(NoReply, NotConnected):
            await self.link.request("heartbeat", self.next_request_id(), data, 0.3)
        return await super()._sync()


class SilentOnChange(Pos):
    """§8.5 broken: applies deltas and snapshots but does not acknowledge with a heartbeat."""

    def _apply_delta(self, delta: DenyDelta, *, resync: bool = True) -> None:
        wake, self._wake = self._wake, asyncio.Event()  # the wake-up goes nowhere
        try:
            super()._apply_delta(delta, resync=resync)
        finally:
            self._wake = wake

    def _apply_snapshot(self, snapshot: DenySnapshot) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        try:
            super()._apply_snapshot(snapshot)
        finally:
            self._wake = wake


class TrustsAnySnapshot(Pos):
    """§8.1 broken: takes a snapshot without checking count, order and sha256."""

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == DENYLIST_SNAPSHOT_TOPIC and payload:
            self._apply_snapshot(DenySnapshot.model_construct(**_json(payload)))
            return
        super()._on_message(topic, payload)

    def _apply_snapshot(self, snapshot: DenySnapshot) -> None:
        if snapshot.version < self.deny.version:
            return
        self.deny = DenyList(version=snapshot.version, entries=set(snapshot.entries))
        self.fresh_at = self.clock.monotonic()
        self._wake.set()


class AppliesAcrossGaps(Pos):
    """§8.2 broken: a delta that does not follow the version held is applied anyway."""

    def _apply_delta(self, delta: DenyDelta, *, resync: bool = True) -> None:
        if delta.from_version > self.deny.version:
            cards = set(self.deny.entries)
            for change in delta.changes:
                (cards.add if change.kind.blocks else cards.discard)(change.card)
            self.deny = DenyList(version=delta.to_version, entries=cards)
            self._wake.set()
            return
        super()._apply_delta(delta, resync=resync)


class IgnoresDenyListOffline(Pos):
    """§8.3 / LOSS-2 broken: offline, a card on the deny list is approved."""

    def _offline_refusal(self, card: str) -> tuple[ErrorCode, str | None] | None:
        refusal = super()._offline_refusal(card)
        return None if refusal and refusal[0] is ErrorCode.CARD_LOST else refusal


class NoOfflineSaleLimit(Pos):
    """§8.3 broken: offline_max_amount_fen is not applied."""

    def _offline_sale(self, op: str, card: str, amount: int, merchant_id: str | None) -> Any:
        assert self.config is not None
        limit = self.config.offline_max_amount_fen
        self.config = self.config.model_copy(update={"offline_max_amount_fen": 10**6})
        try:
            return super()._offline_sale(op, card, amount, merchant_id)
        finally:
            self.config = self.config.model_copy(update={"offline_max_amount_fen": limit})


class NeverStale(Pos):
    """§8.3 broken: approves offline however old its deny list is."""

    def deny_age_s(self) -> float | None:
        return 0.0


class UploadsNewestFirst(Pos):
    """§8.3 broken: offline sales uploaded out of seq order."""

    async def upload_backlog(self) -> None:
        for sale in sorted(self.backlog, key=lambda s: -s.seq):
            data = OfflineUploadRequest(sales=[sale])
            self._upload_reply(await self._call("offline_upload", data, self.next_request_id()))


class NoLastWill(Pos):
    """§2 broken: connects without a last will (a power cut leaves `online` standing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        make_client = self.link._new_client

        def without_will() -> Any:
            client = make_client()
            client._client.will_clear()
            return client

        self.link._new_client = without_will  # type: ignore[method-assign]


class UnavailableIsFinal(Pos):
    """§6.1 broken: `unavailable` is taken as the decision (the tap is declined, not retried)."""

    async def _call(self, op: str, data: Any, request_id: str) -> Reply[Any]:
        for _ in range(1 + self.retries):
            try:
                return await self.link.request(op, request_id, data, self.request_timeout_s)
            except NoReply:
                continue
        raise NoReply(f"{op}: no reply")


def _json(payload: bytes) -> dict[str, Any]:
    import json

    raw: dict[str, Any] = json.loads(payload)
    return raw
