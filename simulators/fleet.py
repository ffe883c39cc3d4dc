"""The fleet runner: many simulated terminals, a compressed canteen rush, kiosk loss reports mixed
in, and the invariants that must hold whatever the load (contract §6, §8; LOSS-2).

Traffic: every POS, door and water controller taps cards at a rate that follows a lunch-time
shape compressed into the run (quiet start, the 11:30–12:30 rush in the middle, quiet end). Kiosks
top up cards and, a few times a minute, a holder reports a card lost (login + ``report_loss``);
from the moment the loss reply arrives the fleet keeps tapping that card now and then and expects
every online answer to be a refusal.

Invariants (any break makes :attr:`FleetResult.ok` false and the CLI exit non-zero):

- LOSS-2: no online approval of a card for a request sent after its loss report was acknowledged;
- §6: one ``request_id`` is never approved with two different ``transfer_id`` values;
- §8.3: no offline sale is lost: every ``seq`` stored is accepted, duplicate or rejected by an
  ``offline_upload`` reply before the run ends.

:class:`LiveStats` is the observer every terminal reports to; a dashboard can poll
:meth:`LiveStats.snapshot` while the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.wire import ReportLossResponse, WaterHoldResponse, mask_card
from simulators.terminals import (
    Credentials,
    DoorReader,
    Kiosk,
    Mode,
    Pos,
    TapResult,
    Terminal,
    WaterController,
    make_terminal,
)

__all__ = [
    "CardInfo",
    "FleetConfig",
    "FleetResult",
    "FleetRunner",
    "LiveStats",
    "LossReport",
    "load_cards",
    "percentile",
    "run_fleet",
    "rush_shape",
]

log = logging.getLogger("onecard.simulators.fleet")

#: Operations that are a card tap (counted in taps/s, latency and declines).
TAP_OPS = frozenset({"purchase", "meal", "access", "water_hold"})
#: Operations a lost card must never get approved online (LOSS-2).
CARD_OPS = TAP_OPS | {"topup"}


@dataclass(frozen=True, slots=True)
class CardInfo:
    """One card the fleet may tap: ``{"uid": ..., "number": ..., "password": ...}``."""

    uid: str
    number: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"CardInfo({mask_card(self.uid)})"


def load_cards(path: Path) -> list[CardInfo]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return [CardInfo(str(c["uid"]).upper(), str(c["number"]), str(c["password"])) for c in raw]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def rush_shape(fraction: float) -> float:
    """Relative tap rate at ``fraction`` (0..1) of the run: 0.25 off-peak, 1.0 at the rush.

    The run stands for the canteen's 11:00–13:00; the rush (11:30–12:30) is the middle half.
    """
    return 0.25 + 0.75 * math.exp(-(((fraction - 0.5) / 0.15) ** 2) / 2)


class LiveStats:
    """Counters and a sliding window of latencies, fed by every terminal's results."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.started = time.monotonic()
        self.taps = 0
        self.approvals = 0
        self.declines: Counter[str] = Counter()
        self.modes: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.latencies: list[float] = []
        self._window: deque[tuple[float, float | None]] = deque()
        self.terminals: dict[str, Terminal] = {}
        self.loss_events: deque[LossReport] = deque(maxlen=8)

    def record(self, result: TapResult) -> None:
        self.ops[result.op] += 1
        if result.op not in TAP_OPS:
            return
        now = time.monotonic()
        self.modes[result.mode.value] += 1
        if result.mode is not Mode.LATE:
            self.taps += 1
        if result.approved:
            self.approvals += 1
        elif result.code is not None:
            self.declines[result.code] += 1
        latency = result.latency_s if result.mode is Mode.ONLINE else None
        if latency is not None:
            self.latencies.append(latency)
        self._window.append((now, latency))
        while self._window and self._window[0][0] < now - self.window_s:
            self._window.popleft()

    def snapshot(self) -> dict[str, Any]:
        """What a dashboard shows: rates and percentiles over the window, per-terminal state."""
        now = time.monotonic()
        while self._window and self._window[0][0] < now - self.window_s:
            self._window.popleft()
        span = min(self.window_s, max(now - self.started, 1e-3))
        window = sorted(lat for _, lat in self._window if lat is not None)
        return {
            "taps": self.taps,
            "approvals": self.approvals,
            "taps_per_s": round(len(self._window) / span, 1),
            "latency_ms": {f"p{q}": round(percentile(window, q) * 1000, 2) for q in (50, 90, 99)},
            "declines_by_code": dict(self.declines),
            "modes": dict(self.modes),
            "denylist_version": {tid: t.deny.version for tid, t in self.terminals.items()},
            "online": {tid: t.online for tid, t in self.terminals.items()},
            "offline_backlog": {
                tid: len(t.backlog) for tid, t in self.terminals.items() if isinstance(t, Pos)
            },
        }


