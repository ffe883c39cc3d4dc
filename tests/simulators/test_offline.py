"""Store and forward (contract §8.3) against the real campus: a POS works offline while the gateway
is down or its own link is cut, then uploads its backlog exactly once, in seq order, no gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from simulators.scenarios import (
    ScenarioContext,
    lost_card_declined_everywhere,
    pos_offline_backlog,
)
from simulators.terminals import Mode, Pos
from tests.simulators.conftest import SimCampus

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]


async def until(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():
            await asyncio.sleep(0.02)


def context(sim: SimCampus, *, control: bool) -> ScenarioContext:
    return ScenarioContext(
        host=sim.host,
        port=sim.port,
        terminals=sim.all_creds(),
        cards=sim.cards(),
        gateway=sim if control else None,
        request_timeout_s=2.0,
        heartbeat_interval_s=1.0,
        wait_s=10.0,
    )


async def test_backlog_uploaded_exactly_once_after_a_gateway_restart(sim: SimCampus) -> None:
    async with asyncio.timeout(60):
        result = await pos_offline_backlog(context(sim, control=True), sales=6)
    assert result.ok, result.format()
    pos_id = sim.all_creds()[[c.kind.value for c in sim.all_creds()].index("pos")].id
    async with sim.campus.registry.read() as tx:
        rows = await tx.find("offline_sales", terminal_id=pos_id, order_by="seq")
        transfers = await tx.rows(
            "SELECT count(*) AS n FROM transfers WHERE terminal_id = :t AND kind = 'purchase'",
            {"t": pos_id},
        )
    assert [r["seq"] for r in rows] == list(range(1, 7))  # no gaps, each once
    assert {r["result"] for r in rows} == {"accepted"}
    assert transfers[0]["n"] == 6  # one debit per sale, none for the duplicate upload


async def test_backlog_uploaded_after_the_pos_itself_was_cut_off(sim: SimCampus) -> None:
    async with asyncio.timeout(60):
        result = await pos_offline_backlog(context(sim, control=False), sales=3)
    assert result.ok, result.format()


async def test_lost_card_declined_everywhere(sim: SimCampus) -> None:
    async with asyncio.timeout(60):
        result = await lost_card_declined_everywhere(context(sim, control=False))
    assert result.ok, result.format()
    assert result.details["terminals_applied"] >= 3


async def test_offline_limits_come_from_hello_and_lost_cards_are_refused(sim: SimCampus) -> None:
    """While the gateway is down: limits from the hello reply (2000 fen per sale by default), the
    card reported lost at the counter refused from the deny list held (LOSS-2)."""
    lost, fine = sim.campus.students[3], sim.campus.students[4]
    pos = Pos(sim.creds("pos-002"), sim.host, sim.port, heartbeat_interval_s=1.0)
    async with asyncio.timeout(60), pos:
        await pos.wait_synced()
        assert pos.config is not None
        assert pos.config.offline_max_amount_fen == 2000
        await sim.campus.center.cards.report_loss(
            sim.campus.admin, lost.serial, presented_id=lost.number
        )
        await until(lambda: lost.uid in pos.deny)
        await sim.stop()
        await until(lambda: not pos.online)
        refused = await pos.sale(lost.uid, 100)
        assert (refused.mode, refused.code) == (Mode.OFFLINE, "card_lost")
        assert (await pos.sale(fine.uid, 2001)).code == "offline_over_sale_limit"
        ok = await pos.sale(fine.uid, 2000)
        assert (ok.mode, ok.approved, ok.seq) == (Mode.OFFLINE, True, 1)
        await sim.start()
        await until(lambda: pos.online and not pos.backlog)
        assert pos.uploaded == {1}
        held = pos.deny.version
    assert await sim.campus.balance(fine) == 10_000 - 2000
    assert await sim.campus.balance(lost) == 10_000
    async with sim.campus.registry.read() as tx:
        (row,) = await tx.find("offline_sales", terminal_id="pos-002")
    # the sale names the deny list it was checked against (§8.3): it held the loss already
    assert (row["denylist_version"], row["result"], row["bearer"]) == (held, "accepted", "holder")
