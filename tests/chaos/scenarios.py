"""The seven chaos scenarios of issue 8, each a coroutine ``(root, size) -> ScenarioResult``.

Every scenario builds its own site (fresh registry, broker, gateway process, terminals), runs a
closed-loop POS load, injects its fault while the load runs, lets the site recover, waits until
every terminal has settled (in-doubt requests retried, offline sales uploaded) and then checks
the invariants of :mod:`tests.chaos.invariants`. Figures come from what the terminals saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import itertools
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from simulators.terminals import Mode, Pos, TapResult
from tests.chaos.faults import Flooder, FullDisk, LockHolder, Netns
from tests.chaos.invariants import (
    Check,
    check_deny_converged,
    check_offline_settlement,
    check_status,
    money_checks,
)
from tests.chaos.site import Load, ShiftedClock, Site, SiteConfig, StatusWatcher, online

__all__ = ["FULL", "SCENARIOS", "SHORT", "ScenarioResult", "Size"]


@dataclass(frozen=True, slots=True)
class Size:
    name: str
    students: int
    terminals: int  # seeded
    started: int  # started (the POS among them carry the load)
    warmup_s: float
    fault_s: float
    after_s: float
    cycles: int
    think_s: float
    keepalive_s: int
    request_timeout_s: float
    settle_s: float
    hold_s: float  # slow counter transaction
    flood_big_mib: float
    offline_pos: int  # scenario 7
    offline_sales_per_min: int
    restart_delay_s: float  # a supervisor's RestartSec
    partition_s: float


SHORT = Size(
    name="short",
    students=100,
    terminals=20,
    started=10,
    warmup_s=1.0,
    fault_s=2.0,
    after_s=1.5,
    cycles=1,
    think_s=0.05,
    keepalive_s=2,
    request_timeout_s=1.5,
    settle_s=30.0,
    hold_s=3.0,
    flood_big_mib=2.0,
    offline_pos=1,
    offline_sales_per_min=2,
    restart_delay_s=1.0,
    partition_s=12.0,
)

FULL = Size(
    name="full",
    students=1000,
    terminals=80,
    started=60,  # 36 POS selling, 24 doors/water/kiosks holding deny lists
    warmup_s=10.0,
    fault_s=20.0,
    after_s=30.0,
    cycles=3,
    think_s=0.05,
    keepalive_s=5,
    request_timeout_s=2.0,
    settle_s=90.0,
    hold_s=5.0,
    flood_big_mib=4.0,
    offline_pos=3,
    offline_sales_per_min=4,
    restart_delay_s=3.0,
    partition_s=40.0,
)


@dataclass
class ScenarioResult:
    key: str
    title: str
    size: str
    figures: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# --------------------------------------------------------------------------- figures


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


class Timeline:
    """What the load terminals saw, by time window."""

    def __init__(self, site: Site, ids: set[str]) -> None:
        self.results = [(t, r) for t, r in site.recorder.results if r.terminal_id in ids]
        self.taps = [(t, r) for t, r in self.results if r.op == "purchase"]

    def window(self, start: float, end: float) -> list[tuple[float, TapResult]]:
        return [(t, r) for t, r in self.taps if start <= t < end]

    def answered_rate(self, start: float, end: float) -> float:
        n = sum(1 for _t, r in self.window(start, end) if online(r))
        return n / max(end - start, 1e-9)

    def outage(self, start: float, end: float) -> float:
        """Longest span inside [start, end] without any online answer, fleet-wide."""
        times = [start] + [t for t, r in self.window(start, end) if online(r)] + [end]
        return max(b - a for a, b in itertools.pairwise(times))

    def recovery(self, healed: float, baseline: float, end: float) -> float | None:
        """Seconds from ``healed`` until a 1 s window answers ≥ half the baseline rate."""
        step = 0.25
        t = healed
        while t + 1 <= end:
            if self.answered_rate(t, t + 1) >= 0.5 * baseline:
                return t - healed
            t += step
        return None

    def latencies(self, start: float, end: float) -> list[float]:
        return [r.latency_s for _t, r in self.window(start, end) if r.mode is Mode.ONLINE]

    def modes(self, start: float, end: float) -> Counter[str]:
        out: Counter[str] = Counter()
        for _t, r in self.window(start, end):
            if r.mode in (Mode.ONLINE, Mode.LATE):
                out["approved" if r.approved else f"declined:{r.code}"] += 1
            elif r.mode is Mode.OFFLINE:
                out["offline approved" if r.approved else f"offline refused:{r.code}"] += 1
            else:
                out["in doubt"] += 1
        return out


def _codes(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common(5)) or "none"


# --------------------------------------------------------------------------- common run


class Run:
    """One scenario's site, load, status watcher and clocks."""

    def __init__(self, site: Site, size: Size) -> None:
        self.site = site
        self.size = size
        assert site.broker is not None and site.gateway is not None
        self.broker = site.broker
        self.gateway = site.gateway
        self.watcher = StatusWatcher(site.broker)
        self.load_pos = list(site.pos)
        self.load = Load(self.load_pos, site.card_uids, think_s=size.think_s)
        self.lost: list[str] = []
        self.down: list[tuple[float, float]] = []
        self.notes: list[str] = []
        self.begin = self.fault_start = self.fault_end = self.end = 0.0
        self.load_at_start = 0.0
        self._loss_pick = 0
        #: seconds from each loss report until every running terminal held the card
        self.propagation: list[float | None] = []
        self._samplers: list[asyncio.Task[None]] = []
        self.settled_after: float | None = None

    async def _until_everywhere(self, uid: str, reported: float, slot: int) -> None:
        """When did the last running terminal hold the lost card? (polled every 50 ms)"""
        while time.monotonic() - reported < 300:
            if all(uid in t.deny for t in self.site.terminals if t.link.up):
                self.propagation[slot] = time.monotonic() - reported
                return
            await asyncio.sleep(0.05)

    async def _until_settled(self) -> None:
        """When, after the fault, had every terminal answered its in-doubt requests and
        uploaded its offline sales? (polled every 100 ms, while the load goes on)"""
        while True:
            if not any(t.in_doubt for t in self.site.terminals) and not any(
                p.backlog for p in self.site.pos
            ):
                self.settled_after = time.monotonic() - self.fault_end
                return
            await asyncio.sleep(0.1)

    async def start(self) -> None:
        self.load_at_start = os.getloadavg()[0]
        self.watcher.start()
        self.load.start()
        self.begin = time.monotonic()
        await asyncio.sleep(self.size.warmup_s)
        self.fault_start = time.monotonic()

    async def lose_a_card(self, *, at: datetime | None = None) -> str | None:
        """A holder reports a card lost at the counter while the fault lasts."""
        self._loss_pick += 1
        card = self.site.cards[-self._loss_pick]
        try:
            await self.site.report_loss(
                str(card["serial"]), presented_id=str(card["number"]), at=at
            )
        except Exception as exc:  # e.g. a full disk: the counter must fail loudly, not lie
            self.notes.append(f"counter loss report failed: {type(exc).__name__}: {exc}"[:200])
            return None
        self.lost.append(str(card["serial"]))
        self.propagation.append(None)
        self._samplers.append(
            asyncio.create_task(
                self._until_everywhere(
                    str(card["uid"]), time.monotonic(), len(self.propagation) - 1
                )
            )
        )
        return str(card["uid"])

    async def finish(
        self,
        result: ScenarioResult,
        *,
        status_bound_s: float | None,
        exclude: frozenset[str] = frozenset(),
    ) -> Timeline:
        self.fault_end = self.fault_end or time.monotonic()
        settling = asyncio.create_task(self._until_settled())
        await asyncio.sleep(self.size.after_s)
        self.end = time.monotonic()
        await self.load.stop()
        timeline = self.figures(result)
        result.figures["machine load (1-min average) at start / end"] = (
            f"{self.load_at_start:.1f} / {os.getloadavg()[0]:.1f} on 2 cores"
        )
        if self.load.crashes:
            result.notes.append(f"load errors: {self.load.crashes[:3]}")
        unsettled = await self.site.settle(self.size.settle_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settling, 1.0)
        result.figures["all terminals settled"] = (
            f"{self.settled_after:.1f} s after the fault ended (no request in doubt, every "
            "offline sale uploaded)"
            if self.settled_after is not None
            else "not while the load ran"
        )
        result.checks += await money_checks(self.site, unsettled, exclude)
        deny, _took = await check_deny_converged(self.site, self.lost)
        result.checks.append(deny)
        for task in self._samplers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 1.0)
        if self.propagation:
            result.figures["lost card on every terminal"] = (
                " / ".join("not yet" if x is None else _ms(x) for x in self.propagation)
                + " after the counter's report"
            )
        serving = await asyncio.to_thread(self.gateway.ready)
        await asyncio.sleep(0.3)  # let the watcher see the last retained message
        if status_bound_s is not None:
            status, lags = check_status(
                self.watcher, self.down, bound_s=status_bound_s, serving_now=serving
            )
            if lags:
                result.figures["status 'offline' after"] = " / ".join(f"{x:.1f} s" for x in lags)
        else:
            status, _ = check_status(self.watcher, [], bound_s=0, serving_now=serving)
        result.checks.append(status)
        await self.watcher.stop()
        result.notes += self.notes
        return timeline

    def figures(self, result: ScenarioResult) -> Timeline:
        """Throughput before/during, outage, recovery, latency during the fault."""
        timeline = Timeline(self.site, {p.id for p in self.load_pos})
        before = timeline.answered_rate(self.begin + 0.5, self.fault_start)
        during = timeline.answered_rate(self.fault_start, self.fault_end)
        f = result.figures
        f["online answers/s before"] = f"{before:.0f}"
        f["online answers/s during fault"] = f"{during:.0f}"
        f["outage seen by terminals"] = _ms(timeline.outage(self.fault_start, self.end))
        first = next((t for t, r in timeline.window(self.fault_end, self.end) if online(r)), None)
        f["first online answer after fault end"] = (
            "none within the run" if first is None else _ms(first - self.fault_end)
        )
        rec = timeline.recovery(self.fault_end, before, self.end)
        f["recovery to half the rate before"] = (
            f"not within {self.end - self.fault_end:.0f} s" if rec is None else _ms(rec)
        )
        lat = timeline.latencies(self.fault_start, self.fault_end)
        if lat:
            f["latency p50/p99 during fault"] = f"{_ms(_pct(lat, 50))} / {_ms(_pct(lat, 99))}"
        modes = timeline.modes(self.fault_start, self.fault_end)
        f["taps during fault"] = _codes(modes)
        return timeline


