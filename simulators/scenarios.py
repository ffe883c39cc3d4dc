"""Scenarios as code: short scripted stories told with simulated terminals only.

A scenario is ``async def name(ctx: ScenarioContext) -> ScenarioResult``. The context says where
the broker is, which terminals and cards may be used, and optionally how to stop and start the
gateway (:class:`GatewayControl`: the in-process campus of the tests or the demo can; a plain CLI
run cannot, and the scenario then takes the POS off the network instead). Scenarios that need the
card counter (47 h / 48 h replacement and the like) live with the integrator's demo.

Checks are black-box: balances are read through a kiosk (login + ``balance``), never from the
database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from protocol.errors import ErrorCode
from protocol.wire import (
    BalanceResponse,
    OfflineSale,
    OfflineUploadResponse,
    ReportLossResponse,
    TerminalKind,
    mask_card,
)
from simulators.fleet import CardInfo
from simulators.terminals import (
    Credentials,
    DoorReader,
    Kiosk,
    Mode,
    Pos,
    Terminal,
    WaterController,
    make_terminal,
)

__all__ = [
    "SCENARIOS",
    "GatewayControl",
    "ScenarioContext",
    "ScenarioResult",
    "lost_card_declined_everywhere",
    "pos_offline_backlog",
]


class GatewayControl(Protocol):
    async def stop(self) -> None: ...
    async def start(self) -> None: ...


@dataclass
class ScenarioContext:
    host: str
    port: int
    terminals: list[Credentials]
    cards: list[CardInfo]
    gateway: GatewayControl | None = None
    request_timeout_s: float = 5.0
    heartbeat_interval_s: float | None = None
    wait_s: float = 15.0
    state_dir: Path | None = None
    #: What a scenario may need beyond terminals (e.g. ``counter``: the card counter's CLI).
    extra: dict[str, Any] = field(default_factory=dict)

    def first(self, kind: TerminalKind) -> Credentials:
        for creds in self.terminals:
            if creds.kind is kind:
                return creds
        raise LookupError(f"the scenario needs a {kind.value} terminal")

    def make(self, creds: Credentials) -> Terminal:
        return make_terminal(
            creds,
            self.host,
            self.port,
            state_dir=self.state_dir,
            request_timeout_s=self.request_timeout_s,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )


@dataclass
class ScenarioResult:
    name: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def check(self, what: str, ok: bool, detail: object = "") -> bool:
        self.checks.append((what, ok, str(detail)))
        return ok

    def format(self) -> str:
        lines = [f"scenario {self.name}: {'PASS' if self.ok else 'FAIL'}"]
        lines += [f"  [{'ok' if ok else 'XX'}] {what} {detail}" for what, ok, detail in self.checks]
        return "\n".join(lines)


async def _until(predicate: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def _balance(kiosk: Kiosk, card: CardInfo) -> int | None:
    result = await kiosk.login_and_balance(card.number, card.password)
    return result.data.balance_fen if isinstance(result.data, BalanceResponse) else None


async def lost_card_declined_everywhere(ctx: ScenarioContext) -> ScenarioResult:
    """LOSS-1/LOSS-2: reported lost at a kiosk, the card is refused at once by a POS, a door and a
    water controller — online, and by each terminal's own deny list for offline decisions."""
    result = ScenarioResult("lost_card_declined_everywhere")
    kiosk = ctx.make(ctx.first(TerminalKind.KIOSK))
    pos = ctx.make(ctx.first(TerminalKind.POS))
    door = ctx.make(ctx.first(TerminalKind.DOOR))
    water = ctx.make(ctx.first(TerminalKind.WATER))
    assert isinstance(kiosk, Kiosk)
    assert isinstance(pos, Pos)
    assert isinstance(door, DoorReader)
    assert isinstance(water, WaterController)
    everyone: list[Terminal] = [kiosk, pos, door, water]
    async with kiosk, pos, door, water:
        await asyncio.gather(*(t.wait_synced(ctx.wait_s) for t in everyone))
        card = next((c for c in reversed(ctx.cards) if c.uid not in pos.deny), None)
        if not result.check("a card not yet on the deny list", card is not None):
            return result
        assert card is not None
        result.details["card"] = mask_card(card.uid)
        before = await door.access(card.uid)
        result.check("door lets the card in before the report", before.approved, before.code)
        lost = await kiosk.login_and_report_loss(card.number, card.password)
        if not result.check("kiosk loss report accepted", lost.approved, lost.message or ""):
            return result
        assert isinstance(lost.data, ReportLossResponse)
        result.details["denylist_version"] = lost.data.denylist_version
        result.details["terminals_applied"] = lost.data.terminals_applied
        result.check(
            "terminals_applied counts online terminals",
            (lost.data.terminals_applied or 0) >= 1,
            lost.data.terminals_applied,
        )
        sale = await pos.sale(card.uid, 100)
        result.check("POS declines it", sale.code == ErrorCode.CARD_LOST, sale.code)
        access = await door.access(card.uid)
        result.check("door refuses it", access.code == ErrorCode.CARD_LOST, access.code)
        hold = await water.hold(card.uid, 200)
        result.check("water refuses it", hold.code == ErrorCode.CARD_LOST, hold.code)
        applied = await _until(
            lambda: all(card.uid in t.deny for t in everyone), within_s=ctx.wait_s
        )
        result.check("every terminal's own deny list holds it (offline refusals)", applied)
        result.check(
            "all at the reported version or later",
            all(t.deny.version >= lost.data.denylist_version for t in everyone),
            {t.id: t.deny.version for t in everyone},
        )
    return result


