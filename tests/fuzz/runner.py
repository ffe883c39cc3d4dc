"""The fuzz run: cases from the AsyncAPI schemas, sent at rate from several terminals through the
real broker to the real gateway, while a well-behaved POS keeps tapping; then the oracle.

Oracle (each a failure kind in :class:`Report`):

- ``gateway_died`` / ``gateway_reconnected`` / ``not_ready``: the gateway process stays alive,
  its one broker connection is never re-established (metric and broker log), /readyz stays 200;
- ``no_reply`` / ``duplicate_replies``: every message on the sender's own request topic with a
  well-formed op gets exactly one reply (matched by Correlation Data, or counted per terminal
  for messages without one);
- ``internal`` / ``bad_code`` / ``bad_reply``: the reply is a contract envelope (validated
  against the op's reply schema in docs/asyncapi.json), its code from the closed enum, never
  ``internal``; ``wrong_code``: where the contract fixes the code (§9 table), that code;
- ``wrong_request_id``: the reply echoes the request id when the payload is at most 16 KiB and
  the id can be read, else ``null``; ``wrong_correlation``: Correlation Data echoed unchanged;
- ``wrong_reply_topic``: the reply is on the Response Topic when that lies under the sender's own
  ``resp/`` and is a valid topic name, else on ``resp/{op}``; ``misrouted``: no terminal ever
  receives a reply to another terminal's request;
- ``good_terminal``: the well-behaved POS's taps all succeed within 5 s, and it receives nothing
  unsolicited;
- ``unbounded_labels``: no op outside the contract appears as a metric label;
- ``personal_data_in_log``: no national ID, name or full card UID in the gateway's log;
- ``ledger``: conservation afterwards, and the good card's balance moved exactly by its taps;
- ``unclean_shutdown``: SIGTERM after the run ends the gateway with exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import re
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.errors import ErrorCode
from tests.fuzz.cases import (
    HOLD_TOKEN,
    NOW_MS_TOKEN,
    ROOT,
    SALE_TOKEN,
    SESSION_TOKEN,
    TAG_SIZE,
    Case,
    SiteInfo,
    cases,
    readable_request_ids,
)
from tests.fuzz.schema import problems, request_ops
from tests.fuzz.site import FUZZERS, GOOD, SPY, TOPUP_FEN, Site, build_site, ledger_problems
from tests.fuzz.site import purse_balance as site_balance

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
CODES = frozenset(code.value for code in ErrorCode)


class _Enough(BaseException):
    """Stops hypothesis once the corpus is full (a BaseException is not shrunk)."""


def generate_corpus(info: SiteInfo, count: int, seed: int) -> list[Case]:
    """``count`` cases drawn by hypothesis from the schema strategies, reproducibly (seeded)."""
    corpus: list[Case] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count * 2,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(info))
    def collect(case: Case) -> None:
        corpus.append(case)
        if len(corpus) >= count:
            raise _Enough

    with contextlib.suppress(_Enough):
        collect()
    return corpus


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Sent:
    seq: int
    case: Case
    correlation: bytes | None
    payload: bytes
    at: float
    puback: int | None = None  # reason code value; None: unknown (connection lost)
    error: str | None = None


@dataclass(slots=True)
class Received:
    terminal: str
    topic: str
    payload: bytes
    correlation: bytes | None
    at: float


@dataclass
class Failure:
    kind: str
    detail: str
    case: Case | None = None


@dataclass
class Report:
    duration_s: float = 0.0
    sent: int = 0
    expected_replies: int = 0
    replies: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    pubacks: Counter[str] = field(default_factory=Counter)
    fuzz_disconnects: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    good: dict[str, Any] = field(default_factory=dict)
    metrics_lines: tuple[int, int] = (0, 0)
    log_lines: int = 0
    corpus: int = 0
    seed: int = 0
    retained_answered: int = 0
    broker_notes: list[str] = field(default_factory=list)
    reply_ms: list[float] = field(default_factory=list)
    rss_kib: tuple[int, int] = (0, 0)

    def fail(self, kind: str, detail: str, case: Case | None = None) -> None:
        self.failures.append(Failure(kind, detail, case))

    @property
    def ok(self) -> bool:
        return not self.failures

    def dump(self, path: Path) -> None:
        """Every failure with its whole case, for the record (``--dir``)."""
        with path.open("w", encoding="utf-8") as out:
            for failure in self.failures:
                out.write(f"{failure.kind}: {failure.detail}\n")
                if failure.case is not None:
                    out.write(f"    {failure.case.describe(2000)}\n")

    def render(self) -> str:
        rate = self.sent / self.duration_s if self.duration_s else 0.0
        lines = [
            f"fuzz run: seed {self.seed}, corpus {self.corpus} cases, {self.duration_s:.1f} s",
            f"messages sent: {self.sent} ({rate:.0f}/s), replies expected: "
            f"{self.expected_replies}, received: {self.replies}",
            "PUBACK reason codes: " + ", ".join(f"{k} {v}" for k, v in self.pubacks.most_common()),
            "replies by code: " + ", ".join(f"{k} {v}" for k, v in self.codes.most_common()),
        ]
        lat = self.good.get("latencies_ms") or []
        if lat:
            lines.append(
                f"well-behaved POS: {self.good['taps']} taps, p50 {_pct(lat, 50):.1f} ms, "
                f"p99 {_pct(lat, 99):.1f} ms, max {lat[-1]:.1f} ms, "
                f"{len(self.good.get('failures', []))} failures, "
                f"{self.good.get('late_replies', 0)} late replies to retried taps"
            )
        if self.reply_ms:
            ms = sorted(self.reply_ms)
            lines.append(
                f"fuzz replies: p50 {_pct(ms, 50):.1f} ms, p99 {_pct(ms, 99):.1f} ms, "
                f"max {ms[-1]:.1f} ms (publish to reply)"
            )
        lines.append(
            f"/metrics lines before/after: {self.metrics_lines[0]}/{self.metrics_lines[1]}; "
            f"gateway RSS before/after: {self.rss_kib[0] // 1024}/{self.rss_kib[1] // 1024} MiB; "
            f"gateway log lines: {self.log_lines}"
        )
        lines += [f"broker log: {note}" for note in self.broker_notes]
        if self.retained_answered:
            lines.append(f"retained requests answered (delivered live): {self.retained_answered}")
        if self.fuzz_disconnects:
            lines.append(f"fuzz clients disconnected by the broker: {len(self.fuzz_disconnects)}")
            lines += [f"  {d}" for d in self.fuzz_disconnects[:5]]
        if not self.failures:
            lines.append("oracle: all checks passed")
            return "\n".join(lines)
        by_kind: dict[str, list[Failure]] = defaultdict(list)
        for failure in self.failures:
            by_kind[failure.kind].append(failure)
        lines.append(f"oracle: {len(self.failures)} FAILURES in {len(by_kind)} kinds")
        for kind, items in sorted(by_kind.items()):
            with_case = [f for f in items if f.case is not None]
            lines.append(f"- {kind}: {len(items)}")
            if with_case:
                smallest = min(with_case, key=lambda f: len(f.case.payload) if f.case else 0)
                assert smallest.case is not None
                lines.append(f"    minimal: {smallest.case.describe()}")
                lines.append(f"    what happened: {smallest.detail[:400]}")
                labels = Counter(f.case.mutation.split(":")[0] for f in with_case if f.case)
                lines.append(f"    by mutation: {dict(labels.most_common(8))}")
            else:
                for failure in items[:3]:
                    lines.append(f"    {failure.detail[:400]}")
        return "\n".join(lines)


def _pct(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# --------------------------------------------------------------------------- clients


class FuzzClient:
    """One fuzzing terminal: aiomqtt (MQTT v5, its own username), subscribed to its own
    ``resp/#``; publishes through paho underneath to learn each PUBACK's reason code."""

    def __init__(self, site: Site, tid: str, inbox: list[Received], report: Report) -> None:
        self.site = site
        self.tid = tid
        self.inbox = inbox
        self.report = report
        self.sessions: list[str] = []
        self.holds: list[str] = []
        self.sales: list[str] = []
        self.client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        self._alive = asyncio.Event()
        self._stack: contextlib.AsyncExitStack | None = None
        self.last_sent: Case | None = None

    async def connect(self) -> None:
        client = aiomqtt.Client(
            self.site.broker.host,
            self.site.broker.port,
            username=self.tid,
            password=self.site.passwords[self.tid],
            identifier=self.tid,
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=NODELAY,
            timeout=10,
        )
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(client)
        paho = client._client
        original: Any = paho.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            value = int(getattr(reason, "value", 0))
            waiter = self._waiters.pop(mid, None)
            if waiter is None:
                self._early[mid] = value
            elif not waiter.done():
                waiter.set_result(value)
            original(c, userdata, mid, reason, props)

        paho.on_publish = on_publish
        await client.subscribe(f"{ROOT}/t/{self.tid}/resp/#", qos=1)
        self.client = client
        self._stack = stack
        self._reader = asyncio.create_task(self._read(client), name=f"read-{self.tid}")
        self._alive.set()

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                props = message.properties
                corr = getattr(props, "CorrelationData", None) if props is not None else None
                self.inbox.append(
                    Received(self.tid, message.topic.value, payload, corr, time.perf_counter())
                )
                self._learn(message.topic.value, payload)
        except aiomqtt.MqttError as exc:
            self._alive.clear()
            last = self.last_sent.describe(160) if self.last_sent else "-"
            self.report.fuzz_disconnects.append(f"{self.tid}: {exc}; last sent {last}")
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError(str(exc)))
            self._waiters.clear()

    def _learn(self, topic: str, payload: bytes) -> None:
        """Keep live values from approvals: sessions, holds, sales (the last 8 of each)."""
        if b'"ok":true' not in payload:
            return
        try:
            body = json.loads(payload)
        except ValueError:
            return
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return
        op = topic.rsplit("/", 1)[-1]
        learned = {
            "login": (self.sessions, data.get("session")),
            "water_hold": (self.holds, data.get("hold_id")),
            "purchase": (self.sales, body.get("request_id")),
            "meal": (self.sales, body.get("request_id")),
        }.get(op)
        if learned is not None and isinstance(learned[1], str):
            pool, value = learned
            pool.append(value)
            del pool[:-8]

    async def ensure_connected(self) -> None:
        if self._alive.is_set():
            return
        await self.close()
        for _ in range(20):
            try:
                await self.connect()
                return
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)
        raise ConnectionError(f"{self.tid}: cannot reconnect")

    async def publish(self, sent: Sent) -> None:
        """Publish at QoS 1 and record the PUBACK reason code (or why there is none)."""
        try:
            await self._publish(sent)
        except (aiomqtt.MqttError, ConnectionError, OSError) as exc:
            sent.error = f"publish failed: {exc!r}"[:120]

    async def _publish(self, sent: Sent) -> None:
        await self.ensure_connected()
        assert self.client is not None
        case = sent.case
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if case.response_topic is not None:
            props.ResponseTopic = case.response_topic
        if sent.correlation is not None:
            props.CorrelationData = sent.correlation
        self.last_sent = case
        info = self.client._client.publish(case.topic, sent.payload, 1, case.retain, props)
        if info.rc != 0:
            sent.error = f"local publish error {info.rc}"
            return
        early = self._early.pop(info.mid, None)
        if early is not None:
            sent.puback = early
            return
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[info.mid] = waiter
        try:
            async with asyncio.timeout(30):
                sent.puback = await waiter
        except (TimeoutError, ConnectionError) as exc:
            sent.error = f"no PUBACK: {exc!r}"

    async def close(self) -> None:
        self._alive.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._stack is not None:
            with contextlib.suppress(Exception):
                await self._stack.aclose()
            self._stack = None


