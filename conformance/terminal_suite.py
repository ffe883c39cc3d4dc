"""``conformance terminal``: the kit plays the gateway (and the card center, through scripted deny
lists) against a vendor's terminal on a **test** broker, and checks what the terminal does.

The kit connects with the gateway's broker account, so it can read the terminal's requests and
publish replies, the gateway status and the deny list — run it on a broker no real gateway uses
(it overwrites the retained gateway status and deny list). Card taps and power switching go
through a :class:`~conformance.rig.Rig` (a person, or a hook for automated rigs).

The run, in order: switch on; retained ``online`` status; ``hello`` first, its reply withheld
once (the terminal must retry with the same ``request_id``); the version held reported; periodic
heartbeat; a delta acknowledged within 1 s; a snapshot with a bad hash ignored; a delta after a
gap not applied, then a snapshot applied; an online sale whose reply is withheld and retried; a
refusal per error code shown as such; ``unavailable`` retried; then offline (gateway status
``offline``): a card on the deny list refused, the offline limits kept, the stale list refusing
everything; back online: ``hello`` then the offline sales uploaded in ``seq`` order; request ids
never reused for other content; retained ``offline`` on an orderly stop and as last will.

Not observable from the broker, so not checked: the keep-alive interval, TCP_NODELAY, the clean
start flag and session expiry, TLS settings (the broker's listener enforces those it can).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from conformance.mqtt import Broker, Message, Peer
from conformance.report import Report, StepFailed
from conformance.rig import Rig, TapOutcome
from protocol.errors import ErrorCode
from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    AccessResponse,
    DenyChange,
    DenyChangeKind,
    DenyDelta,
    GatewayStatus,
    HeartbeatResponse,
    HelloResponse,
    OfflineUploadRequest,
    OfflineUploadResponse,
    Presence,
    PurchaseResponse,
    TerminalConfig,
    TerminalKind,
    TerminalStatus,
    WireError,
    decode_request,
    encode_error,
    encode_reply,
    make_snapshot,
    response_topic,
    terminal_status_topic,
)

__all__ = ["TerminalPlan", "TerminalSuite", "run_terminal_suite"]

#: Default test cards: the rig must be able to present them (a person: test cards with these
#: UIDs, or give your own with ``--cards``).
GOOD, LOST, OTHER = "04C0FFEE000001", "04C0FFEE000002", "04C0FFEE000003"
#: §8.5: the acknowledgement heartbeat comes within 1 s; the kit allows scheduling slack.
ACK_WITHIN_S = 1.3
#: Errors a POS must show as refusals (and never approve or store offline). Not
#: ``terminal_disabled``: a terminal may rightly stop working on it until re-provisioned.
REFUSALS = (
    ErrorCode.CARD_LOST,
    ErrorCode.CARD_FROZEN,
    ErrorCode.CARD_SUSPENDED,
    ErrorCode.CARD_EXPIRED,
    ErrorCode.CARD_TERMINATED,
    ErrorCode.CARD_VOID,
    ErrorCode.CARD_NOT_ISSUED,
    ErrorCode.CARD_UNKNOWN,
    ErrorCode.INSUFFICIENT_FUNDS,
    ErrorCode.INVALID_AMOUNT,
    ErrorCode.PERMISSION_DENIED,
    ErrorCode.INTERNAL,
    ErrorCode.EXPIRED,
)
#: Codes a door gets as an ``allowed: false`` reason (the others come as error replies).
_ACCESS_REASONS = frozenset(REFUSALS[:8])
ALL_STEPS = tuple(f"T{n:02d}" for n in range(1, 23))


@dataclass(frozen=True, slots=True)
class TerminalPlan:
    terminal_id: str
    kind: TerminalKind
    cards: tuple[str, str, str] = (GOOD, LOST, OTHER)
    heartbeat_interval_s: int = 2
    offline_max_age_s: int = 5
    offline_max_amount_fen: int = 1000
    offline_max_daily_fen: int = 1500
    #: a withheld reply must be retried within this (the contract's 5 s timeout + slack)
    retry_within_s: float = 12.0
    #: how long to wait for the terminal to come up after ``rig.start()``
    start_within_s: float = 30.0
    #: how long a power cut may take to show the last will (1.5 x keep alive + slack)
    will_within_s: float = 100.0
    #: step ids to run (the start-up steps T01..T05 always run); None: all
    only: frozenset[str] | None = None


@dataclass(slots=True)
class Seen:
    op: str
    request_id: str | None
    body: dict[str, Any] | None
    message: Message
    error: str | None = None


@dataclass
class TerminalSuite:
    broker: Broker
    gateway_user: str
    gateway_password: str
    plan: TerminalPlan
    rig: Rig
    report: Report
    peer: Peer | None = None
    #: deny-list versions only grow, also across runs (a terminal keeps the version it held):
    #: each run starts above every earlier one
    version: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    entries: set[str] = field(default_factory=set)
    online: bool = True
    seen: list[Seen] = field(default_factory=list)
    requests: asyncio.Queue[Seen] = field(default_factory=asyncio.Queue)
    statuses: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    heartbeats: list[tuple[float, int, int]] = field(default_factory=list)
    #: the step's own answers: return True when the request was handled
    handler: Callable[[Seen], Awaitable[bool]] | None = None
    last_contact: float = 0.0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def tid(self) -> str:
        return self.plan.terminal_id

    def config(self) -> TerminalConfig:
        p = self.plan
        return TerminalConfig(
            heartbeat_interval_s=p.heartbeat_interval_s,
            offline_max_age_s=p.offline_max_age_s,
            offline_max_amount_fen=p.offline_max_amount_fen,
            offline_max_daily_fen=p.offline_max_daily_fen,
            offline_max_count=500,
        )

    def wanted(self, step_id: str) -> bool:
        return self.plan.only is None or step_id in self.plan.only

    # --- the gateway's side ---------------------------------------------------------------------
    async def publish_status(self, online: bool) -> None:
        assert self.peer is not None
        self.online = online
        status = GatewayStatus(
            state=Presence.ONLINE if online else Presence.OFFLINE,
            denylist_version=self.version if online else None,
        )
        await self.peer.publish(
            GATEWAY_STATUS_TOPIC, status.model_dump_json(exclude_none=True).encode(), retain=True
        )

    async def publish_snapshot(self, version: int, entries: set[str], *, bad: bool = False) -> None:
        assert self.peer is not None
        snapshot = make_snapshot(version, sorted(entries), time.time_ns() // 1_000_000)
        raw = snapshot.model_dump(mode="json")
        if bad:
            raw["sha256"] = "0" * 64  # the check must fail (§8.1)
        else:
            self.version, self.entries = version, set(entries)
        await self.peer.publish(DENYLIST_SNAPSHOT_TOPIC, json.dumps(raw).encode(), retain=True)
        if not bad:
            await self.peer.publish(DENYLIST_DELTA_TOPIC, b"", retain=True)

    async def publish_delta(self, start: int, changes: list[tuple[str, DenyChangeKind]]) -> int:
        assert self.peer is not None
        items = [
            DenyChange(version=start + i + 1, card=card, kind=kind)
            for i, (card, kind) in enumerate(changes)
        ]
        delta = DenyDelta(from_version=start, to_version=start + len(items), changes=items)
        await self.peer.publish(DENYLIST_DELTA_TOPIC, delta.model_dump_json().encode(), retain=True)
        return delta.to_version

    async def reply(self, seen: Seen, payload: bytes) -> None:
        assert self.peer is not None
        topic = seen.message.response_topic or response_topic(self.tid, seen.op)
        if not topic.startswith(f"onecard/v1/t/{self.tid}/resp/"):
            topic = response_topic(self.tid, seen.op)
        await self.peer.publish(topic, payload, correlation=seen.message.correlation)

    async def answer_ok(self, seen: Seen, data: Any) -> None:
        await self.reply(seen, encode_reply(seen.op, seen.request_id or "x", data))

    async def answer_error(self, seen: Seen, code: ErrorCode) -> None:
        await self.reply(seen, encode_error(seen.request_id, code))

    async def _intake(self) -> None:
        assert self.peer is not None
        status_topic = terminal_status_topic(self.tid)
        while True:
            msg = await self.peer.inbox.get()
            if msg.topic == status_topic:
                await self.statuses.put(msg)
                continue
            op = msg.topic.rsplit("/", 1)[-1]
            seen = Seen(op, None, None, msg)
            try:
                request = decode_request(op, msg.payload, kind=self.plan.kind)
                seen.request_id = request.request_id
                seen.body = json.loads(msg.payload)
            except WireError as exc:
                seen.error = f"{exc.code.value}: {exc.message_en}"
                seen.request_id = exc.request_id
            self.seen.append(seen)
            if op == "heartbeat" and seen.body is not None:
                data = seen.body["data"]
                self.heartbeats.append(
                    (msg.at, int(data["denylist_version"]), int(data.get("pending_offline", 0)))
                )
            await self.requests.put(seen)
            if self.online:
                self._spawn(self._respond(seen))

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respond(self, seen: Seen) -> None:
        if self.handler is not None and await self.handler(seen):
            return
        now = time.time_ns() // 1_000_000
        if seen.error is not None:
            await self.answer_error(seen, ErrorCode.MALFORMED)
        elif seen.op == "hello":
            self.last_contact = time.monotonic()
            await self.answer_ok(
                seen,
                HelloResponse(
                    server_time_ms=now, denylist_version=self.version, config=self.config()
                ),
            )
        elif seen.op == "heartbeat":
            self.last_contact = time.monotonic()
            data = HeartbeatResponse(server_time_ms=now, denylist_version=self.version)
            await self.answer_ok(seen, data)
        else:
            await self.answer_error(seen, ErrorCode.UNAVAILABLE)

    async def next_request(self, within_s: float, match: Callable[[Seen], bool]) -> Seen:
        async with asyncio.timeout(within_s):
            while True:
                seen = await self.requests.get()
                if match(seen):
                    return seen

    async def heartbeat_after(self, since: float, within_s: float) -> tuple[float, int, int]:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for beat in self.heartbeats:
                if beat[0] >= since:
                    return beat
            await asyncio.sleep(0.02)
        raise TimeoutError

    async def version_reported(self, version: int, since: float, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if any(t >= since and v >= version for t, v, _ in self.heartbeats):
                return True
            await asyncio.sleep(0.02)
        return False

    # --- the run ------------------------------------------------------------------------------
    async def run(self) -> None:
        peer = Peer(
            self.broker,
            self.gateway_user,
            self.gateway_password,
            client_id=f"{self.gateway_user}-conformance",
            trace=self.report.trace,
        )
        self.peer = peer
        async with peer:
            await peer.subscribe(terminal_status_topic(self.tid), retain_as_published=True)
            await peer.subscribe(f"onecard/v1/t/{self.tid}/req/+")
            await self.publish_snapshot(self.version, set())
            await self.publish_status(True)
            self._spawn(self._intake())
            try:
                await self._steps()
            finally:
                for task in list(self._tasks):
                    task.cancel()
                with contextlib.suppress(Exception):
                    await self.rig.stop()

    async def _steps(self) -> None:
        r, p = self.report, self.plan
        with r.step(
            "T01", "开机后保留 online 状态 retained online status after connecting", "§2.3"
        ):
            await self.rig.start()
            # (a retained `offline` from an earlier power-off comes first: skip it)
            msg = await _next(
                self.statuses, p.start_within_s, lambda m: bool(m.payload) and not _says_offline(m)
            )
            status = TerminalStatus.model_validate_json(msg.payload)
            _expect(status.state is Presence.ONLINE, f"status says {status.state}")
            _expect(msg.retain, "the online status is not retained")
            _expect(status.kind in (None, p.kind), f"status kind {status.kind} != {p.kind}")
        hello: Seen | None = None
        with r.step("T02", "首个请求为 hello first request is hello", "§2.3"):
            gate = asyncio.Event()

            async def withhold_first_hello(seen: Seen) -> bool:
                if seen.op == "hello" and not gate.is_set():
                    gate.set()
                    return True  # no reply: the terminal must retry it (T03)
                return False

            self.handler = withhold_first_hello
            hello = await self.next_request(p.start_within_s, lambda _: True)
            _expect(hello.error is None, f"malformed: {hello.error}")
            _expect(hello.op == "hello", f"first request is {hello.op}, not hello")
            assert hello.body is not None
            data = hello.body["data"]
            _expect(data["kind"] == p.kind.value, f"hello kind {data['kind']} != {p.kind.value}")
        with r.step("T03", "无应答时以同一 request_id 重试 retry with the same id", "§6"):
            _expect(hello is not None and hello.op == "hello", "needs T02's hello")
            assert hello is not None
            retry = await self.next_request(
                p.retry_within_s, lambda s: s.op == "hello" or s.op != "heartbeat"
            )
            self.handler = None
            _expect(retry.op == "hello", f"after a withheld hello came {retry.op}")
            _expect(
                retry.request_id == hello.request_id,
                f"hello retried as {retry.request_id}, first sent as {hello.request_id}",
            )
            _expect(retry.body == hello.body, "the retry's content differs from the first send")
        self.handler = None
        with r.step("T04", "报告持有的黑名单版本 reports the version held", "§8.1"):
            hello_versions = [
                s.body["data"]["denylist_version"]
                for s in self.seen
                if s.op == "hello" and s.body is not None
            ]
            if hello_versions[-1:] != [self.version]:  # else: a heartbeat must say it
                since = time.monotonic() - 60
                ok = await self.version_reported(self.version, since, p.heartbeat_interval_s + 1.5)
                _expect(ok, f"never reported version {self.version} (hello: {hello_versions})")
        with r.step("T05", "定时心跳 periodic heartbeat", "§7"):
            since = time.monotonic()
            await self.heartbeat_after(since, p.heartbeat_interval_s + 1.5)
        await self._deny_steps()
        await self._online_tap_steps()
        await self._offline_steps()
        self._ids_step()
        await self._stop_steps()

    async def _deny_steps(self) -> None:
        r, p = self.report, self.plan
        good, lost, other = p.cards
        if self.wanted("T06"):
            with r.step("T06", "增量应用并在 1 秒内心跳确认 delta acknowledged within 1 s", "§8.5"):
                # right after a heartbeat, so the next periodic one cannot pass for the ack
                await self.heartbeat_after(time.monotonic(), p.heartbeat_interval_s + 1.5)
                window = min(ACK_WITHIN_S, p.heartbeat_interval_s - 0.3)
                since = time.monotonic()
                target = await self.publish_delta(self.version, [(lost, DenyChangeKind.LOST)])
                self.version, self.entries = target, self.entries | {lost}
                await self.publish_status(True)
                _expect(
                    await self.version_reported(target, since, window),
                    f"no heartbeat with version {target} within {window:.1f} s of the delta",
                )
        if self.wanted("T07"):
            with r.step(
                "T07", "校验失败的快照被忽略 a snapshot with a bad hash is ignored", "§8.1"
            ):
                held = self.version
                since = time.monotonic()
                await self.publish_snapshot(held + 5, {good}, bad=True)
                await asyncio.sleep(1.0)
                beat = await self.heartbeat_after(since + 0.9, p.heartbeat_interval_s + 1.5)
                _expect(beat[1] == held, f"reports version {beat[1]} after a bad snapshot")
                await self.publish_snapshot(held, self.entries)  # the retained one valid again
        if self.wanted("T08"):
            with r.step("T08", "断档增量不应用，重读快照 gap: keep the list, then resync", "§8.2"):
                held = self.version
                since = time.monotonic()
                await self.publish_delta(held + 2, [(other, DenyChangeKind.LOST)])
                await asyncio.sleep(1.0)
                beat = await self.heartbeat_after(since + 0.9, p.heartbeat_interval_s + 1.5)
                _expect(beat[1] == held, f"reports version {beat[1]} after a delta with a gap")
                since = time.monotonic()
                await self.publish_snapshot(held + 3, self.entries | {other})
                await self.publish_status(True)
                _expect(
                    await self.version_reported(held + 3, since, ACK_WITHIN_S),
                    f"no heartbeat with version {held + 3} within 1 s of the new snapshot",
                )

    def _tap_op(self) -> str | None:
        return {TerminalKind.POS: "purchase", TerminalKind.DOOR: "access"}.get(self.plan.kind)

    def _ok_tap(self, op: str) -> Any:
        if op == "access":
            return AccessResponse(allowed=True)
        return PurchaseResponse(balance_after_fen=9500, transfer_id="1001")

    async def _tap(self, card: str, amount: int) -> TapOutcome:
        async with asyncio.timeout(max(30.0, self.plan.retry_within_s * 3)):
            return await self.rig.tap(card, amount)

    async def _online_tap_steps(self) -> None:
        r, p = self.report, self.plan
        op = self._tap_op()
        titles = [
            ("T09", "联机交易无应答时同号重试 an unanswered tap is retried, same id", "§6"),
            ("T10", "各错误码显示为拒绝 every refusal shown as such", "§9"),
            ("T11", "unavailable 不是决定，重试 unavailable is retried", "§6.1"),
        ]
        if op is None:
            for t in titles:
                r.not_applicable(*t, f"a {p.kind.value} has no card tap the kit can drive")
            return
        good = p.cards[0]
        if self.wanted("T09"):
            with r.step(*titles[0]):
                first: list[Seen] = []

                async def withhold_once(seen: Seen) -> bool:
                    if seen.op != op:
                        return False
                    if not first:
                        first.append(seen)
                        return True
                    await self.answer_ok(seen, self._ok_tap(op))
                    return True

                self.handler = withhold_once
                outcome = await self._tap(good, 500)
                self.handler = None
                taps = [s for s in self.seen if s.op == op]
                _expect(len(taps) >= 2, f"{op} sent {len(taps)} time(s), never retried")
                _expect(
                    taps[-1].request_id == taps[0].request_id and taps[-1].body == taps[0].body,
                    f"retried as {taps[-1].request_id} with other content,"
                    f" first sent as {taps[0].request_id}",
                )
                _expect(outcome.approved, f"the terminal showed {outcome} for an approved retry")
        if self.wanted("T10"):
            with r.step(*titles[1]):
                for code in REFUSALS:

                    async def refuse(seen: Seen, code: ErrorCode = code) -> bool:
                        if seen.op != op:
                            return False
                        if op == "access" and code in _ACCESS_REASONS:
                            await self.answer_ok(seen, AccessResponse(allowed=False, reason=code))
                        else:
                            await self.answer_error(seen, code)
                        return True

                    self.handler = refuse
                    outcome = await self._tap(good, 300)
                    _expect(not outcome.approved, f"{code.value}: the terminal approved the tap")
                    if code not in (ErrorCode.EXPIRED, ErrorCode.INTERNAL):
                        _expect(
                            outcome.code == code.value,
                            f"{code.value}: the terminal showed {outcome.code}",
                        )
                self.handler = None
        if self.wanted("T11"):
            with r.step(*titles[2]):
                copies: list[Seen] = []

                async def busy_once(seen: Seen) -> bool:
                    if seen.op != op:
                        return False
                    copies.append(seen)
                    if len(copies) == 1:
                        await self.answer_error(seen, ErrorCode.UNAVAILABLE)
                    else:
                        await self.answer_ok(seen, self._ok_tap(op))
                    return True

                self.handler = busy_once
                outcome = await self._tap(good, 200)
                self.handler = None
                _expect(len(copies) >= 2, "unavailable was taken as a decision: no retry")
                _expect(
                    copies[1].request_id == copies[0].request_id,
                    "unavailable retried under a new request_id",
                )
                _expect(outcome.approved, f"the terminal showed {outcome} after the retry")

    async def _offline_steps(self) -> None:
        r, p = self.report, self.plan
        good, lost, _ = p.cards
        is_pos = p.kind is TerminalKind.POS
        titles = {
            "T12": ("T12", "脱机时黑名单卡被拒 offline: a card on the deny list refused", "§8.3"),
            "T13": ("T13", "脱机单笔限额 offline: over the sale limit refused", "§8.3"),
            "T14": ("T14", "脱机限额内批准 offline: sales within the limits approved", "§8.3"),
            "T15": ("T15", "脱机日累计限额 offline: the daily limit per card", "§8.3"),
            "T16": ("T16", "黑名单过期后一律拒绝 offline: a stale list approves nothing", "§8.3"),
            "T17": ("T17", "恢复联机先 hello back online: hello first", "§8.3"),
            "T18": ("T18", "按 seq 顺序上传脱机交易 offline sales uploaded in seq order", "§8.3"),
            "T19": ("T19", "已确认的不再上传 settled sales not uploaded again", "§8.3"),
        }
        if self._tap_op() is None:
            for t in titles.values():
                r.not_applicable(*t, f"a {p.kind.value} has no card tap the kit can drive")
            return
        steps = [k for k in titles if self.wanted(k)]
        if not steps:
            return
        await self.publish_status(False)
        await asyncio.sleep(0.3)
        approved_offline: list[int] = []
        if self.wanted("T12"):
            with r.step(*titles["T12"]):
                _expect(lost in self.entries, "needs T06's delta (the lost card)")
                outcome = await self._tap(lost, 100)
                _expect(not outcome.approved, "a card on the deny list was approved offline")
        for key in ("T13", "T14", "T15"):
            if not is_pos:
                r.not_applicable(*titles[key], "offline sales: POS only")
        if is_pos and self.wanted("T13"):
            with r.step(*titles["T13"]):
                outcome = await self._tap(good, p.offline_max_amount_fen + 100)
                _expect(not outcome.approved, "a sale over offline_max_amount_fen was approved")
        if is_pos and self.wanted("T14"):
            with r.step(*titles["T14"]):
                for _ in range(2):
                    amount = p.offline_max_daily_fen * 2 // 5
                    outcome = await self._tap(good, amount)
                    _expect(outcome.approved, f"an offline sale within the limits: {outcome}")
                    approved_offline.append(amount)
        if is_pos and self.wanted("T15"):
            with r.step(*titles["T15"]):
                outcome = await self._tap(good, p.offline_max_daily_fen * 2 // 5)
                _expect(not outcome.approved, "the card's offline total passed the daily limit")
        if self.wanted("T16"):
            with r.step(*titles["T16"]):
                wait = self.last_contact + p.offline_max_age_s + 0.7 - time.monotonic()
                if wait > 0:
                    r.note(f"waiting {wait:.1f} s for the list to be older than offline_max_age_s")
                    await asyncio.sleep(wait)
                outcome = await self._tap(good, 100)
                _expect(not outcome.approved, "approved offline with a stale deny list")
        since = time.monotonic()
        await self.publish_status(True)
        if self.wanted("T17"):
            with r.step(*titles["T17"]):
                first = await self.next_request(p.retry_within_s, lambda s: s.message.at >= since)
                _expect(first.op == "hello", f"back online the first request was {first.op}")
        if not is_pos:
            r.not_applicable(*titles["T18"], "offline sales: POS only")
            r.not_applicable(*titles["T19"], "offline sales: POS only")
            return
        if self.wanted("T18"):
            with r.step(*titles["T18"]):
                uploaded: list[Any] = []
                while len(uploaded) < len(approved_offline):
                    upload = await self.next_request(
                        p.retry_within_s, lambda s: s.op == "offline_upload"
                    )
                    _expect(upload.error is None and upload.body is not None, f"{upload.error}")
                    assert upload.body is not None
                    sales = OfflineUploadRequest.model_validate(upload.body["data"]).sales
                    uploaded += sales
                    seqs = [s.seq for s in sales]
                    await self.answer_ok(
                        upload, OfflineUploadResponse(accepted=seqs, duplicates=[])
                    )
                order = [s.seq for s in uploaded]
                _expect(order == sorted(set(order)), f"uploaded in seq order {order}")
                _expect(
                    [s.amount_fen for s in uploaded] == approved_offline,
                    f"uploaded {[s.amount_fen for s in uploaded]}, approved {approved_offline}",
                )
                now = time.time_ns() // 1_000_000
                for sale in uploaded:
                    _expect(sale.denylist_version is not None, f"seq {sale.seq}: no version")
                    _expect(abs(sale.at_ms - now) < 300_000, f"seq {sale.seq}: at_ms far off")
        if self.wanted("T19"):
            with r.step(*titles["T19"]):
                since = time.monotonic()
                await asyncio.sleep(0.2)
                beat = await self.heartbeat_after(since, p.heartbeat_interval_s + 1.5)
                again = [s for s in self.seen if s.op == "offline_upload" and s.message.at > since]
                _expect(not again, f"{len(again)} upload(s) after every seq was accepted")
                _expect(beat[2] == 0, f"heartbeat says {beat[2]} offline sales pending")

    def _ids_step(self) -> None:
        with self.report.step(
            "T20", "请求号唯一且请求合规 request ids unique, requests valid", "§4"
        ):
            bad = [f"{s.op}: {s.error}" for s in self.seen if s.error is not None]
            _expect(not bad, f"malformed requests: {bad[:3]}")
            first: dict[str, dict[str, Any] | None] = {}
            for s in self.seen:
                if s.request_id is None or s.body is None:
                    continue
                key = s.request_id
                content = {"op": s.op, "data": s.body.get("data")}
                if key in first and first[key] != content:
                    raise StepFailed(f"request_id {key} reused for other content ({s.op})")
                first.setdefault(key, content)
            self.report.note(f"{len(self.seen)} requests, {len(first)} request ids")

    async def _stop_steps(self) -> None:
        """T22 (power cut, the last will) first while the terminal runs, then T21 (an orderly
        stop); a rig that cannot cut the power costs no restart."""
        r, p = self.report, self.plan
        if self.wanted("T22"):
            title = ("T22", "断电触发遗嘱 power cut: the last will says offline", "§2")
            self._drain_statuses()
            if not await self.rig.power_cut():
                r.not_applicable(*title, "the rig cannot cut the power")
            else:
                with r.step(*title):
                    msg = await _next(self.statuses, p.will_within_s, _says_offline)
                    _expect(msg.retain, "the last will is not retained")
                await self.rig.start()
                await _next(self.statuses, p.start_within_s, lambda m: not _says_offline(m))
        if self.wanted("T21"):
            with r.step("T21", "正常关机保留 offline 状态 orderly stop: retained offline", "§2"):
                self._drain_statuses()
                await self.rig.stop()
                msg = await _next(self.statuses, 10.0, _says_offline)
                _expect(msg.retain, "the offline status is not retained")

    def _drain_statuses(self) -> None:
        while not self.statuses.empty():
            self.statuses.get_nowait()


def _says_offline(msg: Message) -> bool:
    if not msg.payload:
        return False
    return TerminalStatus.model_validate_json(msg.payload).state is Presence.OFFLINE


def _expect(condition: bool, text: str) -> None:
    if not condition:
        raise StepFailed(text)


async def _next(
    queue: asyncio.Queue[Message], within_s: float, match: Callable[[Message], bool]
) -> Message:
    async with asyncio.timeout(within_s):
        while True:
            msg = await queue.get()
            with contextlib.suppress(ValueError):
                if match(msg):
                    return msg


async def run_terminal_suite(
    broker: Broker,
    gateway_user: str,
    gateway_password: str,
    plan: TerminalPlan,
    rig: Rig,
    report: Report,
) -> Report:
    suite = TerminalSuite(broker, gateway_user, gateway_password, plan, rig, report)
    await suite.run()
    return report