@dataclass(slots=True)
class LossReport:
    card: str  # masked
    denylist_version: int
    terminals_applied: int | None
    latency_ms: float
    #: Right after the reply, one POS taps the card: where, what it said, how long after.
    probe_terminal: str | None = None
    probe_code: str | None = None
    probe_ms_after_reply: float | None = None


@dataclass
class FleetConfig:
    host: str
    port: int
    terminals: list[Credentials]
    cards: list[CardInfo]
    duration_s: float = 60.0
    seed: int = 1
    #: The first kiosk loss report at the latest this many seconds into the run.
    first_loss_after_s: float = 3.0
    #: Peak taps per second per tapping terminal; 0 = closed loop, as fast as replies come.
    rate: float = 2.0
    loss_per_minute: float = 3.0
    #: Never report more than this share of the cards lost.
    max_lost_fraction: float = 0.2
    amount_min_fen: int = 100
    amount_max_fen: int = 1500
    topup_fen: int = 5000
    heartbeat_interval_s: float | None = None
    request_timeout_s: float = 5.0
    start_timeout_s: float = 15.0
    drain_timeout_s: float = 20.0
    #: Keep each POS's seq, backlog and in-doubt sales here across runs (contract §8.3).
    state_dir: Path | None = None


@dataclass
class FleetResult:
    duration_s: float
    terminals: dict[str, int]
    taps: int
    approvals: int
    declines: dict[str, int]
    modes: dict[str, int]
    ops: dict[str, int]
    latency_ms: dict[str, float]
    taps_per_s: float
    offline_stored: int
    offline_uploaded: int
    offline_rejected: int
    offline_unresolved: int
    in_doubt_left: int
    loss_reports: list[LossReport]
    lost_card_declines: int
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def format(self) -> str:
        lat = self.latency_ms
        lines = [
            f"fleet run: {self.duration_s:.1f} s, terminals {self.terminals}",
            f"taps: {self.taps} ({self.taps_per_s:.1f}/s), approved {self.approvals}, "
            f"modes {self.modes}",
            "declines: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.declines.items())) or "none"),
            f"online latency ms: p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  "
            f"p99 {lat['p99']:.1f}  max {lat['max']:.1f}",
            f"offline sales: stored {self.offline_stored}, uploaded {self.offline_uploaded}, "
            f"rejected {self.offline_rejected}, unresolved {self.offline_unresolved}; "
            f"requests still in doubt {self.in_doubt_left}",
            f"loss reports: {len(self.loss_reports)}; terminals_applied "
            f"{[r.terminals_applied for r in self.loss_reports]}; later taps of lost cards "
            f"declined {self.lost_card_declines}",
        ]
        probes = [r for r in self.loss_reports if r.probe_code is not None]
        if probes:
            refused = [r for r in probes if r.probe_code == "card_lost"]
            delays = sorted(
                r.probe_ms_after_reply for r in refused if r.probe_ms_after_reply is not None
            )
            median = f"{delays[len(delays) // 2]:.1f} ms" if delays else "—"
            lines.append(
                f"right after each loss reply a POS tapped the card: refused {len(refused)}/"
                f"{len(probes)} (card_lost), median {median} after the reply"
            )
        if self.violations:
            lines.append(f"INVARIANTS BROKEN ({len(self.violations)}):")
            lines.extend(f"  - {v}" for v in self.violations[:20])
        else:
            lines.append("invariants: all held")
        return "\n".join(lines)