class Spy:
    """Sees every reply the broker routes (gateway ACL, read only in use)."""

    def __init__(self, site: Site) -> None:
        self.seen: dict[int, list[str]] = defaultdict(list)
        self.untagged: Counter[str] = Counter()
        self.client = aiomqtt.Client(
            site.broker.host,
            site.broker.port,
            username=SPY,
            password=site.passwords[SPY],
            identifier=SPY,
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=NODELAY,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.__aenter__()
        await self.client.subscribe(f"{ROOT}/t/+/resp/#", qos=1)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.client.messages:
            props = message.properties
            corr = getattr(props, "CorrelationData", None) if props is not None else None
            seq = _tag(corr)
            if seq is None:
                self.untagged[message.topic.value.split("/")[3]] += 1
            else:
                self.seen[seq].append(message.topic.value)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)


# --------------------------------------------------------------------------- the run


@dataclass
class Options:
    duration: float = 30.0
    rate: float = 300.0
    seed: int = 0
    corpus: int = 4000
    good_interval: float = 0.05
    grace: float = 10.0
    client: str | None = None  # the gateway's MQTT adapter; None: the configured default
    directory: Path | None = None
    progress: Callable[[str], None] | None = None


_FILLER = bytes(range(256)) * 258  # every byte value, NUL and 0xFF included