async def _with_site(
    root: Path, size: Size, body: Callable[[Site], Awaitable[None]], **overrides: object
) -> None:
    config = SiteConfig(
        students=size.students,
        terminals=size.terminals,
        started=size.started,
        keepalive_s=size.keepalive_s,
        request_timeout_s=size.request_timeout_s,
    )
    config = replace(config, **overrides)  # type: ignore[arg-type]
    async with Site(root, config) as site:
        await body(site)


def _bound(size: Size) -> float:
    """How soon the broker must publish the gateway's last will: 1.5 keep-alives (MQTT), plus
    mosquitto 2.0's keep-alive sweep, which runs every 5 s on whole seconds, plus 1 s."""
    return 1.5 * size.keepalive_s + 7.0


# --------------------------------------------------------------------------- 1. gateway kill


async def gateway_kill(root: Path, size: Size) -> ScenarioResult:
    result = ScenarioResult("1", "kill -9 of the gateway under load, restart", size.name)

    async def body(site: Site) -> None:
        run = Run(site, size)
        await run.start()
        restart_s: list[float] = []
        for cycle in range(size.cycles):
            down = time.monotonic()
            await asyncio.to_thread(run.gateway.kill)
            if cycle == 0:
                await run.lose_a_card()
            await asyncio.sleep(size.restart_delay_s)
            run.fault_end = time.monotonic()  # the supervisor starts it again
            restart_s.append(await asyncio.to_thread(run.gateway.start))
            run.down.append((down, time.monotonic()))
            if cycle < size.cycles - 1:
                await asyncio.sleep(size.fault_s / size.cycles)
        result.figures["kills"] = f"{size.cycles} (restart after {size.restart_delay_s:.0f} s)"
        result.figures["gateway start to ready"] = " / ".join(f"{x:.1f} s" for x in restart_s)
        await run.finish(result, status_bound_s=_bound(size))

    await _with_site(root, size, body)
    return result