async def pos_offline_backlog(ctx: ScenarioContext, sales: int = 5) -> ScenarioResult:
    """§8.3: a POS cut off from the gateway approves small sales offline under the hello limits,
    then, back online, uploads them in ``seq`` order exactly once (a second upload of the same
    sales comes back as ``duplicates``) and the purse is debited once per sale."""
    result = ScenarioResult("pos_offline_backlog")
    pos = ctx.make(ctx.first(TerminalKind.POS))
    kiosk = ctx.make(ctx.first(TerminalKind.KIOSK))
    assert isinstance(pos, Pos)
    assert isinstance(kiosk, Kiosk)
    async with pos, kiosk:
        await asyncio.gather(pos.wait_synced(ctx.wait_s), kiosk.wait_synced(ctx.wait_s))
        card = next((c for c in ctx.cards if c.uid not in pos.deny), None)
        if not result.check("a usable card", card is not None) or card is None:
            return result
        before = await _balance(kiosk, card)
        result.check("balance read at the kiosk", before is not None, before)
        assert pos.config is not None
        amount = max(1, min(pos.config.offline_max_amount_fen, 200))
        count = min(sales, pos.config.offline_max_daily_fen // amount)
        first_seq = pos.next_seq

        if ctx.gateway is not None:
            await ctx.gateway.stop()
        else:
            await pos.link.pause()
        result.check("POS is offline", await _until(lambda: not pos.online, ctx.wait_s))
        made = [await pos.sale(card.uid, amount) for _ in range(count)]
        seqs = [r.seq for r in made]
        result.check(
            "sales approved offline with consecutive seq",
            all(r.approved and r.mode is Mode.OFFLINE for r in made)
            and seqs == list(range(first_seq, first_seq + count)),
            seqs,
        )
        copy: list[OfflineSale] = list(pos.backlog)
        if ctx.gateway is not None:
            await ctx.gateway.start()
        else:
            pos.link.resume()
        drained = await _until(lambda: pos.online and not pos.backlog, ctx.wait_s)
        result.check("backlog uploaded after reconnecting", drained, len(pos.backlog))
        wanted = {s for s in seqs if s is not None}
        result.check(
            "every sale accepted once, none rejected",
            wanted <= pos.uploaded and not (wanted & set(pos.rejected)),
            sorted(pos.uploaded),
        )
        again = await pos.upload(copy) if copy else None
        if again is not None and isinstance(again.data, OfflineUploadResponse):
            result.check(
                "a second upload gets duplicates only",
                sorted(again.data.duplicates) == sorted(wanted) and not again.data.accepted,
                again.data,
            )
        await _until(lambda: kiosk.online, ctx.wait_s)
        after = await _balance(kiosk, card)
        if before is not None and after is not None:
            result.check(
                "purse debited exactly once per sale",
                before - after == amount * count,
                f"{before} -> {after}",
            )
        result.details.update(card=mask_card(card.uid), seqs=seqs, amount_fen=amount)
    return result


Scenario = Callable[[ScenarioContext], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, Scenario] = {
    "lost_card_declined_everywhere": lost_card_declined_everywhere,
    "pos_offline_backlog": pos_offline_backlog,
}