def _correlation(case: Case, seq: int) -> bytes | None:
    if case.corr_size is None:
        return None
    if case.corr_size < TAG_SIZE:
        return bytes(range(case.corr_size))
    tag = b"FZ" + seq.to_bytes(4, "big")
    start = seq % 256
    return tag + _FILLER[start : start + case.corr_size - TAG_SIZE]


def _tag(correlation: bytes | None) -> int | None:
    if correlation is None or len(correlation) < TAG_SIZE or correlation[:2] != b"FZ":
        return None
    return int.from_bytes(correlation[2:TAG_SIZE], "big")


def _payload(case: Case, client: FuzzClient, rng: random.Random) -> bytes:
    """The case's payload with its placeholders replaced by live values of the sender (a kiosk
    session, a water hold, a sale to void), when it has some."""
    now_ms = str(int(time.time() * 1000)).encode()  # as long as the token: sizes stay
    payload = case.payload.replace(str(NOW_MS_TOKEN).encode(), now_ms)
    if len(payload) > 8192:
        return payload  # keep the size cases at their sizes
    for token, pool in (
        (SESSION_TOKEN, client.sessions),
        (HOLD_TOKEN, client.holds),
        (SALE_TOKEN, client.sales),
    ):
        if pool and token.encode() in payload:
            payload = payload.replace(token.encode(), rng.choice(pool).encode())
    return payload