# --------------------------------------------------------------------------- 2. broker kill


async def broker_kill(root: Path, size: Size) -> ScenarioResult:
    result = ScenarioResult("2", "kill -9 of the broker under load, restart", size.name)

    async def body(site: Site) -> None:
        run = Run(site, size)
        await run.start()
        for cycle in range(size.cycles):
            await asyncio.to_thread(run.broker.kill)
            if cycle == 0:
                await run.lose_a_card()
            await asyncio.sleep(size.restart_delay_s)
            run.fault_end = time.monotonic()
            await asyncio.to_thread(run.broker.start)
            if cycle < size.cycles - 1:
                await asyncio.sleep(size.fault_s / size.cycles)
        result.figures["kills"] = f"{size.cycles} (restart after {size.restart_delay_s:.0f} s)"
        # nobody can read a status while the broker is down: only the end state is checked
        await run.finish(result, status_bound_s=None)

    await _with_site(root, size, body)
    return result


# --------------------------------------------------------------------------- 3. partition


async def partition(root: Path, size: Size) -> ScenarioResult:
    result = ScenarioResult(
        "3", "partition between gateway and broker (netns + nftables)", size.name
    )
    from tests.broker import free_port

    with Netns() as ns:

        async def body(site: Site) -> None:
            run = Run(site, size)
            await run.start()
            ns.partition()
            started = time.monotonic()
            await asyncio.sleep(min(1.0, size.fault_s / 4))
            await run.lose_a_card()
            await asyncio.sleep(max(0.0, size.partition_s - (time.monotonic() - started)))
            ns.heal()
            run.fault_end = time.monotonic()
            run.down.append((started, run.fault_end))
            result.figures["partition"] = (
                f"{run.fault_end - started:.0f} s, both directions dropped"
            )
            await run.finish(result, status_bound_s=_bound(size))

        try:
            await _with_site(
                root,
                size,
                body,
                netns=ns.name,
                gateway_listener=(ns.host_address, free_port()),
                netns_address=ns.ns_address,
            )
        finally:
            ns.heal()
    result.notes.append(f"namespace {ns.name} and its veth pair deleted")
    return result


