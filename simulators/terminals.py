"""Simulated terminals: POS (消费机), kiosk (自助服务终端), door reader (门禁), hot-water
controller (水控) — a reference implementation of ``docs/terminal-contract.md`` (the "contract").

Every terminal (:class:`Terminal`):

- keeps one MQTT session (:mod:`simulators.mqttlink`, contract §2) and a local deny list built from
  the retained snapshot and the retained cumulative delta (§8.1, §8.2; on a gap it re-reads the
  snapshot by subscribing again);
- sends ``hello`` after every (re)connect and whenever the gateway comes back online, then retries
  every request still in doubt with its own ``request_id`` (§6), then (POS) uploads its offline
  sales (§8.3);
- sends ``heartbeat`` every ``heartbeat_interval_s`` and right after applying a deny-list change,
  so the gateway can tell a kiosk how many terminals hold a loss report (§7 ``report_loss``);
- is *online* only while connected, the gateway status says ``online`` and the last ``hello``
  succeeded (§8.3); otherwise it decides offline.

Requests that got no reply after the retries stay *in doubt*: the tap is neither approved nor
declined now, and the request is retried (same ``request_id``) as soon as the terminal is back
online, before any new request (§6). Its final answer is reported as a ``late`` result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

from pydantic import BaseModel, ValidationError

from protocol.errors import MESSAGES, ErrorCode
from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    OPERATIONS,
    AccessRequest,
    AccessResponse,
    BalanceRequest,
    ChangePasswordRequest,
    DenyChangeKind,
    DenyDelta,
    DenyList,
    DenyListGap,
    DenySnapshot,
    GatewayStatus,
    HeartbeatRequest,
    HelloRequest,
    HelloResponse,
    LoginRequest,
    LoginResponse,
    MealRequest,
    OfflineSale,
    OfflineUploadRequest,
    OfflineUploadResponse,
    Presence,
    PurchaseRequest,
    Reply,
    ReportLossRequest,
    TerminalConfig,
    TerminalKind,
    TerminalStatus,
    TopupRequest,
    VoidRequest,
    WaterHoldRequest,
    WaterReleaseRequest,
    WaterSettleRequest,
    mask_card,
)
from simulators.mqttlink import Link, LinkError, LinkSettings, NoReply, NotConnected

__all__ = [
    "BATCH",
    "Credentials",
    "DoorReader",
    "Kiosk",
    "Mode",
    "Pos",
    "SystemClock",
    "TapResult",
    "Terminal",
    "WaterController",
    "load_credentials",
    "make_terminal",
]

log = logging.getLogger("onecard.simulators.terminals")

#: Offline sales per ``offline_upload`` request (contract §8.3).
BATCH = 100
#: Campus days are China Standard Time (UTC+8) days.
_DAY_MS = 86_400_000
_CST_MS = 8 * 3_600_000
#: Why a card is on the deny list, as a refusal code (contract §8, §9).
_REASONS: dict[DenyChangeKind, ErrorCode] = {
    DenyChangeKind.LOST: ErrorCode.CARD_LOST,
    DenyChangeKind.FROZEN: ErrorCode.CARD_FROZEN,
    DenyChangeKind.SUSPENDED: ErrorCode.CARD_SUSPENDED,
    DenyChangeKind.EXPIRED: ErrorCode.CARD_EXPIRED,
    DenyChangeKind.TERMINATED: ErrorCode.CARD_TERMINATED,
}
#: A snapshot lists blocked cards without the reason.
_UNKNOWN_REASON = ErrorCode.CARD_VOID
#: §8.5: the gateway status names a newer deny-list version for this long: a delta was lost,
#: re-read the retained snapshot and delta.
LAG_RESYNC_S = 5.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """One terminal as provisioned: ``{"id": ..., "kind": ..., "password": ...}``."""

    id: str
    kind: TerminalKind
    password: str = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Credentials:
        return cls(str(raw["id"]), TerminalKind(raw["kind"]), str(raw["password"]))


def load_credentials(path: Path) -> list[Credentials]:
    return [Credentials.from_dict(r) for r in json.loads(path.read_text(encoding="utf-8"))]


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now_ms(self) -> int: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class Mode(StrEnum):
    ONLINE = "online"  # the gateway decided
    OFFLINE = "offline"  # the terminal decided alone (§8.3)
    IN_DOUBT = "in_doubt"  # sent, no reply yet: retried later with the same request id (§6)
    LATE = "late"  # the final answer to an in-doubt request


@dataclass(slots=True)
class TapResult:
    """The outcome of one operation, as the fleet runner and the dashboard see it."""

    terminal_id: str
    op: str
    mode: Mode
    approved: bool
    code: str | None = None  # error code or access refusal reason; "offline_*" for local refusals
    message: str | None = None
    request_id: str | None = None
    card: str | None = None
    amount_fen: int | None = None
    latency_s: float = 0.0
    sent_at: float | None = None  # monotonic time of the first publish
    transfer_id: str | None = None
    balance_after_fen: int | None = None
    seq: int | None = None
    data: Any = None

    def __repr__(self) -> str:  # never a full card number in logs (PIPL)
        card = mask_card(self.card) if self.card else None
        return (
            f"TapResult({self.terminal_id} {self.op} {self.mode} approved={self.approved} "
            f"code={self.code} card={card} amount={self.amount_fen})"
        )


@dataclass(slots=True)
class _Pending:
    op: str
    data: BaseModel
    sent_at: float
    card: str | None = None
    amount_fen: int | None = None


def _message(code: ErrorCode, detail: str | None = None) -> str:
    zh, en = MESSAGES.get(code, (code.value, code.value))
    return f"{zh} / {en}" + (f": {detail}" if detail else "")


class Terminal:
    """What every kind shares: session, deny list, hello/heartbeat, in-doubt retries."""

    kind: ClassVar[TerminalKind]

    def __init__(
        self,
        creds: Credentials,
        host: str,
        port: int,
        *,
        firmware: str = "onecard-sim 1.0",
        request_timeout_s: float = 5.0,
        retries: int = 2,
        heartbeat_interval_s: float | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        observer: Callable[[TapResult], None] | None = None,
    ) -> None:
        if creds.kind is not self.kind:
            raise ValueError(f"{creds.id} is a {creds.kind}, not a {self.kind}")
        self.id = creds.id
        self.firmware = firmware
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.heartbeat_override_s = heartbeat_interval_s
        self.clock: Clock = clock or SystemClock()
        self.observer = observer
        self.rng = random.Random(seed)
        self.deny = DenyList()
        self.deny_reasons: dict[str, ErrorCode] = {}
        self.config: TerminalConfig | None = None
        self.fresh_at: float | None = None  # last hello/heartbeat reply or deny-list update
        self.gateway_online = False
        self.synced = asyncio.Event()
        self.refused: str | None = None  # hello refused (terminal_unknown/disabled/...)
        self.violations: list[str] = []
        self.heartbeats = 0
        self._boot = secrets.token_hex(4)
        self._counter = 0
        self._lock = asyncio.Lock()
        self._in_doubt: dict[str, _Pending] = {}
        self._transfers: dict[str, str] = {}
        self._pending_delta: DenyDelta | None = None
        self._wake = asyncio.Event()
        self._need_sync = False
        self._session_task: asyncio.Task[None] | None = None
        self._announced = 0  # the deny-list version the retained gateway status names (§8.5)
        self._behind_since: float | None = None
        status = TerminalStatus(state=Presence.ONLINE, kind=self.kind, firmware=firmware)
        self.link = Link(
            LinkSettings(host, port, creds.id, creds.password),
            status,
            on_up=self._link_up,
            on_down=self._link_down,
            on_message=self._on_message,
            on_reply=self._on_reply,
            rng=self.rng,
        )

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self.link.start()
        if self._session_task is None:
            self._session_task = asyncio.create_task(self._session(), name=f"session-{self.id}")

    async def stop(self) -> None:
        task, self._session_task = self._session_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await task
        await self.link.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_synced(self, within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            await self.synced.wait()

    @property
    def online(self) -> bool:
        """Connected, gateway ``online`` and the last ``hello`` answered (contract §8.3)."""
        return self.link.up and self.gateway_online and self.synced.is_set()

    def _still_online(self) -> bool:  # re-read after an await (mypy narrows properties)
        return self.online

    @property
    def in_doubt(self) -> int:
        return len(self._in_doubt)

    def deny_age_s(self) -> float | None:
        return None if self.fresh_at is None else self.clock.monotonic() - self.fresh_at

    def next_request_id(self) -> str:
        """Unique per terminal for ever (§4): terminal id, a random per-start token, a counter.

        The token changes at every start, so a restarted terminal never reuses an id even
        without persisting the counter; in-doubt requests keep the id they were sent with.
        """
        self._counter += 1
        return f"{self.id[:44]}-{self._boot}-{self._counter:06d}"

    # --- events from the link (synchronous: never publish from the reader loop) -----------------
    def _poke(self, *, sync: bool = False) -> None:
        self._need_sync = self._need_sync or sync
        self._wake.set()

    def _link_up(self) -> None:
        self._poke(sync=True)

    def _link_down(self) -> None:
        self.gateway_online = False
        self.synced.clear()

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            if topic == GATEWAY_STATUS_TOPIC:
                status = GatewayStatus.model_validate_json(payload) if payload else None
                state = status.state if status is not None else Presence.OFFLINE
                was, self.gateway_online = self.gateway_online, state is Presence.ONLINE
                if status is not None and status.denylist_version is not None:
                    self._announced = status.denylist_version  # §8.5: the version published
                    self._check_lag()
                if not self.gateway_online:
                    self.synced.clear()
                elif not was:
                    self._poke(sync=True)  # back online: hello, retries, upload (§8.3)
            elif topic == DENYLIST_SNAPSHOT_TOPIC and payload:
                self._apply_snapshot(DenySnapshot.model_validate_json(payload))
            elif topic == DENYLIST_DELTA_TOPIC and payload:  # empty = retained delta cleared
                self._apply_delta(DenyDelta.model_validate_json(payload))
        except ValidationError as exc:
            # §8.1: a snapshot that fails the check is ignored; keep the list held
            log.warning("%s: ignoring an invalid message on %s: %s", self.id, topic, exc)

    def _check_lag(self) -> None:
        """§8.5: behind the version the gateway status names for ``LAG_RESYNC_S``: a delta was
        lost on the way; re-read the retained snapshot and delta (never more than every
        ``LAG_RESYNC_S``)."""
        if self._announced <= self.deny.version:
            self._behind_since = None
            return
        now = self.clock.monotonic()
        if self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since >= LAG_RESYNC_S:
            self._behind_since = now
            log.info("%s: deny list behind the gateway's; re-reading it", self.id)
            self.link.resubscribe(DENYLIST_SNAPSHOT_TOPIC)
            self.link.resubscribe(DENYLIST_DELTA_TOPIC)

    def _apply_snapshot(self, snapshot: DenySnapshot) -> None:
        if snapshot.version < self.deny.version:
            return  # we already applied a newer delta
        changed = snapshot.version != self.deny.version
        self.deny = DenyList.from_snapshot(snapshot)
        self.deny_reasons = {c: r for c, r in self.deny_reasons.items() if c in self.deny}
        self.fresh_at = self.clock.monotonic()
        pending, self._pending_delta = self._pending_delta, None
        if pending is not None:
            # still a gap after this snapshot: wait for the next one, do not re-read in a loop
            self._apply_delta(pending, resync=False)
        if changed:
            self._wake.set()  # heartbeat now: report the version we hold (§8.5)

    def _apply_delta(self, delta: DenyDelta, *, resync: bool = True) -> None:
        held = self.deny.version
        try:
            applied = self.deny.apply(delta)
        except DenyListGap:
            # §8.2: keep what we hold, re-read the retained snapshot, then continue
            self._pending_delta = delta
            if resync:
                self.link.resubscribe(DENYLIST_SNAPSHOT_TOPIC)
            return
        for change in delta.changes:
            if change.version > held:
                if change.kind.blocks:
                    self.deny_reasons[change.card] = _REASONS.get(change.kind, ErrorCode.CARD_VOID)
                else:
                    self.deny_reasons.pop(change.card, None)
        self.fresh_at = self.clock.monotonic()
        if applied:
            self._wake.set()  # heartbeat now, so report_loss can count us (§7)

    def _on_reply(self, op: str, reply: Reply[Any]) -> None:
        """Every reply seen: one ``request_id`` must never show two different transfers (§6)."""
        transfer = getattr(reply.data, "transfer_id", None) if reply.ok else None
        if transfer is None or reply.request_id is None:
            return
        first = self._transfers.setdefault(reply.request_id, transfer)
        if first != transfer:
            self.violations.append(
                f"{self.id}: {op} {reply.request_id} approved twice ({first}, {transfer})"
            )

    # --- hello, heartbeat, retries --------------------------------------------------------------
    def _heartbeat_interval(self) -> float:
        if self.heartbeat_override_s is not None:
            return self.heartbeat_override_s
        return float(self.config.heartbeat_interval_s) if self.config else 30.0

    async def _session(self) -> None:
        retry = 0.5
        while True:
            timeout = self._heartbeat_interval() if self.synced.is_set() else retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()
            if not (self.link.up and self.gateway_online) or self.refused:
                self.synced.clear()
                continue
            if self._need_sync or not self.synced.is_set():
                self._need_sync = False
                ok = await self._sync()
                retry = 0.5 if ok else min(retry * 2, self._heartbeat_interval())
            else:
                await self._heartbeat()

    async def _sync(self) -> bool:
        """``hello``, then the in-doubt requests, then :meth:`_after_hello` (§2, §8.3)."""
        async with self._lock:
            self.synced.clear()
            hello = HelloRequest(
                kind=self.kind, firmware=self.firmware, denylist_version=self.deny.version
            )
            try:
                reply = await self._call("hello", hello, self.next_request_id())
                if not reply.ok:
                    assert reply.error is not None
                    log.error("%s: hello refused: %s", self.id, reply.error.message)
                    if reply.error.code in (
                        ErrorCode.TERMINAL_UNKNOWN,
                        ErrorCode.TERMINAL_DISABLED,
                        ErrorCode.PERMISSION_DENIED,
                    ):
                        self.refused = reply.error.code.value
                    return False
                assert isinstance(reply.data, HelloResponse)
                self.config = reply.data.config
                self.fresh_at = self.clock.monotonic()
                await self._settle_in_doubt()
                await self._after_hello()
            except LinkError as exc:
                log.info("%s: not back online yet (%s)", self.id, exc)
                return False
            self.synced.set()
            return True

    async def _heartbeat(self) -> None:
        data = HeartbeatRequest(
            denylist_version=self.deny.version, pending_offline=self._pending_offline()
        )
        try:
            reply = await self._call("heartbeat", data, self.next_request_id())
        except LinkError:
            self._went_offline()
            return
        self.heartbeats += 1
        if reply.ok:
            self.fresh_at = self.clock.monotonic()
        self._check_lag()

    def _pending_offline(self) -> int:
        return 0

    async def _after_hello(self) -> None:
        """Kind-specific work once back online (the POS uploads its offline sales)."""

    def _went_offline(self) -> None:
        self.synced.clear()
        self._poke(sync=True)

    async def _call(self, op: str, data: BaseModel, request_id: str) -> Reply[Any]:
        """One request with retries under the same ``request_id`` (§4, §6).

        :class:`NotConnected` if nothing was ever sent, :class:`NoReply` if it is in doubt.
        """
        sent = False
        for _ in range(1 + self.retries):
            try:
                reply = await self.link.request(op, request_id, data, self.request_timeout_s)
            except NotConnected:
                if not sent:
                    raise
                break
            except NoReply:
                sent = True
                continue
            if reply.error is not None and reply.error.code is ErrorCode.UNAVAILABLE:
                # §6.1: not a decision — another copy of this request may still be decided;
                # retry with the same id until the answer is final (the decision, or `expired`)
                sent = True
                continue
            return reply
        raise NoReply(f"{op} {request_id}: no final reply after {1 + self.retries} attempts")

    async def _settle_in_doubt(self) -> None:
        """Retry every unanswered request, oldest first, with its own id (§6)."""
        for request_id, pending in list(self._in_doubt.items()):
            reply = await self._call(pending.op, pending.data, request_id)
            del self._in_doubt[request_id]
            self._settled(request_id, pending, reply)

    def _settled(self, request_id: str, pending: _Pending, reply: Reply[Any]) -> None:
        self._emit(self._result(pending.op, request_id, reply, pending, Mode.LATE))

    def _emit(self, result: TapResult) -> None:
        if self.observer is not None:
            self.observer(result)

    def _result(
        self, op: str, request_id: str, reply: Reply[Any], pending: _Pending, mode: Mode
    ) -> TapResult:
        result = TapResult(
            self.id,
            op,
            mode,
            approved=reply.ok,
            request_id=request_id,
            card=pending.card,
            amount_fen=pending.amount_fen,
            latency_s=self.clock.monotonic() - pending.sent_at,
            sent_at=pending.sent_at,
            data=reply.data,
        )
        if reply.error is not None:
            result.code, result.message = reply.error.code.value, reply.error.message
        elif isinstance(reply.data, AccessResponse) and not reply.data.allowed:
            result.approved = False
            result.code = reply.data.reason.value if reply.data.reason else None
        result.transfer_id = getattr(reply.data, "transfer_id", None)
        result.balance_after_fen = getattr(reply.data, "balance_after_fen", None)
        return result

    async def _online(
        self, op: str, data: BaseModel, *, card: str | None = None, amount: int | None = None
    ) -> TapResult | None:
        """Ask the gateway; ``None`` if the terminal is offline and must decide alone."""
        if not self.online:
            return None
        async with self._lock:
            if not self._still_online():
                return None
            try:
                await self._settle_in_doubt()  # §6: before any new request
            except LinkError:
                self._went_offline()
                return None
            request_id = self.next_request_id()
            pending = _Pending(op, data, self.clock.monotonic(), card, amount)
            try:
                reply = await self._call(op, data, request_id)
            except NotConnected:
                self._went_offline()
                return None
            except NoReply:
                self._in_doubt[request_id] = pending
                self._went_offline()
                result = TapResult(
                    self.id,
                    op,
                    Mode.IN_DOUBT,
                    approved=False,
                    code=ErrorCode.UNAVAILABLE.value,
                    message=_message(ErrorCode.UNAVAILABLE, "result pending / 结果待确认"),
                    request_id=request_id,
                    card=card,
                    amount_fen=amount,
                    latency_s=self.clock.monotonic() - pending.sent_at,
                    sent_at=pending.sent_at,
                )
            else:
                result = self._result(op, request_id, reply, pending, Mode.ONLINE)
        self._emit(result)
        return result

    def _local(
        self,
        op: str,
        code: ErrorCode | None,
        detail: str | None = None,
        *,
        card: str | None = None,
        amount: int | None = None,
    ) -> TapResult:
        """An offline decision; refusals that are not card states are ``offline_<detail>``."""
        result = TapResult(self.id, op, Mode.OFFLINE, approved=code is None, card=card)
        result.amount_fen = amount
        if code is not None:
            result.code = code.value if detail is None else f"offline_{detail}"
            result.message = _message(code, detail)
        self._emit(result)
        return result

    def _offline_refusal(self, card: str) -> tuple[ErrorCode, str | None] | None:
        """§8.3: deny list first (LOSS-2), then the age of the list held."""
        if card in self.deny:
            return self.deny_reasons.get(card, _UNKNOWN_REASON), None
        age = self.deny_age_s()
        if self.config is None or age is None or age > self.config.offline_max_age_s:
            return ErrorCode.UNAVAILABLE, "stale"
        return None


def _card(uid: str) -> str:
    return uid.strip().upper()  # §1: upper-case hex; the deny list compares strings


class Pos(Terminal):
    """A point of sale: online sales, offline sales under the hello limits, backlog upload.

    Offline (§8.3): refuse cards on the deny list, refuse everything when the list is older than
    ``offline_max_age_s``, approve up to ``offline_max_amount_fen`` per sale, at most
    ``offline_max_daily_fen`` per card per campus day and ``offline_max_count`` sales waiting.
    Every offline sale takes the next ``seq`` (from 1, no gaps) and is kept until an
    ``offline_upload`` reply lists it as accepted, duplicate or rejected. The card kind is not on
    the wire, so temporary cards get the same limits.

    ``state_path`` (optional) keeps the sequence, the backlog and in-doubt sales in a JSON file,
    so a restarted simulator neither reuses a ``seq`` nor forgets a sale.
    """

    kind = TerminalKind.POS

    def __init__(
        self,
        creds: Credentials,
        host: str,
        port: int,
        *,
        state_path: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(creds, host, port, **kwargs)
        self.state_path = state_path
        self.next_seq = 1
        self.backlog: list[OfflineSale] = []
        self.stored: set[int] = set()
        self.uploaded: set[int] = set()  # accepted or duplicates
        self.rejected: dict[int, str] = {}
        self.gaps_reported = 0
        self._daily: dict[tuple[str, int], int] = {}
        self._last_sale: str | None = None
        self._load_state()

    async def sale(self, card: str, amount_fen: int, merchant_id: str | None = None) -> TapResult:
        card = _card(card)
        data = PurchaseRequest(card=card, amount_fen=amount_fen, merchant_id=merchant_id)
        result = await self._online("purchase", data, card=card, amount=amount_fen)
        if result is None:
            return self._offline_sale("purchase", card, amount_fen, merchant_id)
        if result.approved and result.mode is Mode.ONLINE:
            self._last_sale = result.request_id
        return result

    async def meal(self, card: str, amount_fen: int) -> TapResult:
        """A canteen swipe (MEAL-1 subsidy decided by the gateway); offline it is a plain sale."""
        card = _card(card)
        data = MealRequest(card=card, amount_fen=amount_fen)
        result = await self._online("meal", data, card=card, amount=amount_fen)
        return result or self._offline_sale("meal", card, amount_fen, None)

    async def void_last(self) -> TapResult:
        """Reverse this POS's own last online sale (§7 ``void``, TOP-2 for anything older)."""
        if self._last_sale is None:
            return self._local("void", ErrorCode.NOT_FOUND, "nothing_to_void")
        data = VoidRequest(original_request_id=self._last_sale)
        result = await self._online("void", data)
        if result is None:
            return self._local("void", ErrorCode.UNAVAILABLE, "offline")
        if result.approved:
            self._last_sale = None
        return result

    def _offline_sale(self, op: str, card: str, amount: int, merchant_id: str | None) -> TapResult:
        refusal = self._offline_refusal(card)
        cfg = self.config
        if refusal is None and cfg is not None:
            now_ms = self.clock.now_ms()
            day = (now_ms + _CST_MS) // _DAY_MS
            if cfg.offline_max_amount_fen == 0 or amount > cfg.offline_max_amount_fen:
                refusal = ErrorCode.UNAVAILABLE, "over_sale_limit"
            elif self._daily.get((card, day), 0) + amount > cfg.offline_max_daily_fen:
                refusal = ErrorCode.UNAVAILABLE, "over_daily_limit"
            elif len(self.backlog) >= cfg.offline_max_count:
                refusal = ErrorCode.UNAVAILABLE, "backlog_full"
            else:
                sale = OfflineSale(
                    seq=self.next_seq,
                    card=card,
                    amount_fen=amount,
                    at_ms=now_ms,
                    merchant_id=merchant_id,
                    denylist_version=self.deny.version,  # the list this sale was checked against
                )
                self.next_seq += 1
                self.backlog.append(sale)
                self.stored.add(sale.seq)
                self._daily[card, day] = self._daily.get((card, day), 0) + amount
                self._save_state()
                result = self._local(op, None, card=card, amount=amount)
                result.seq = sale.seq
                return result
        code, detail = refusal or (ErrorCode.UNAVAILABLE, "stale")
        return self._local(op, code, detail, card=card, amount=amount)

    def _pending_offline(self) -> int:
        return len(self.backlog)

    async def upload(self, sales: list[OfflineSale]) -> TapResult:
        """Send ``sales`` once more (e.g. to check they come back as ``duplicates``)."""
        result = await self._online("offline_upload", OfflineUploadRequest(sales=sales))
        return result or self._local("offline_upload", ErrorCode.UNAVAILABLE, "offline")

    def unresolved_offline(self) -> list[int]:
        """Offline sales stored but not yet accepted, duplicate or rejected by the gateway."""
        return sorted(self.stored - self.uploaded - set(self.rejected))

    async def _after_hello(self) -> None:
        await self.upload_backlog()

    async def upload_backlog(self) -> None:
        """§8.3: in ``seq`` order, at most 100 per request; drop what the reply settles."""
        while self.backlog:
            batch = self.backlog[:BATCH]
            data = OfflineUploadRequest(sales=batch)
            request_id = self.next_request_id()
            try:
                reply = await self._call("offline_upload", data, request_id)
            except NoReply:
                self._in_doubt[request_id] = _Pending(
                    "offline_upload", data, self.clock.monotonic()
                )
                self._save_state()
                raise
            if self._upload_reply(reply) == 0:
                break

    def _settled(self, request_id: str, pending: _Pending, reply: Reply[Any]) -> None:
        if pending.op == "offline_upload":
            self._upload_reply(reply)
        else:
            super()._settled(request_id, pending, reply)
        self._save_state()

    def _upload_reply(self, reply: Reply[Any]) -> int:
        if not reply.ok:
            assert reply.error is not None
            log.warning("%s: offline upload refused: %s", self.id, reply.error.message)
            return 0
        data = reply.data
        assert isinstance(data, OfflineUploadResponse)
        self.uploaded.update(data.accepted, data.duplicates)
        for rejection in data.rejected:
            self.rejected[rejection.seq] = rejection.code.value
        done = set(data.accepted) | set(data.duplicates) | {r.seq for r in data.rejected}
        before = len(self.backlog)
        self.backlog = [s for s in self.backlog if s.seq not in done]
        held = {s.seq for s in self.backlog}
        for gap in data.gaps:
            missing = set(range(gap.first, gap.last + 1)) - held
            self.gaps_reported += len(missing & self.stored)
        self._save_state()
        return before - len(self.backlog)

    # --- optional persistence -------------------------------------------------------------------
    def _save_state(self) -> None:
        if self.state_path is None:
            return
        state = {
            "next_seq": self.next_seq,
            "backlog": [s.model_dump(mode="json") for s in self.backlog],
            "in_doubt": [
                {"request_id": rid, "op": p.op, "data": p.data.model_dump(mode="json")}
                for rid, p in self._in_doubt.items()
            ],
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, self.state_path)

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text(encoding="utf-8"))
        self.next_seq = int(state["next_seq"])
        self.backlog = [OfflineSale.model_validate(s, strict=False) for s in state["backlog"]]
        self.stored = {s.seq for s in self.backlog}
        now = self.clock.monotonic()
        for item in state["in_doubt"]:
            model = OPERATIONS[item["op"]].request.model_validate(item["data"], strict=False)
            self._in_doubt[item["request_id"]] = _Pending(item["op"], model, now)