async def run_fuzz(options: Options) -> Report:
    report = Report(seed=options.seed)
    say = options.progress or (lambda _msg: None)
    with contextlib.ExitStack() as stack:
        directory = options.directory or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="onecard-fuzz-"))
        )
        site = await build_site(directory)
        stack.callback(site.close)
        site.start_gateway(options.client)
        info = SiteInfo(
            kinds={tid: kind.value for tid, (kind, _m) in FUZZERS.items()},
            others=[GOOD, *sorted(FUZZERS)],
            cards=[p.uid for p in site.fuzz_people],
            logins=[(p.number, p.password) for p in site.fuzz_people],
        )
        count = max(1, min(options.corpus, int(options.rate * options.duration)))
        t0 = time.perf_counter()
        corpus = generate_corpus(info, count, options.seed)
        report.corpus = len(corpus)
        say(f"corpus: {len(corpus)} cases in {time.perf_counter() - t0:.1f} s")
        await _run(site, corpus, options, report, say)
        if options.directory is not None:
            report.dump(options.directory / "failures.txt")
    return report


async def _run(
    site: Site,
    corpus: list[Case],
    options: Options,
    report: Report,
    say: Callable[[str], None],
) -> None:
    metrics_before = site.http_get("/metrics")[1].decode(errors="replace")
    rss_before = site.rss_kib()
    report.metrics_lines = (len(metrics_before.splitlines()), 0)
    inbox: list[Received] = []
    clients = {tid: FuzzClient(site, tid, inbox, report) for tid in FUZZERS}
    for client in clients.values():
        await client.connect()
    spy = Spy(site)
    await spy.start()
    good_out = site.directory / "good.json"
    tapper = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fuzz.tapper",
        "--port",
        str(site.broker.port),
        "--terminal",
        GOOD,
        "--password",
        site.passwords[GOOD],
        "--card",
        site.good_card.uid,
        "--duration",
        str(options.duration),
        "--interval",
        str(options.good_interval),
        "--out",
        str(good_out),
    )
    rng = random.Random(options.seed)
    sent: list[Sent] = []
    tasks: set[asyncio.Task[None]] = set()
    limiter = asyncio.Semaphore(400)
    await asyncio.sleep(0.5)  # the tapper connects and says hello before the storm
    start = time.perf_counter()
    deadline = start + options.duration
    seq = 0
    next_report = start + 10
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        due = int((now - start) * options.rate) + 1
        while seq < due:
            case = corpus[seq % len(corpus)]
            client = clients[case.terminal]
            record = Sent(
                seq, case, _correlation(case, seq), _payload(case, client, rng), time.perf_counter()
            )
            sent.append(record)
            await limiter.acquire()
            task = asyncio.create_task(client.publish(record))
            tasks.add(task)
            task.add_done_callback(functools.partial(_finished, tasks, limiter))
            seq += 1
        if now >= next_report:
            say(f"{now - start:5.0f} s: sent {seq}, replies {len(inbox)}")
            next_report += 10
        await asyncio.sleep(0.002)
    report.duration_s = time.perf_counter() - start
    if tasks:
        await asyncio.wait(set(tasks), timeout=30)
    report.sent = len(sent)
    # wait for the replies still in flight (bounded)
    expected = sum(1 for s in sent if owed(s))
    grace_end = time.monotonic() + options.grace
    while len(inbox) < expected and time.monotonic() < grace_end:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # late duplicates, misroutes
    await tapper.wait()
    if good_out.exists():
        report.good = json.loads(good_out.read_text())
    else:
        report.fail("good_terminal", "the well-behaved terminal's process wrote no result")
    metrics_after = site.http_get("/metrics")[1].decode(errors="replace")
    report.metrics_lines = (report.metrics_lines[0], len(metrics_after.splitlines()))
    (site.directory / "metrics.txt").write_text(metrics_after)
    report.rss_kib = (rss_before, site.rss_kib())
    ready = site.http_get("/readyz")[0]
    alive = site.proc is not None and site.proc.poll() is None
    for client in clients.values():
        await client.close()
    await spy.stop()
    exit_code = site.stop_gateway()
    log = site.log_text()
    report.log_lines = len(log.splitlines())
    check_replies(sent, inbox, spy, report)
    check_good(report)
    check_gateway(site, metrics_after, alive, ready, exit_code, report)
    check_labels(metrics_after, sent, report)
    check_log(site, log, sent, report)
    for problem in ledger_problems(site.db):
        report.fail("ledger", problem)
    balance = site_balance(site.db, site.good_card.holder_id)
    debited = int(report.good.get("debited_fen", 0))
    if balance != TOPUP_FEN - debited:
        report.fail(
            "ledger",
            f"good card: balance {balance} != {TOPUP_FEN} - {debited} fen approved to the POS",
        )


