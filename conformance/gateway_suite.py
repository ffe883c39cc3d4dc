"""``conformance gateway``: the kit plays terminals (POS, kiosk, door, water) against a gateway and
checks every operation of the contract, error cases included, and the deny-list distribution.

Every reply is validated against the contract's models (strict JSON types, unknown fields
refused) and every error reply's ``message`` against §9. Steps that need what the site file does
not give (a second card for the loss report, a kiosk account) are *not applicable*, never failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from conformance.mqtt import Broker, Message, Peer, PeerError
from conformance.report import Report, StepFailed
from conformance.site import Card, Site, TerminalCreds
from protocol.errors import ErrorCode
from protocol.wire import (
    DENYLIST_DELTA_TOPIC,
    DENYLIST_SNAPSHOT_TOPIC,
    GATEWAY_STATUS_TOPIC,
    OPERATIONS,
    DenyDelta,
    DenySnapshot,
    GatewayStatus,
    Presence,
    TerminalKind,
    TerminalStatus,
    message_conforms,
    request_topic,
    terminal_status_topic,
)

__all__ = ["GatewaySuite", "run_gateway_suite"]

_OFFLINE = TerminalStatus(state=Presence.OFFLINE).model_dump_json(exclude_none=True).encode()
#: How long the kit waits for any reply (the contract's request timeout).
REPLY_S = 5.0
#: report_loss budget (§8.5: 300 ms) plus a round trip and scheduling slack.
LOSS_REPLY_BUDGET_MS = 1000.0
#: A change must reach terminals as a delta within this (the log is watched every 50 ms).
DELTA_WITHIN_S = 2.0


@dataclass(slots=True)
class Answer:
    body: dict[str, Any]
    message: Message
    ms: float

    @property
    def ok(self) -> bool:
        return self.body.get("ok") is True

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return str(error.get("code")) if isinstance(error, dict) else None


def expect(condition: bool, text: str) -> None:
    if not condition:
        raise StepFailed(text)


@dataclass
class Term:
    """One simulated terminal of the kit: its session, replies by correlation or request id,
    and deny-list messages; it acknowledges every new deny-list version with a heartbeat."""

    creds: TerminalCreds
    peer: Peer
    report: Report
    errors: list[tuple[str, dict[str, Any]]]
    held: int = 0
    waiting: dict[str, asyncio.Future[Answer]] = field(default_factory=dict)
    deny: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    status: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _sent: dict[str, float] = field(default_factory=dict)
    _counter: int = 0

    @property
    def id(self) -> str:
        return self.creds.id

    def rid(self) -> str:
        self._counter += 1
        return f"{self.id[:30]}-cf-{uuid.uuid4().hex[:10]}-{self._counter}"

    async def start(self, *, watch: bool) -> None:
        await self.peer.__aenter__()
        await self.peer.subscribe(f"onecard/v1/t/{self.id}/resp/#")
        if watch:
            # retain as published: a live copy tells whether the gateway set retain, too
            await self.peer.subscribe(
                DENYLIST_SNAPSHOT_TOPIC,
                DENYLIST_DELTA_TOPIC,
                GATEWAY_STATUS_TOPIC,
                retain_as_published=True,
            )
        online = TerminalStatus(state=Presence.ONLINE, kind=self.creds.kind, firmware="conformance")
        await self.peer.publish(
            terminal_status_topic(self.id), online.model_dump_json().encode(), retain=True
        )
        self._spawn(self._dispatch())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.peer.publish(terminal_status_topic(self.id), _OFFLINE, retain=True)
        for task in list(self._tasks):
            task.cancel()
        await self.peer.__aexit__(None, None, None)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        prefix = f"onecard/v1/t/{self.id}/resp/"
        while True:
            msg = await self.peer.inbox.get()
            if msg.topic.startswith(prefix):
                self._reply(msg)
            elif msg.topic == GATEWAY_STATUS_TOPIC:
                await self.status.put(msg)
            elif msg.topic in (DENYLIST_SNAPSHOT_TOPIC, DENYLIST_DELTA_TOPIC):
                await self.deny.put(msg)
                self._acknowledge(msg)

    def _reply(self, msg: Message) -> None:
        try:
            body = json.loads(msg.payload)
        except (ValueError, RecursionError):  # `[` x 16,000 is a RecursionError (FIELD-NOTES)
            body = {"unreadable": msg.payload[:200].decode("utf-8", "replace")}
        if not isinstance(body, dict):
            body = {"unreadable": str(body)[:200]}
        key = msg.correlation.decode("utf-8", "replace") if msg.correlation else None
        if key not in self.waiting:
            key = str(body.get("request_id"))
        future = self.waiting.pop(key, None)
        if future is not None and not future.done():
            ms = (msg.at - self._sent.pop(key, msg.at)) * 1000
            future.set_result(Answer(body, msg, ms))

    def _acknowledge(self, msg: Message) -> None:
        """§8.5: a heartbeat within 1 s after the version held changes."""
        version = None
        with contextlib.suppress(ValueError, ValidationError):
            if msg.topic == DENYLIST_SNAPSHOT_TOPIC and msg.payload:
                version = DenySnapshot.model_validate_json(msg.payload).version
            elif msg.payload:
                version = DenyDelta.model_validate_json(msg.payload).to_version
        if version is not None and version > self.held:
            self.held = version
            self._spawn(self._heartbeat())

    async def _heartbeat(self) -> None:
        with contextlib.suppress(TimeoutError, PeerError):
            await self.ask("heartbeat", {"denylist_version": self.held, "pending_offline": 0})

    async def ask(
        self,
        op: str,
        data: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        rid: str | None = None,
        sent_ms: int | None = None,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
        within_s: float = REPLY_S,
    ) -> Answer:
        """Send one request and wait for its reply (matched by Correlation Data, else id)."""
        rid = rid or self.rid()
        if raw is None:
            body: dict[str, Any] = {"v": 1, "request_id": rid, "data": data or {}}
            if sent_ms is not None:
                body["sent_ms"] = sent_ms
            raw = json.dumps(body, ensure_ascii=False).encode()
        key = correlation.decode() if correlation is not None else rid
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        self._sent[key] = time.monotonic()
        await self.peer.publish(
            request_topic(self.id, op),
            raw,
            response_topic=response_topic,
            correlation=correlation if correlation is not None else rid.encode(),
            expiry_s=expiry_s,
        )
        try:
            async with asyncio.timeout(within_s):
                answer = await future
        except TimeoutError:
            raise StepFailed(f"no reply to {op} within {within_s:.0f} s") from None
        finally:
            self.waiting.pop(key, None)
        if answer.body.get("ok") is False:
            self.errors.append((op, answer.body))
        return answer


class GatewaySuite:
    """The checks, in order; :meth:`run` fills the report."""

    def __init__(self, broker: Broker, site: Site, report: Report) -> None:
        self.broker = broker
        self.site = site
        self.report = report
        self.errors: list[tuple[str, dict[str, Any]]] = []
        self.terms: dict[TerminalKind, Term] = {}
        self.offset_ms = 0  # gateway clock - ours, from hello
        self.version = 0
        self.config: dict[str, Any] = {}
        self.last_sale: str | None = None
        self._sale: tuple[str, dict[str, Any], Answer] | None = None
        self.session: str | None = None
        self.loss_applied: Any = None

    # --- helpers ------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def term(self, kind: TerminalKind) -> Term | None:
        return self.terms.get(kind)

    def valid(self, op: str, answer: Answer) -> None:
        """The reply follows the contract: envelope and data by the models, message by §9."""
        try:
            OPERATIONS[op].reply_envelope.model_validate_json(answer.message.payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise StepFailed(f"{op} reply breaks the schema at {where}: {first['msg']}") from None
        if not answer.ok:
            self.conforming_message(answer.body)

    @staticmethod
    def conforming_message(body: dict[str, Any]) -> None:
        error = body.get("error") or {}
        code, message = str(error.get("code")), str(error.get("message"))
        expect(
            code in set(ErrorCode) and message_conforms(ErrorCode(code), message),
            f"§9: message {message!r} is not the default text of {code!r} (+ ': detail')",
        )

    def refused(self, op: str, answer: Answer, code: ErrorCode, rule: str | None = None) -> None:
        expect(not answer.ok, f"expected {code.value}, got ok: {answer.data}")
        expect(answer.code == code.value, f"expected {code.value}, got {answer.code}")
        if op in OPERATIONS and answer.body.get("request_id") is not None:
            self.valid(op, answer)
        else:
            self.conforming_message(answer.body)
        if rule is not None:
            got = (answer.body.get("error") or {}).get("rule")
            expect(got == rule, f"expected rule {rule}, got {got}")

    def approved(self, op: str, answer: Answer) -> dict[str, Any]:
        expect(answer.ok, f"{op} refused: {answer.body.get('error')}")
        self.valid(op, answer)
        return answer.data

    async def step(
        self,
        step_id: str,
        title: str,
        section: str,
        needs: TerminalKind | None,
        check: Callable[[Term], Awaitable[None]] | Callable[[], Awaitable[None]],
    ) -> None:
        term = self.term(needs) if needs is not None else None
        if needs is not None and term is None:
            self.report.not_applicable(
                step_id, title, section, f"no {needs.value} terminal in the site file"
            )
            return
        with self.report.step(step_id, title, section):
            if term is not None:
                await check(term)  # type: ignore[call-arg]
            else:
                await check()  # type: ignore[call-arg]

    # --- the run --------------------------------------------------------------------------------
    async def run(self) -> None:
        with self.report.step("G01", "每台测试终端连接成功 test terminals connect (MQTT v5)", "§2"):
            for kind, creds in sorted(self.site.terminals.items()):
                peer = Peer(
                    self.broker,
                    creds.id,
                    creds.password,
                    clean_start=False,
                    will=(terminal_status_topic(creds.id), _OFFLINE),
                    trace=self.report.trace,
                )
                term = Term(creds, peer, self.report, self.errors)
                try:
                    await term.start(watch=True)  # every kind acknowledges (§8.5)
                except PeerError as exc:
                    raise StepFailed(f"{creds.id}: connect refused: {exc}") from None
                self.terms[kind] = term
        if self.report.steps[-1].status.value == "failed":
            return
        try:
            await self._checks()
        finally:
            for term in self.terms.values():
                await term.stop()

    async def _checks(self) -> None:
        pos, door = TerminalKind.POS, TerminalKind.DOOR
        kiosk, water = TerminalKind.KIOSK, TerminalKind.WATER
        await self.step("G02", "网关状态保留 online retained gateway status", "§7", None, self.g02)
        await self.step(
            "G03", "黑名单快照保留且校验正确 retained snapshot verifies", "§8.1", pos, self.g03
        )
        await self.step("G04", "hello 应答与配置 hello reply and config", "§7", None, self.g04)
        await self.step("G05", "hello 类型不符被拒 hello with the wrong kind", "§7", pos, self.g05)
        await self.step("G06", "heartbeat 应答 heartbeat reply", "§7", pos, self.g06)
        await self.step("G07", "消费成功 purchase approved", "§7", pos, self.g07)
        await self.step("G08", "重试得到原应答 retry replays the stored reply", "§6", pos, self.g08)
        await self.step("G09", "同号异内容 idempotency_conflict", "§6", pos, self.g09)
        await self.step("G10", "撤销上一笔 void of the last sale", "§7", pos, self.g10)
        await self.step("G11", "餐费 meal", "§7", pos, self.g11)
        await self.step("G12", "Response Topic 与 Correlation Data", "§5", pos, self.g12)
        await self.step(
            "G13", "非本终端 Response Topic 被忽略 foreign Response Topic", "§5", pos, self.g13
        )
        await self.step("G14", "非 JSON: malformed, request_id null", "§4", pos, self.g14)
        await self.step("G15", "未知字段 unknown field: malformed", "§1", pos, self.g15)
        await self.step("G16", "金额为 0: invalid_amount", "§9", pos, self.g16)
        await self.step("G17", "未知操作与版本 unknown op, v 2: unsupported", "§9", pos, self.g17)
        await self.step(
            "G18", "终端类型不允许 op of another kind: unsupported", "§7", pos, self.g18
        )
        await self.step("G19", "未知卡 unknown card: card_unknown", "§7", pos, self.g19)
        await self.step("G20", "超过 16 KiB: malformed, request_id null", "§2", pos, self.g20)
        await self.step("G21", "小写卡号 lower-case UID: malformed", "§1", pos, self.g21)
        await self.step("G22", "时钟超前 sent_ms ahead: clock_skew", "§6.1", pos, self.g22)
        await self.step("G23", "过期请求 past deadline: expired, replayed", "§6.1", pos, self.g23)
        await self.step("G24", "门禁 access allowed / unknown card", "§7", door, self.g24)
        await self.step("G25", "水控 hold, settle, release", "§7", water, self.g25)
        await self.step("G26", "脱机上传与重复 offline_upload, duplicates", "§8.3", pos, self.g26)
        await self.step("G27", "自助机登录失败 login refused: auth_failed", "§7", kiosk, self.g27)
        await self.step(
            "G28", "自助机登录、余额 login, balance (300 s session)", "§7", kiosk, self.g28
        )
        await self.step("G29", "解挂被拒 unlock: permission_denied LOSS-3", "§7", kiosk, self.g29)
        await self.step(
            "G30", "修改密码 change_password (wrong old: auth_failed)", "§7", kiosk, self.g30
        )
        await self.step("G31", "无效会话 bad session: auth_failed", "§7", kiosk, self.g31)
        await self.step("G32", "充值 topup by card, by session, not both", "§7", kiosk, self.g32)
        await self.loss_steps()
        with self.report.step("G40", "所有错误应答格式 every error message follows §9", "§9"):
            bad = [f"{op}: {body.get('error')}" for op, body in self.errors if not _conforms(body)]
            self.report.note(f"{len(self.errors)} error replies seen")
            expect(not bad, "; ".join(bad[:5]))

    # --- steps ----------------------------------------------------------------------------------
    async def g02(self) -> None:
        term = next(iter(self.terms.values()))
        msg = await _next(term.status, 5.0, lambda m: bool(m.payload))
        self.report.trace("received", msg.topic, msg.payload)  # (it came during G01)
        expect(msg.retain, "gateway status is not retained")
        status = GatewayStatus.model_validate_json(msg.payload)
        expect(status.state is Presence.ONLINE, f"gateway status says {status.state}")
        expect(status.denylist_version is not None, "gateway status has no denylist_version")
        self.version = status.denylist_version or 0

    async def g03(self, term: Term) -> None:
        msg = await _next(term.deny, 5.0, lambda m: m.topic == DENYLIST_SNAPSHOT_TOPIC)
        self.report.trace("received", msg.topic, msg.payload)
        expect(msg.retain, "snapshot is not retained")
        try:
            snapshot = DenySnapshot.model_validate_json(msg.payload)
        except ValidationError as exc:
            raise StepFailed(f"snapshot fails its check: {exc.errors()[0]['msg']}") from None
        expect(snapshot.version <= max(self.version, snapshot.version), "snapshot version")
        self.version = max(self.version, snapshot.version)

    async def g04(self) -> None:
        for kind, term in sorted(self.terms.items()):
            t0 = time.time_ns() // 1_000_000
            answer = await term.ask(
                "hello", {"kind": kind.value, "firmware": "conformance 1.1", "denylist_version": 0}
            )
            data = self.approved("hello", answer)
            self.offset_ms = int(data["server_time_ms"]) - (t0 + int(answer.ms / 2))
            expect(
                data["denylist_version"] >= self.version,
                f"hello says version {data['denylist_version']} < {self.version} published",
            )
            self.config = data["config"]
        self.report.note(f"gateway clock offset {self.offset_ms} ms; config {self.config}")

    async def g05(self, term: Term) -> None:
        answer = await term.ask(
            "hello", {"kind": "door", "firmware": "conformance 1.1", "denylist_version": 0}
        )
        self.refused("hello", answer, ErrorCode.PERMISSION_DENIED)

    async def g06(self, term: Term) -> None:
        answer = await term.ask("heartbeat", {"denylist_version": term.held, "pending_offline": 0})
        self.approved("heartbeat", answer)

    def card(self, index: int) -> Card | None:
        return self.site.cards[index] if len(self.site.cards) > index else None

    async def g07(self, term: Term) -> None:
        card = self.site.cards[0]
        rid = term.rid()
        body = {"card": card.uid, "amount_fen": 100}
        answer = await term.ask("purchase", body, rid=rid, sent_ms=self.now_ms(), expiry_s=5)
        data = self.approved("purchase", answer)
        self.last_sale = rid
        self._sale = (rid, body, answer)
        self.report.note(f"balance after {data['balance_after_fen']} fen, {answer.ms:.0f} ms")

    async def g08(self, term: Term) -> None:
        expect(self._sale is not None, "needs G07's sale")
        assert self._sale is not None
        rid, body, first = self._sale
        sent = json.loads(first.message.payload)
        retry = await term.ask(
            "purchase", body, rid=rid, sent_ms=None, correlation=b"retry-" + rid.encode()
        )
        expect(retry.body == sent, f"retry reply {retry.body} differs from the first {sent}")

    async def g09(self, term: Term) -> None:
        expect(self._sale is not None, "needs G07's sale")
        assert self._sale is not None
        rid, body, _ = self._sale
        other = {**body, "amount_fen": body["amount_fen"] + 1}
        answer = await term.ask("purchase", other, rid=rid, correlation=b"conflict-" + rid.encode())
        self.refused("purchase", answer, ErrorCode.IDEMPOTENCY_CONFLICT)

    async def g10(self, term: Term) -> None:
        expect(self.last_sale is not None, "needs G07's sale")
        assert self.last_sale is not None
        answer = await term.ask("void", {"original_request_id": self.last_sale})
        data = self.approved("void", answer)
        expect(data["refunded_fen"] == 100, f"refunded {data['refunded_fen']}, sold 100")

    async def g11(self, term: Term) -> None:
        answer = await term.ask(
            "meal", {"card": self.site.cards[0].uid, "amount_fen": 100}, sent_ms=self.now_ms()
        )
        data = self.approved("meal", answer)
        expect(data["paid_by"] in ("subsidy", "purse"), f"paid_by {data['paid_by']}")

    async def g12(self, term: Term) -> None:
        reply_to = f"onecard/v1/t/{term.id}/resp/conformance/rr1"
        answer = await term.ask(
            "heartbeat",
            {"denylist_version": term.held, "pending_offline": 0},
            response_topic=reply_to,
            correlation=b"corr-12",
        )
        expect(answer.message.topic == reply_to, f"reply came on {answer.message.topic}")
        expect(answer.message.correlation == b"corr-12", "Correlation Data not echoed")
        self.approved("heartbeat", answer)

    async def g13(self, term: Term) -> None:
        answer = await term.ask(
            "heartbeat",
            {"denylist_version": term.held, "pending_offline": 0},
            response_topic="onecard/v1/t/someone-else/resp/x",
            correlation=b"corr-13",
        )
        expect(
            answer.message.topic == f"onecard/v1/t/{term.id}/resp/heartbeat",
            f"reply came on {answer.message.topic}",
        )

    async def g14(self, term: Term) -> None:
        answer = await term.ask("purchase", raw=b"not json {", correlation=b"corr-14")
        self.refused("purchase", answer, ErrorCode.MALFORMED)
        expect(answer.body.get("request_id", "absent") is None, "request_id is not null")

    async def g15(self, term: Term) -> None:
        data = {"card": self.site.cards[0].uid, "amount_fen": 100, "tip_fen": 1}
        answer = await term.ask("purchase", data)
        self.refused("purchase", answer, ErrorCode.MALFORMED)

    async def g16(self, term: Term) -> None:
        answer = await term.ask("purchase", {"card": self.site.cards[0].uid, "amount_fen": 0})
        self.refused("purchase", answer, ErrorCode.INVALID_AMOUNT)

    async def g17(self, term: Term) -> None:
        answer = await term.ask("teleport", {"card": self.site.cards[0].uid})
        self.refused("teleport", answer, ErrorCode.UNSUPPORTED)
        rid = term.rid()
        raw = json.dumps(
            {"v": 2, "request_id": rid, "data": {"denylist_version": 0, "pending_offline": 0}}
        ).encode()
        answer = await term.ask("heartbeat", raw=raw, rid=rid)
        self.refused("heartbeat", answer, ErrorCode.UNSUPPORTED)

    async def g18(self, term: Term) -> None:
        answer = await term.ask("access", {"card": self.site.cards[0].uid})
        self.refused("access", answer, ErrorCode.UNSUPPORTED)

    async def g19(self, term: Term) -> None:
        answer = await term.ask(
            "purchase", {"card": "08FFFFFFFFFFFF01", "amount_fen": 100}, sent_ms=self.now_ms()
        )
        self.refused("purchase", answer, ErrorCode.CARD_UNKNOWN)

    async def g20(self, term: Term) -> None:
        rid = term.rid()
        raw = json.dumps(
            {"v": 1, "request_id": rid, "data": {"card": "04" * 9000, "amount_fen": 1}}
        ).encode()
        answer = await term.ask("purchase", raw=raw, correlation=b"corr-20")
        self.refused("purchase", answer, ErrorCode.MALFORMED)
        expect(answer.body.get("request_id", "absent") is None, "request_id is not null")

    async def g21(self, term: Term) -> None:
        """§1: the gateway validates, never normalises, a UID (a lower-case one never matches)."""
        answer = await term.ask("purchase", {"card": "04abcdef010203", "amount_fen": 100})
        self.refused("purchase", answer, ErrorCode.MALFORMED)

    async def g22(self, term: Term) -> None:
        answer = await term.ask(
            "purchase",
            {"card": self.site.cards[0].uid, "amount_fen": 100},
            sent_ms=self.now_ms() + 60_000,
        )
        self.refused("purchase", answer, ErrorCode.CLOCK_SKEW)

    async def g23(self, term: Term) -> None:
        rid = term.rid()
        body = {"card": self.site.cards[0].uid, "amount_fen": 100}
        sent = self.now_ms() - 60_000
        answer = await term.ask("purchase", body, rid=rid, sent_ms=sent)
        self.refused("purchase", answer, ErrorCode.EXPIRED)
        again = await term.ask(
            "purchase", body, rid=rid, sent_ms=sent, correlation=b"again-" + rid.encode()
        )
        self.refused("purchase", again, ErrorCode.EXPIRED)

    async def g24(self, term: Term) -> None:
        answer = await term.ask("access", {"card": self.site.cards[0].uid})
        data = self.approved("access", answer)
        expect(data["allowed"] is True, f"access refused: {data}")
        answer = await term.ask("access", {"card": "08FFFFFFFFFFFF01"})
        data = self.approved("access", answer)
        expect(data == {"allowed": False, "reason": "card_unknown"}, f"unknown card: {data}")

    async def g25(self, term: Term) -> None:
        uid = self.site.cards[0].uid
        hold = self.approved(
            "water_hold",
            await term.ask("water_hold", {"card": uid, "amount_fen": 200}, sent_ms=self.now_ms()),
        )
        hold_id = hold["hold_id"]
        over = await term.ask("water_settle", {"hold_id": hold_id, "used_fen": 201})
        self.refused("water_settle", over, ErrorCode.INVALID_AMOUNT)
        settled = self.approved(
            "water_settle", await term.ask("water_settle", {"hold_id": hold_id, "used_fen": 50})
        )
        expect(
            (settled["charged_fen"], settled["released_fen"]) == (50, 150),
            f"settle 50 of 200: {settled}",
        )
        second = self.approved(
            "water_hold",
            await term.ask("water_hold", {"card": uid, "amount_fen": 100}, sent_ms=self.now_ms()),
        )
        released = self.approved(
            "water_release", await term.ask("water_release", {"hold_id": second["hold_id"]})
        )
        expect(released["released_fen"] == 100, f"release: {released}")
        missing = await term.ask("water_release", {"hold_id": "999999999999"})
        self.refused("water_release", missing, ErrorCode.NOT_FOUND)

    async def g26(self, term: Term) -> None:
        seq = max(1, int(time.time()) - 1_700_000_000)
        sale = {
            "seq": seq,
            "card": self.site.cards[0].uid,
            "amount_fen": 100,
            "at_ms": self.now_ms() - 60_000,
            "denylist_version": term.held or self.version,
        }
        data = self.approved("offline_upload", await term.ask("offline_upload", {"sales": [sale]}))
        listed = data["accepted"] + data["duplicates"] + [r["seq"] for r in data["rejected"]]
        expect(listed == [seq], f"seq {seq} must be listed exactly once: {data}")
        again = self.approved("offline_upload", await term.ask("offline_upload", {"sales": [sale]}))
        expect(again["duplicates"] == [seq], f"re-upload of {seq} is not a duplicate: {again}")

    def kiosk_card(self) -> Card:
        card = self.site.cards[0]
        expect(card.number is not None and card.password is not None, "cards[0] has no account")
        return card

    async def login(self, term: Term, card: Card) -> Answer:
        assert card.number is not None
        assert card.password is not None
        return await term.ask("login", {"number": card.number, "password": card.password})

    async def g27(self, term: Term) -> None:
        answer = await term.ask("login", {"number": "0000000000", "password": "000000"})
        self.refused("login", answer, ErrorCode.AUTH_FAILED)

    async def g28(self, term: Term) -> None:
        login = await self.login(term, self.kiosk_card())
        data = self.approved("login", login)
        lifetime_s = (data["session_expires_ms"] - self.now_ms()) / 1000
        expect(290 <= lifetime_s <= 310, f"session lifetime {lifetime_s:.0f} s, contract: 300 s")
        self.session = data["session"]
        balance = self.approved("balance", await term.ask("balance", {"session": self.session}))
        expect(len(balance["recent"]) <= 20, "more than 20 recent transactions")

    async def g29(self, term: Term) -> None:
        session = self.session or "s_" + "x" * 20
        answer = await term.ask("unlock", {"session": session})
        self.refused("unlock", answer, ErrorCode.PERMISSION_DENIED, rule="LOSS-3")

    async def g30(self, term: Term) -> None:
        """A wrong old password is refused; the right one changes it (and the kit changes it
        back at once, so the site's test account keeps its password)."""
        session = self.session
        expect(session is not None, "needs G28's session")
        card = self.kiosk_card()
        data = {"session": session, "old_password": "wrong-password-1", "new_password": "Xx-123456"}
        answer = await term.ask("change_password", data)
        self.refused("change_password", answer, ErrorCode.AUTH_FAILED)
        temporary = "Kit-" + uuid.uuid4().hex[:10]
        there = {"session": session, "old_password": card.password, "new_password": temporary}
        self.approved("change_password", await term.ask("change_password", there))
        back = {"session": session, "old_password": temporary, "new_password": card.password}
        answer = await term.ask("change_password", back)
        expect(answer.ok, f"could not restore the test account's password: {answer.body}")

    async def g31(self, term: Term) -> None:
        answer = await term.ask("balance", {"session": "s_conformanceNoSuchSession"})
        self.refused("balance", answer, ErrorCode.AUTH_FAILED)

    async def g32(self, term: Term) -> None:
        data = {"card": self.site.cards[0].uid, "amount_fen": 100, "payment_ref": "conformance-1"}
        answer = await term.ask("topup", data, rid=term.rid(), sent_ms=self.now_ms())
        self.approved("topup", answer)
        if self.session is not None:
            by_session = {
                "session": self.session,
                "amount_fen": 100,
                "payment_ref": "conformance-2",
            }
            self.approved("topup", await term.ask("topup", by_session, sent_ms=self.now_ms()))
        both = {**data, "session": self.session or "s_" + "x" * 20}
        self.refused("topup", await term.ask("topup", both), ErrorCode.MALFORMED)

    async def loss_steps(self) -> None:
        """G33..G39: a kiosk loss report reaches every terminal as a delta, acknowledged."""
        titles = [
            ("G33", "挂失 report_loss within the 300 ms budget", "§8.5"),
            ("G34", "变更以增量下发 the change arrives as a delta", "§8.5"),
            ("G35", "网关状态版本更新 gateway status names the new version", "§8.5"),
            ("G36", "确认计数 terminals_applied counts acknowledgements", "§8.5"),
            ("G37", "挂失卡消费被拒 lost card refused at the POS", "LOSS-2"),
            ("G38", "挂失卡门禁被拒 lost card refused at the door", "LOSS-2"),
        ]
        kiosk, pos = self.term(TerminalKind.KIOSK), self.term(TerminalKind.POS)
        card = self.card(1)
        why = None
        if kiosk is None or pos is None:
            why = "needs a kiosk and a POS in the site file"
        elif card is None or card.number is None or card.password is None:
            why = "needs a second card with its holder's number and password (cards[1])"
        if why is not None:
            for step_id, title, section in titles:
                self.report.not_applicable(step_id, title, section, why)
            return
        assert kiosk is not None
        assert pos is not None
        assert card is not None
        reported: list[int] = []  # the loss's version, once G33 got it
        with self.report.step(*titles[0]):
            # cards[1:] are spares for the loss: one per run (an earlier run lost the first)
            for spare in self.site.cards[1:]:
                if spare.number is None or spare.password is None:
                    continue
                login = await self.login(kiosk, spare)
                session = self.approved("login", login)["session"]
                pos.deny = asyncio.Queue()  # only what comes after the report
                pos.status = asyncio.Queue()
                answer = await kiosk.ask("report_loss", {"session": session, "card_serial": None})
                if answer.code != ErrorCode.TRANSITION_NOT_ALLOWED.value:
                    card = spare
                    break
                self.report.note(f"{spare.number}: already lost by an earlier run, next card")
            else:
                raise StepFailed("every spare card (cards[1:]) is already lost: give fresh ones")
            data = self.approved("report_loss", answer)
            reported.append(int(data["denylist_version"]))
            expect(
                answer.ms <= LOSS_REPLY_BUDGET_MS,
                f"reply after {answer.ms:.0f} ms, budget 300 ms + round trip",
            )
            self.loss_applied = data["terminals_applied"]
            self.report.note(
                f"report_loss answered after {answer.ms:.0f} ms,"
                f" terminals_applied {self.loss_applied}"
            )
        if not reported:
            for step_id, title, section in titles[1:4]:
                self.report.not_applicable(step_id, title, section, "G33 did not report a loss")
        else:
            version = reported[0]
            with self.report.step(*titles[1]):
                # the first message that reaches the loss's version (on a live site other
                # changes may come just before it)
                msg = await _next(
                    pos.deny, DELTA_WITHIN_S, lambda m: bool(m.payload) and _reaches(m, version)
                )
                self.report.trace("received", msg.topic, msg.payload)  # (it came during G33)
                expect(
                    msg.topic == DENYLIST_DELTA_TOPIC,
                    f"the loss came as {msg.topic}, not as a delta",
                )
                delta = DenyDelta.model_validate_json(msg.payload)
                change = [c for c in delta.changes if c.version == version]
                expect(
                    bool(change) and change[0].card == card.uid and change[0].kind.value == "lost",
                    f"delta {delta.from_version}..{delta.to_version} lacks the loss of v{version}",
                )
            with self.report.step(*titles[2]):
                status = await _next(
                    pos.status,
                    DELTA_WITHIN_S,
                    lambda m: (
                        bool(m.payload)
                        and (GatewayStatus.model_validate_json(m.payload).denylist_version or 0)
                        >= version
                    ),
                )
                self.report.trace("received", status.topic, status.payload)
            with self.report.step(*titles[3]):
                applied = self.loss_applied
                expect(
                    isinstance(applied, int) and applied >= 1,
                    f"terminals_applied {applied}: the kit's terminals acknowledged in time",
                )
        with self.report.step(*titles[4]):
            answer = await pos.ask(
                "purchase", {"card": card.uid, "amount_fen": 100}, sent_ms=self.now_ms()
            )
            self.refused("purchase", answer, ErrorCode.CARD_LOST)
        door = self.term(TerminalKind.DOOR)
        if door is None:
            self.report.not_applicable(*titles[5], "no door terminal in the site file")
            return
        with self.report.step(*titles[5]):
            data = self.approved("access", await door.ask("access", {"card": card.uid}))
            expect(data == {"allowed": False, "reason": "card_lost"}, f"access: {data}")


def _reaches(msg: Message, version: int) -> bool:
    """A snapshot or delta at ``version`` or newer."""
    if msg.topic == DENYLIST_SNAPSHOT_TOPIC:
        return DenySnapshot.model_validate_json(msg.payload).version >= version
    return DenyDelta.model_validate_json(msg.payload).to_version >= version


def _conforms(body: dict[str, Any]) -> bool:
    try:
        GatewaySuite.conforming_message(body)
    except StepFailed:
        return False
    return True


async def _next(
    queue: asyncio.Queue[Message], within_s: float, match: Callable[[Message], bool]
) -> Message:
    async with asyncio.timeout(within_s):
        while True:
            msg = await queue.get()
            with contextlib.suppress(ValueError, ValidationError):
                if match(msg):
                    return msg


async def run_gateway_suite(broker: Broker, site: Site, report: Report) -> Report:
    await GatewaySuite(broker, site, report).run()
    return report