class Kiosk(Terminal):
    """Self-service kiosk: login, balance, loss report (挂失, LOSS-1/2), password, top-up.

    Offline it does nothing that needs the gateway (§8.3): every call is refused ``unavailable``.
    Passwords and session tokens are never logged or kept beyond the call.
    """

    kind = TerminalKind.KIOSK

    async def _ask(self, op: str, data: BaseModel, card: str | None = None) -> TapResult:
        result = await self._online(op, data, card=card)
        return result or self._local(op, ErrorCode.UNAVAILABLE, "offline", card=card)

    async def login(self, number: str, password: str) -> TapResult:
        return await self._ask("login", LoginRequest(number=number, password=password))

    async def balance(self, session: str) -> TapResult:
        return await self._ask("balance", BalanceRequest(session=session))

    async def report_loss(self, session: str, card_serial: str | None = None) -> TapResult:
        """``data`` is a ``ReportLossResponse``: the deny-list version and ``terminals_applied``."""
        return await self._ask(
            "report_loss", ReportLossRequest(session=session, card_serial=card_serial)
        )

    async def change_password(self, session: str, old: str, new: str) -> TapResult:
        data = ChangePasswordRequest(session=session, old_password=old, new_password=new)
        return await self._ask("change_password", data)

    async def topup(
        self,
        amount_fen: int,
        payment_ref: str,
        *,
        card: str | None = None,
        session: str | None = None,
    ) -> TapResult:
        card = _card(card) if card else None
        data = TopupRequest(
            card=card, session=session, amount_fen=amount_fen, payment_ref=payment_ref
        )
        result = await self._ask("topup", data, card)
        result.amount_fen = amount_fen
        return result

    async def login_and_report_loss(self, number: str, password: str) -> TapResult:
        """The holder's whole visit: log in, report the card lost (the login result if refused)."""
        login = await self.login(number, password)
        if not login.approved:
            return login
        session: LoginResponse = login.data
        return await self.report_loss(session.session)

    async def login_and_balance(self, number: str, password: str) -> TapResult:
        login = await self.login(number, password)
        if not login.approved:
            return login
        session: LoginResponse = login.data
        return await self.balance(session.session)