def _finished(
    tasks: set[asyncio.Task[None]], limiter: asyncio.Semaphore, task: asyncio.Task[None]
) -> None:
    tasks.discard(task)
    limiter.release()


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def packet_size(s: Sent) -> int:
    """Size of the MQTT v5 QoS 1 PUBLISH packet carrying ``s`` (as forwarded to the gateway)."""
    props = 0
    if s.case.response_topic is not None:
        props += 3 + len(s.case.response_topic.encode())
    if s.correlation is not None:
        props += 3 + len(s.correlation)
    remaining = 2 + len(s.case.topic.encode()) + 2 + _varint_len(props) + props + len(s.payload)
    return 1 + _varint_len(remaining) + remaining


def owed(s: Sent) -> bool | None:
    """Is a reply owed (True), forbidden (False), or may there be one (None)?

    Contract: every request on the sender's own ``req/{op}`` gets one reply (§2: a request over
    16 KiB is answered ``malformed``). Retained requests "are ignored": the gateway ignores them
    when the broker hands them over as retained; delivered live (retain flag cleared, MQTT v5
    default) one reply is allowed.
    """
    if not s.case.expects_reply or not _delivered(s):
        return False
    if s.case.retain:
        return None
    return True


def _delivered(sent: Sent) -> bool:
    """Did the broker take the message (PUBACK success)? Only then can a reply be owed."""
    return sent.error is None and sent.puback is not None and sent.puback < 0x80