# --------------------------------------------------------------------------- 4. full disk


async def full_disk(root: Path, size: Size) -> ScenarioResult:
    result = ScenarioResult("4", "full disk under the registry (tmpfs filled up)", size.name)
    disk = FullDisk(root / "registry-fs", size_mib=256)
    with disk:

        async def body(site: Site) -> None:
            run = Run(site, size)
            await run.start()
            filled = await asyncio.to_thread(disk.fill)
            result.figures["filled"] = f"{filled / 2**20:.0f} MiB (0 bytes free)"
            await run.lose_a_card()  # the counter writes too: it must fail loudly or succeed
            exited_at: float | None = None
            deadline = time.monotonic() + size.fault_s * 2
            ready_seen = True
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                code = run.gateway.exited()
                if code is not None and exited_at is None:
                    exited_at = time.monotonic()
                    result.notes.append(
                        f"the gateway exited with code {code} "
                        f"{exited_at - run.fault_start:.1f} s into the full disk"
                    )
                if exited_at is None and not await asyncio.to_thread(run.gateway.ready):
                    ready_seen = False
            result.figures["gateway during full disk"] = (
                "exited (loud)" if exited_at is not None else "alive"
            ) + (", /readyz went 503" if not ready_seen else ", /readyz stayed 200")
            disk.free()
            run.fault_end = time.monotonic()
            if exited_at is not None or not run.gateway.alive:  # the supervisor restarts it
                await asyncio.to_thread(run.gateway.start)
                run.down.append((exited_at or run.fault_end, time.monotonic()))
            await run.lose_a_card()  # space is back: the counter works again
            await run.finish(result, status_bound_s=_bound(size))

        await _with_site(root, size, body, registry_dir=disk.mountpoint)
    return result


# --------------------------------------------------------------------------- 5. slow counter tx