class DoorReader(Terminal):
    """A door: the gateway decides online; offline the deny list held decides (LOSS-2, §8.3)."""

    kind = TerminalKind.DOOR

    async def access(self, card: str) -> TapResult:
        card = _card(card)
        result = await self._online("access", AccessRequest(card=card), card=card)
        if result is not None:
            return result
        refusal = self._offline_refusal(card)
        if refusal is None:
            return self._local("access", None, card=card)
        return self._local("access", refusal[0], refusal[1], card=card)


class WaterController(Terminal):
    """Hot water, two-phase (§7): ``hold`` before the valve opens, then ``settle`` or ``release``.

    Offline it opens nothing (a hold needs the purse). A settle or release in doubt is retried
    with its own id once back online, so the hold is not left for the gateway to expire.
    """

    kind = TerminalKind.WATER

    async def hold(self, card: str, amount_fen: int) -> TapResult:
        card = _card(card)
        data = WaterHoldRequest(card=card, amount_fen=amount_fen)
        result = await self._online("water_hold", data, card=card, amount=amount_fen)
        return result or self._local(
            "water_hold", ErrorCode.UNAVAILABLE, "offline", card=card, amount=amount_fen
        )

    async def settle(self, hold_id: str, used_fen: int) -> TapResult:
        data = WaterSettleRequest(hold_id=hold_id, used_fen=used_fen)
        result = await self._online("water_settle", data, amount=used_fen)
        return result or self._local("water_settle", ErrorCode.UNAVAILABLE, "offline")

    async def release(self, hold_id: str) -> TapResult:
        result = await self._online("water_release", WaterReleaseRequest(hold_id=hold_id))
        return result or self._local("water_release", ErrorCode.UNAVAILABLE, "offline")


def make_terminal(
    creds: Credentials, host: str, port: int, *, state_dir: Path | None = None, **kwargs: Any
) -> Terminal:
    """A terminal of the credentials' kind; a POS keeps its state under ``state_dir``."""
    if creds.kind is TerminalKind.POS and state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        return Pos(creds, host, port, state_path=state_dir / f"{creds.id}.json", **kwargs)
    return KINDS[creds.kind](creds, host, port, **kwargs)


KINDS: dict[TerminalKind, type[Terminal]] = {
    TerminalKind.POS: Pos,
    TerminalKind.KIOSK: Kiosk,
    TerminalKind.DOOR: DoorReader,
    TerminalKind.WATER: WaterController,
}