# --------------------------------------------------------------------------- oracle


def _reply_problem(case: Case, payload: bytes) -> tuple[str | None, str | None, Any]:
    """(failure kind, detail, the request id) of a reply; kind None when it is a good reply."""
    try:
        body = json.loads(payload)
    except ValueError:
        return "bad_reply", f"reply is not JSON: {payload[:200]!r}", None
    if not isinstance(body, dict):
        return "bad_reply", f"reply is not an object: {payload[:200]!r}", None
    rid = body.get("request_id")
    ops = request_ops()
    schema = ops[case.op].reply if case.op in ops else ops["hello"].reply
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if body.get("ok") is False:
        if code not in CODES:
            return "bad_code", f"code {code!r} is not in the closed enum", rid
        if code == ErrorCode.INTERNAL.value:
            return "internal", f"reply {payload[:300]!r}", rid
        # an error reply: check the envelope and error body only (data is null)
        body = {**body, "data": None}
    found = problems(body, schema)
    if case.op not in ops:
        found = [p for p in found if not p.startswith("$.data")]
    if found:
        return "bad_reply", f"{'; '.join(found[:3])}: {payload[:200]!r}", rid
    return None, None, rid


def check_replies(sent: list[Sent], inbox: list[Received], spy: Spy, report: Report) -> None:
    by_seq: dict[int, list[Received]] = defaultdict(list)
    untagged: dict[str, list[Received]] = defaultdict(list)
    for received in inbox:
        seq = _tag(received.correlation)
        if seq is None:
            untagged[received.terminal].append(received)
        else:
            by_seq[seq].append(received)
    report.replies = len(inbox)
    owed_untagged: Counter[str] = Counter()
    maybe_untagged: Counter[str] = Counter()
    untagged_cases: dict[str, list[Case]] = defaultdict(list)
    for s in sent:
        case = s.case
        report.mutations[case.mutation.split(":")[0]] += 1
        report.pubacks[
            f"0x{s.puback:02x}" if s.puback is not None else (s.error or "none")[:30]
        ] += 1
        replies = by_seq.pop(s.seq, []) if s.correlation and len(s.correlation) >= TAG_SIZE else []
        for r in replies:
            if r.terminal != case.terminal:
                report.fail("misrouted", f"reply for {case.terminal} reached {r.terminal}", case)
        due = owed(s)
        if due is False:
            if replies:
                report.fail("unexpected_reply", f"{len(replies)} replies: {replies[0].topic}", case)
            continue
        report.expected_replies += 1 if due else 0
        if not case.tagged:
            owed_untagged[case.terminal] += 1 if due else 0
            maybe_untagged[case.terminal] += 0 if due else 1
            untagged_cases[case.terminal].append(case)
            continue
        if not replies:
            if due:
                seen = spy.seen.get(s.seq)
                where = (
                    f"the gateway published it on {seen[0][:100]!r} but the terminal did not get it"
                    if seen
                    else "the gateway never published a reply (the broker saw none)"
                )
                report.fail(
                    "no_reply",
                    f"no reply (PUBACK 0x{s.puback or 0:02x}, packet {packet_size(s)} bytes): "
                    f"{where}",
                    case,
                )
            continue
        if case.retain:
            report.retained_answered += 1
        if len(replies) > 1:
            report.fail("duplicate_replies", f"{len(replies)} replies", case)
        _check_one(s, replies[0], report)
    for received_list in by_seq.values():
        for r in received_list:
            report.fail("unexpected_reply", f"reply to no sent message on {r.topic}")
    for tid in set(owed_untagged) | set(untagged):
        got, owed_count = len(untagged.get(tid, [])), owed_untagged[tid]
        by_rid: dict[str | None, Case] = {}
        for case in untagged_cases.get(tid, []):
            for rid in readable_request_ids(case.payload)[0]:
                by_rid.setdefault(rid, case)
        for r in untagged.get(tid, []):
            kind, detail, rid = _reply_problem(Case(tid, "", b"", "untagged"), r.payload)
            code = _code(r.payload)
            report.codes[code] += 1
            if kind in ("internal", "bad_code"):
                # the case is the first one sent without Correlation Data with that request id
                report.fail(kind, f"(no correlation data) {detail}", by_rid.get(rid))
        if not owed_count <= got <= owed_count + maybe_untagged[tid]:
            example = min(untagged_cases.get(tid, []), key=lambda c: len(c.payload), default=None)
            report.fail(
                "no_reply" if got < owed_count else "duplicate_replies",
                f"{tid}: {owed_count} (+{maybe_untagged[tid]} optional) replies owed to messages without Correlation Data, {got} "
                f"received (the broker routed {spy.untagged[tid]})",
                example,
            )