async def slow_counter(root: Path, size: Size) -> ScenarioResult:
    result = ScenarioResult(
        "5", f"slow counter transaction (write lock held {size.hold_s:.0f} s)", size.name
    )

    async def body(site: Site) -> None:
        run = Run(site, size)
        await run.start()
        holds: list[tuple[float, float]] = []
        for cycle in range(size.cycles):
            holder = LockHolder(site.db, size.hold_s)
            await holder.hold()
            assert holder.locked_at is not None and holder.released_at is not None
            holds.append((holder.locked_at, holder.released_at))
            if cycle == 0:
                await run.lose_a_card()
            if cycle < size.cycles - 1:
                await asyncio.sleep(size.hold_s)
        run.fault_end = time.monotonic()
        timeline = await run.finish(result, status_bound_s=_bound(size))
        in_hold = [
            (t, r) for a, b in holds for t, r in timeline.window(a, b + size.request_timeout_s)
        ]
        # taps *sent* while the lock was held: how long did the terminal wait?
        sent = [
            r
            for _t, r in timeline.taps
            if r.sent_at is not None and any(a <= r.sent_at < b for a, b in holds)
        ]
        waits = [r.latency_s for r in sent if r.mode is Mode.ONLINE]
        fast = sum(1 for x in waits if x < 1.0)
        result.figures["taps sent while locked"] = (
            f"{len(sent)}: {fast} answered < 1 s, p50 {_ms(_pct(waits, 50))}, "
            f"max {_ms(max(waits, default=0))}"
        )
        result.figures["answers while locked"] = _codes(
            Counter(
                ("approved" if r.approved else f"declined:{r.code}") if online(r) else r.mode.value
                for _t, r in in_hold
            )
        )

    await _with_site(root, size, body)
    return result


# --------------------------------------------------------------------------- 6. flooding terminal


async def flooding_terminal(root: Path, size: Size) -> ScenarioResult:
    result = ScenarioResult(
        "6", f"a flooding terminal (QoS 1, payloads up to {size.flood_big_mib:.0f} MiB)", size.name
    )

    async def body(site: Site) -> None:
        run = Run(site, size)
        spare = site.unused_pos()[0]
        assert site.broker is not None
        flooder = Flooder(site.broker, spare.id, spare.password, big_mib=size.flood_big_mib)
        await run.start()
        flooder.start()
        await asyncio.sleep(size.fault_s)
        await run.lose_a_card()  # the deny list must still reach everyone through the flood
        await asyncio.sleep(size.fault_s)
        await flooder.stop()
        run.fault_end = time.monotonic()
        took = run.fault_end - run.fault_start
        result.figures["flood"] = (
            f"{flooder.sent / took:.0f} msg/s, {flooder.sent_bytes / took / 2**20:.1f} MiB/s, "
            f"{flooder.big_sent} payloads of 1–{size.flood_big_mib:.0f} MiB, "
            f"{flooder.over_sent} of 9 MiB (over the broker's limit), "
            f"{flooder.disconnects} disconnects by the broker"
        )
        result.figures["broker peak RSS"] = f"{flooder.peak_rss_mib:.0f} MiB"
        if not run.gateway.alive:
            result.notes.append(f"the gateway died under the flood: {run.gateway.log_tail(5)}")
            await asyncio.to_thread(run.gateway.start)
            run.down.append((run.fault_start, time.monotonic()))
        timeline = await run.finish(
            result, status_bound_s=_bound(size), exclude=frozenset({spare.id})
        )
        before = timeline.window(run.begin + 0.5, run.fault_start)
        during = timeline.window(run.fault_start, run.fault_end)

        def success(items: list[tuple[float, TapResult]]) -> str:
            answered = sum(1 for _t, r in items if online(r))
            return f"{answered}/{len(items)} ({100 * answered / max(1, len(items)):.0f} %)"

        result.figures["others answered online before / during"] = (
            f"{success(before)} / {success(during)}"
        )
        lat_b = timeline.latencies(run.begin + 0.5, run.fault_start)
        result.figures["others' latency p50/p99 before"] = (
            f"{_ms(_pct(lat_b, 50))} / {_ms(_pct(lat_b, 99))}"
        )

    await _with_site(root, size, body, started=size.started)
    return result


# --------------------------------------------------------------------------- 7. an hour offline