class FleetRunner:
    """Build the terminals, run the traffic for ``duration_s``, drain, check, report."""

    def __init__(self, config: FleetConfig, stats: LiveStats | None = None) -> None:
        self.config = config
        self.stats = stats or LiveStats()
        self.rng = random.Random(config.seed)
        self.terminals: list[Terminal] = []
        self.lost_at: dict[str, float] = {}
        self.live = list(config.cards)
        self.lost: list[CardInfo] = []
        self.loss_reports: list[LossReport] = []
        self.lost_card_declines = 0
        self.violations: list[str] = []
        self._start = 0.0
        self._stopping = asyncio.Event()
        for i, creds in enumerate(config.terminals):
            terminal = make_terminal(
                creds,
                config.host,
                config.port,
                state_dir=config.state_dir,
                request_timeout_s=config.request_timeout_s,
                heartbeat_interval_s=config.heartbeat_interval_s,
                seed=config.seed * 1000 + i,
                observer=self._observe,
            )
            self.terminals.append(terminal)
            self.stats.terminals[creds.id] = terminal

    # --- invariants -----------------------------------------------------------------------------
    def _observe(self, result: TapResult) -> None:
        self.stats.record(result)
        card = result.card
        if card is None or card not in self.lost_at or result.op not in CARD_OPS:
            return
        if result.mode not in (Mode.ONLINE, Mode.LATE) or result.sent_at is None:
            return
        if result.sent_at <= self.lost_at[card]:
            return
        if result.approved:
            self.violations.append(
                f"LOSS-2: {result.terminal_id} {result.op} approved {mask_card(card)} online "
                f"after its loss report ({result.request_id})"
            )
        else:
            self.lost_card_declines += 1

    # --- traffic --------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def stop(self) -> None:
        """End the traffic now (Ctrl-C): terminals drain their backlog and the summary prints."""
        self.config.duration_s = min(self.config.duration_s, self._elapsed())
        self._stopping.set()

    def _running(self) -> bool:
        return self._elapsed() < self.config.duration_s

    async def _think(self, rng: random.Random, scale: float = 1.0, until: float = math.inf) -> None:
        """Pause like a person at a terminal; never past ``until`` (run seconds) or the end."""
        rate = self.config.rate * scale
        if rate <= 0:
            await asyncio.sleep(0)
            return
        elapsed = self._elapsed()
        fraction = min(1.0, elapsed / max(self.config.duration_s, 1e-3))
        pause = rng.expovariate(rate * rush_shape(fraction))
        limit = min(self.config.duration_s, until) - elapsed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, min(pause, limit)))

    def _pick(self, rng: random.Random) -> CardInfo:
        if self.lost and (not self.live or rng.random() < 0.1):
            return rng.choice(self.lost)
        return rng.choice(self.live)

    def _amount(self, rng: random.Random) -> int:
        return rng.randint(self.config.amount_min_fen, self.config.amount_max_fen)

    async def _pos(self, pos: Pos, rng: random.Random) -> None:
        while self._running():
            await self._think(rng)
            if not self._running():
                break
            card = self._pick(rng)
            roll = rng.random()
            if roll < 0.7:
                await pos.sale(card.uid, self._amount(rng))
            elif roll < 0.97:
                await pos.meal(card.uid, self._amount(rng))
            else:
                await pos.void_last()

    async def _door(self, door: DoorReader, rng: random.Random) -> None:
        while self._running():
            await self._think(rng)
            if self._running():
                await door.access(self._pick(rng).uid)

    async def _water(self, water: WaterController, rng: random.Random) -> None:
        while self._running():
            await self._think(rng)
            if not self._running():
                break
            held = await water.hold(self._pick(rng).uid, rng.randint(200, 500))
            if not held.approved or not isinstance(held.data, WaterHoldResponse):
                continue
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            if rng.random() < 0.9:
                await water.settle(held.data.hold_id, rng.randint(0, held.data.held_fen))
            else:
                await water.release(held.data.hold_id)

    async def _kiosk(self, kiosk: Kiosk, rng: random.Random, kiosks: int) -> None:
        cfg = self.config
        per_kiosk = cfg.loss_per_minute / max(kiosks, 1)
        budget = int(len(cfg.cards) * cfg.max_lost_fraction)

        def next_loss() -> float:
            if per_kiosk <= 0:
                return math.inf
            return self._elapsed() + rng.expovariate(per_kiosk / 60)

        # the first loss report comes early, so a demo shows LOSS-2 within seconds
        due = min(next_loss(), cfg.first_loss_after_s) if per_kiosk > 0 else math.inf
        while self._running():
            if self._elapsed() >= due and len(self.lost_at) < budget and len(self.live) > 1:
                await self._report_loss(kiosk, rng)
                due = next_loss()
                continue
            await self._think(rng, scale=0.25, until=due)
            if not self._running():
                break
            if self._elapsed() >= due:
                continue
            card = rng.choice(self.live)
            if rng.random() < 0.7:
                ref = f"sim-{kiosk.id[:40]}-{rng.randrange(10**9)}"
                await kiosk.topup(cfg.topup_fen, ref, card=card.uid)
            else:
                await kiosk.login_and_balance(card.number, card.password)

    async def _report_loss(self, kiosk: Kiosk, rng: random.Random) -> None:
        card = rng.choice(self.live)
        started = time.monotonic()
        result = await kiosk.login_and_report_loss(card.number, card.password)
        if not result.approved or not isinstance(result.data, ReportLossResponse):
            log.info("loss report for %s not done: %s", mask_card(card.uid), result.code)
            return
        self.lost_at[card.uid] = replied = time.monotonic()
        self.live.remove(card)
        self.lost.append(card)
        report = LossReport(
            mask_card(card.uid),
            result.data.denylist_version,
            result.data.terminals_applied,
            round((replied - started) * 1000, 1),
        )
        self.loss_reports.append(report)
        self.stats.loss_events.append(report)
        # LOSS-2 shown live: a canteen POS taps the card at once and must refuse it
        pos = [t for t in self.terminals if isinstance(t, Pos) and t.online]
        if pos:
            probe = rng.choice(pos)
            tap = await probe.sale(card.uid, self._amount(rng))
            report.probe_terminal = probe.id
            report.probe_code = "approved" if tap.approved else (tap.code or tap.mode.value)
            if tap.sent_at is not None:
                answered = tap.sent_at + tap.latency_s
                report.probe_ms_after_reply = round((answered - replied) * 1000, 1)

    # --- the run --------------------------------------------------------------------------------
    async def run(self) -> FleetResult:
        cfg = self.config
        for terminal in self.terminals:
            await terminal.start()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.start_timeout_s):
                    await asyncio.gather(*(t.synced.wait() for t in self.terminals))
            not_up = [t.id for t in self.terminals if not t.online]
            if not_up:
                log.warning("not online at start: %s", ", ".join(not_up))
            self._start = time.monotonic()
            self.stats.started = self._start
            await self._traffic()
            duration = time.monotonic() - self._start
            await self._drain()
        finally:
            await asyncio.gather(*(t.stop() for t in self.terminals))
        return self._result(duration)

    async def _traffic(self) -> None:
        kiosks = sum(1 for t in self.terminals if isinstance(t, Kiosk))
        workers: list[Awaitable[None]] = []
        for i, t in enumerate(self.terminals):
            rng = random.Random(self.config.seed * 7919 + i)
            if isinstance(t, Pos):
                workers.append(self._pos(t, rng))
            elif isinstance(t, DoorReader):
                workers.append(self._door(t, rng))
            elif isinstance(t, WaterController):
                workers.append(self._water(t, rng))
            elif isinstance(t, Kiosk):
                workers.append(self._kiosk(t, rng, kiosks))
        await asyncio.gather(*workers)

    async def _drain(self) -> None:
        """Let every terminal get back online, retry what is in doubt and upload its backlog."""
        deadline = time.monotonic() + self.config.drain_timeout_s

        def busy() -> bool:
            return any(
                t.in_doubt or (isinstance(t, Pos) and t.backlog) or not t.online
                for t in self.terminals
                if not t.refused
            )

        while time.monotonic() < deadline:
            if not busy():
                return
            await asyncio.sleep(0.05)

    def _result(self, duration: float) -> FleetResult:
        stats = self.stats
        violations = list(self.violations)
        stored = uploaded = rejected = unresolved = 0
        for t in self.terminals:
            violations.extend(t.violations)
            if isinstance(t, Pos):
                stored += len(t.stored)
                uploaded += len(t.uploaded)
                rejected += len(t.rejected)
                lost = t.unresolved_offline()
                unresolved += len(lost)
                if lost:
                    violations.append(f"§8.3: {t.id} offline sales never settled: seq {lost}")
        latencies = sorted(stats.latencies)
        return FleetResult(
            duration_s=round(duration, 2),
            terminals=dict(Counter(c.kind.value for c in self.config.terminals)),
            taps=stats.taps,
            approvals=stats.approvals,
            declines=dict(stats.declines),
            modes=dict(stats.modes),
            ops=dict(stats.ops),
            latency_ms={
                "p50": round(percentile(latencies, 50) * 1000, 2),
                "p90": round(percentile(latencies, 90) * 1000, 2),
                "p99": round(percentile(latencies, 99) * 1000, 2),
                "max": round((latencies[-1] if latencies else 0.0) * 1000, 2),
            },
            taps_per_s=round(stats.taps / max(duration, 1e-3), 1),
            offline_stored=stored,
            offline_uploaded=uploaded,
            offline_rejected=rejected,
            offline_unresolved=unresolved,
            in_doubt_left=sum(t.in_doubt for t in self.terminals),
            loss_reports=self.loss_reports,
            lost_card_declines=self.lost_card_declines,
            violations=violations,
        )


async def run_fleet(config: FleetConfig, stats: LiveStats | None = None) -> FleetResult:
    return await FleetRunner(config, stats).run()