def _code(payload: bytes) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return "?"
    if isinstance(body, dict) and body.get("ok") is True:
        return "ok"
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else "?"


def _check_one(s: Sent, reply: Received, report: Report) -> None:
    case = s.case
    report.reply_ms.append((reply.at - s.at) * 1000)
    code = _code(reply.payload)
    report.codes[code] += 1
    kind, detail, rid = _reply_problem(case, reply.payload)
    if kind is not None:
        report.fail(kind, detail or "", case)
    if case.expect_codes is not None and code not in case.expect_codes:
        report.fail("wrong_code", f"code {code}, contract says {sorted(case.expect_codes)}", case)
    if code in case.forbid_codes:
        report.fail("wrong_code", f"code {code} for a valid request: {reply.payload[:200]!r}", case)
    allowed, _strict = readable(s)
    if rid not in allowed:
        report.fail(
            "wrong_request_id", f"reply request_id {rid!r}, expected one of {allowed}", case
        )
    if reply.correlation != s.correlation:
        report.fail("wrong_correlation", "Correlation Data not echoed unchanged", case)
    expected_topics = case.reply_topics()
    if reply.topic not in expected_topics:
        report.fail(
            "wrong_reply_topic",
            f"reply on {reply.topic[:120]!r}, expected {sorted(t[:120] for t in expected_topics)}",
            case,
        )


def readable(s: Sent) -> tuple[frozenset[str | None], bool]:
    return readable_request_ids(s.payload)