async def hour_offline(root: Path, size: Size) -> ScenarioResult:
    result = ScenarioResult("7", "a POS offline for an hour, then uploading", size.name)

    async def body(site: Site) -> None:
        run = Run(site, size)
        spares = site.unused_pos()[: size.offline_pos]
        offline: list[Pos] = []
        clocks: list[ShiftedClock] = []
        for creds in spares:
            clock = ShiftedClock(-3600.0)  # its clock: an hour ago, when it lost the network
            pos = await site.add_terminal(creds, clock=clock)
            assert isinstance(pos, Pos)
            offline.append(pos)
            clocks.append(clock)
        await Site.wait_synced(offline, 30)
        for pos in offline:
            await pos.link.pause()
        await run.start()
        now = datetime.now(UTC)
        victim_uid = await run.lose_a_card(at=now - timedelta(minutes=57))  # 3 min in
        uids = [u for u in site.card_uids if u != victim_uid]
        stale: Counter[str] = Counter()
        after_loss: list[tuple[str, int]] = []
        for minute in range(60):
            for pos, clock in zip(offline, clocks, strict=True):
                clock.offset_s = -3600.0 + 60 * minute
                for i in range(size.offline_sales_per_min):
                    card = (
                        victim_uid
                        if (minute == 5 and i == 0 and victim_uid)
                        else uids[(minute * 7 + i * 13 + offline.index(pos)) % len(uids)]
                    )
                    tap = await pos.sale(card, 200 + i)
                    if not tap.approved:
                        stale[tap.code or "?"] += 1
                    elif card == victim_uid and tap.seq is not None:
                        after_loss.append((pos.id, tap.seq))
            await asyncio.sleep(size.fault_s / 60)
        for clock in clocks:
            clock.offset_s = 0.0
        stored = sum(len(p.stored) for p in offline)
        result.figures["offline sales stored / refused"] = (
            f"{stored} / {sum(stale.values())} ({_codes(stale)})"
        )
        resumed = time.monotonic()
        for pos in offline:
            pos.link.resume()
        run.fault_end = resumed
        while time.monotonic() - resumed < size.settle_s and any(p.backlog for p in offline):
            await asyncio.sleep(0.1)
        result.figures["upload after reconnect"] = (
            f"{time.monotonic() - resumed:.1f} s"
            if not any(p.backlog for p in offline)
            else "not finished"
        )
        accepted = sum(len(p.uploaded) for p in offline)
        rejected: Counter[str] = Counter(c for p in offline for c in p.rejected.values())
        result.figures["accepted / rejected"] = (
            f"{accepted} / {sum(rejected.values())} ({_codes(rejected)})"
        )
        await run.finish(result, status_bound_s=_bound(size))
        result.checks.append(check_offline_settlement(site, offline, after_loss))

    await _with_site(root, size, body)
    return result


SCENARIOS: dict[str, Callable[[Path, Size], Awaitable[ScenarioResult]]] = {
    "gateway-kill": gateway_kill,
    "broker-kill": broker_kill,
    "partition": partition,
    "full-disk": full_disk,
    "slow-counter": slow_counter,
    "flood": flooding_terminal,
    "hour-offline": hour_offline,
}


def _quiet_closed_sockets(counter: list[int]) -> Callable[[Any, dict[str, Any]], None]:
    """A loop exception handler that counts, instead of printing, what paho/aiomqtt leave
    behind when the broker drops a client: ``EBADF`` callbacks (``add_writer`` on a socket
    already closed) and aiomqtt's own disconnect future nobody awaited. Everything else goes
    to the default handler."""

    def handler(loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (isinstance(exc, OSError) and exc.errno == errno.EBADF) or (
            isinstance(exc, aiomqtt.MqttError) and "never retrieved" in context.get("message", "")
        ):
            counter[0] += 1
            return
        loop.default_exception_handler(context)

    return handler


async def run_scenario(key: str, root: Path, size: Size) -> ScenarioResult:
    """Run one scenario; a crash of the harness itself becomes a failed result, not a hang."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    closed = [0]
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_quiet_closed_sockets(closed))
    try:
        result = await SCENARIOS[key](root / key, size)
    except Exception as exc:
        result = ScenarioResult(key, key, size.name)
        result.checks.append(
            Check("-", "scenario ran to the end", False, f"{type(exc).__name__}: {exc}"[:500])
        )
    finally:
        gc.collect()  # aiomqtt futures left with an exception report now, to our handler
        loop.set_exception_handler(previous)
    result.wall_s = time.monotonic() - started
    if closed[0]:
        result.notes.append(
            f"{closed[0]} client-side callbacks on connections the broker had dropped "
            "(paho/aiomqtt EBADF or an unawaited disconnect future; counted, harmless)"
        )
    with contextlib.suppress(Exception):
        result.figures.setdefault("wall time", f"{result.wall_s:.0f} s")
    return result