def check_good(report: Report) -> None:
    good = report.good
    for failure in good.get("failures", [])[:20]:
        report.fail("good_terminal", failure)
    for message in good.get("unsolicited", [])[:20]:
        report.fail("misrouted", f"the well-behaved POS received {message}")
    lat = good.get("latencies_ms") or []
    if not lat:
        report.fail("good_terminal", "the well-behaved POS completed no tap")


def check_gateway(
    site: Site, metrics: str, alive: bool, ready: int, exit_code: int | None, report: Report
) -> None:
    if not alive:
        report.fail("gateway_died", f"onecard serve exited: {site.log_text()[-1500:]}")
    if ready != 200:
        report.fail("not_ready", f"/readyz answered {ready} after the run")
    match = re.search(r"^onecard_mqtt_reconnects_total (\S+)$", metrics, re.MULTILINE)
    if match and float(match.group(1)) > 0:
        report.fail("gateway_reconnected", f"onecard_mqtt_reconnects_total {match.group(1)}")
    broker_log = site.broker.log_text()
    too_large = broker_log.count("Dropping too large outgoing PUBLISH for gateway")
    if too_large:
        report.broker_notes.append(
            f"{too_large} requests dropped as bigger than the gateway's Maximum Packet Size"
        )
    if "Outgoing messages are being dropped for client gateway" in broker_log:
        report.broker_notes.append("the broker's queue for the gateway overflowed (dropping)")
    connects = len(re.findall(r"New client connected .* u'gateway'", broker_log))
    if connects != 1:
        lost = [line for line in broker_log.splitlines() if "onecard-gateway" in line][:6]
        report.fail(
            "gateway_reconnected",
            f"the gateway connected {connects} times to the broker; {' | '.join(lost)[:600]}",
        )
    if exit_code != 0:
        report.fail("unclean_shutdown", f"SIGTERM after the run: exit code {exit_code}")


_LABEL_RE = re.compile(r'\bop="([^"]*)"')


def check_labels(metrics: str, sent: list[Sent], report: Report) -> None:
    """Bounded labels: no op name outside the contract that a fuzzer sent appears as a label,
    and at most a couple of catch-all values (e.g. ``unknown``) beside the contract's ops."""
    ops = set(request_ops())
    labels = set(_LABEL_RE.findall(metrics))
    sent_ops = {s.case.topic.rsplit("/", 1)[-1] for s in sent if "/req/" in s.case.topic}
    leaked = sorted((labels & sent_ops) - ops)
    extra = sorted(labels - ops)
    if leaked or len(extra) > 2:
        report.fail(
            "unbounded_labels",
            f"{len(extra)} op labels outside the contract (sent by the fuzzer: {leaked[:5]}); "
            f"/metrics grew from {report.metrics_lines[0]} to {report.metrics_lines[1]} lines",
        )


_CARD_IN_PAYLOAD = re.compile(rb'"card"\s*:\s*"([0-9A-F]{8,32})"')
_HEX_IN_LOG = re.compile(r"(?<![0-9A-Za-z])[0-9A-F]{8,32}(?![0-9A-Za-z])")


def check_log(site: Site, log: str, sent: list[Sent], report: Report) -> None:
    """No holder's national ID, name or card UID in the log, nor any card number a fuzzer
    sent (the masking filter keeps at most the last 4 hex digits)."""
    for person in site.people:
        for what, value in (
            ("national ID", person.national_id),
            ("name", person.name),
            ("card UID", person.uid),
        ):
            if value in log:
                line = next(line for line in log.splitlines() if value in line)
                report.fail("personal_data_in_log", f"{what} in the gateway log: {line[:300]}")
    cards = {m.group(1).decode() for s in sent for m in _CARD_IN_PAYLOAD.finditer(s.payload)}
    leaked = sorted(set(_HEX_IN_LOG.findall(log)) & cards)
    for card in leaked[:5]:
        line = next(line for line in log.splitlines() if card in line)
        report.fail("personal_data_in_log", f"a card number sent by a fuzzer: {line[:300]}")
