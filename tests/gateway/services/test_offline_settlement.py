"""Offline sales settle by the rules of terminal contract §8.3 (issue 8, item 3).

Real parts: the registry on a SQLite file, the tap path's batching writer on the same file and
the terminal service deciding uploads as the gateway does; the card center reports loss through
its own service. Every rejected sale is recorded with its reason and moves no money; the ledger
stays balanced (Σ balances = 0).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from gateway.config import load_settings
from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.runtime import Gateway
from gateway.services.base import Context
from gateway.services.offline import SettlementRules
from gateway.services.taps import TerminalService
from protocol.wire import OPERATIONS, TerminalConfig, TerminalKind
from storage.records import Card, Holder, Row
from storage.tapwriter import SqliteTapWriter
from tests.conftest import Counter
from tests.gateway.services.helpers import balance, find, rows, student_with_temp

pytestmark = pytest.mark.asyncio

CONFIG = TerminalConfig(
    heartbeat_interval_s=30,
    offline_max_age_s=600,
    offline_max_amount_fen=2000,
    offline_max_daily_fen=5000,
    offline_max_count=500,
)
RULES = SettlementRules.from_config(CONFIG)
YEAR_10000_MS = 253_402_300_800_000  # datetime.fromtimestamp raises from here on (FIELD-NOTES)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass
class Pos:
    """A POS of canteen1 uploading through the gateway's terminal service."""

    c: Counter
    service: TerminalService
    holder: Holder
    card: Card
    uploads: int = 0

    @property
    def uid(self) -> str:
        assert self.card.uid is not None
        return self.card.uid

    def sale(self, seq: int, amount: int = 500, **extra: Any) -> dict[str, Any]:
        """A sale dated one minute ago by default, with the deny-list version held."""
        body: dict[str, Any] = {
            "seq": seq,
            "card": self.uid,
            "amount_fen": amount,
            "at_ms": ms(self.c.clock.now() - timedelta(minutes=1)),
        }
        body.update(extra)
        return {k: v for k, v in body.items() if v is not None}

    async def upload(self, *sales: dict[str, Any], terminal: str = "pos-001") -> dict[str, Any]:
        self.uploads += 1
        envelope = OPERATIONS["offline_upload"].request_envelope.model_validate(
            {"v": 1, "request_id": f"up-{self.uploads}", "data": {"sales": list(sales)}}
        )
        outcome = await self.service.handle(terminal, "offline_upload", envelope)
        reply = json.loads(outcome.payload)
        assert reply["ok"], reply
        data: dict[str, Any] = reply["data"]
        return data

    async def purse(self) -> int:
        return await balance(self.c, f"purse:{self.holder.id}")

    async def recorded(self, seq: int) -> Row:
        (row,) = await find(self.c, "offline_sales", terminal_id="pos-001", seq=seq)
        return row

    async def deny_version(self) -> int:
        (row,) = await rows(self.c, "SELECT coalesce(max(version), 0) AS v FROM deny_changes")
        return int(row["v"])

    async def report_loss(self) -> int:
        await self.c.center.cards.report_loss(
            self.c.op, self.card.serial, presented_id=self.holder.national_id
        )
        return await self.deny_version()


@pytest_asyncio.fixture
async def pos(counter: Counter) -> AsyncIterator[Pos]:
    c = counter
    await c.center.merchants.add(c.admin, "canteen1", "第一食堂")
    await c.center.merchants.add(c.admin, "canteen2", "第二食堂")
    for tid in ("pos-001", "pos-002"):
        await c.center.terminals.add(
            c.admin,
            tid,
            TerminalKind.POS,
            password_hash=mosquitto_password_hash(f"pw-{tid}"),
            merchant_id="canteen1",
        )
    who, card = await student_with_temp(c)
    await c.center.money.topup(c.admin, card.serial, 10_000)
    writer = SqliteTapWriter(c.path)
    writer.start()
    service = TerminalService(Context(registry=c.registry, clock=c.clock), CONFIG, writer)
    try:
        yield Pos(c, service, who, card)
        await assert_conserved(c)
    finally:
        await writer.close()


async def assert_conserved(c: Counter) -> None:
    """Σ balances = 0 and every account equals its transfers (the ledger invariant)."""
    (total,) = await rows(c, "SELECT coalesce(sum(balance), 0) AS s FROM accounts")
    assert int(total["s"]) == 0
    mismatched = await rows(
        c,
        "SELECT a.id FROM accounts a WHERE a.balance <>"
        " (SELECT coalesce(sum(amount), 0) FROM transfers WHERE dest = a.id)"
        " - (SELECT coalesce(sum(amount), 0) FROM transfers WHERE source = a.id)",
    )
    assert mismatched == []


async def offline_transfers(c: Counter) -> int:
    (row,) = await rows(c, "SELECT count(*) AS n FROM transfers WHERE request_id LIKE 'offline:%'")
    return int(row["n"])


# --- merchant binding -------------------------------------------------------------------------


async def test_sale_for_another_merchant_is_refused_and_recorded(pos: Pos) -> None:
    v = await pos.deny_version()
    up = await pos.upload(pos.sale(1, merchant_id="canteen2", denylist_version=v))
    assert up["accepted"] == []
    assert up["rejected"] == [{"seq": 1, "code": "permission_denied"}]
    assert await pos.purse() == 10_000
    assert await balance(pos.c, "merchant:canteen2") == 0
    row = await pos.recorded(1)
    assert (row["result"], row["bearer"], row["merchant_id"]) == (
        "permission_denied",
        "merchant",
        "canteen2",
    )
    assert row["transfer_id"] is None
    assert "canteen2" in row["detail"]


async def test_sale_for_a_nonexistent_merchant_creates_no_account(pos: Pos) -> None:
    up = await pos.upload(pos.sale(1, merchant_id="ghost-shop"))
    assert up["rejected"] == [{"seq": 1, "code": "permission_denied"}]
    assert await rows(pos.c, "SELECT id FROM accounts WHERE id = :a", a="merchant:ghost-shop") == []
    assert await pos.purse() == 10_000
    assert await offline_transfers(pos.c) == 0


async def test_sale_naming_its_own_merchant_is_accepted(pos: Pos) -> None:
    v = await pos.deny_version()
    up = await pos.upload(pos.sale(1, merchant_id="canteen1", denylist_version=v))
    assert up["accepted"] == [1]
    assert await balance(pos.c, "merchant:canteen1") == 500
    row = await pos.recorded(1)
    assert (row["result"], row["bearer"], row["detail"]) == ("accepted", "holder", None)


# --- card state at the sale time (LOSS-2) ------------------------------------------------------


async def test_lost_card_sold_after_the_loss_with_the_loss_on_the_terminals_list(pos: Pos) -> None:
    """The reported defect: 40,000 fen debited for a sale after the loss (LOSS-2)."""
    await pos.c.center.money.topup(pos.c.admin, pos.card.serial, 40_000)
    loss_version = await pos.report_loss()
    pos.c.clock.advance(minutes=30)
    up = await pos.upload(
        pos.sale(1, amount=2000, denylist_version=loss_version),
        pos.sale(2, amount=1500, denylist_version=loss_version + 0),
    )
    assert up["rejected"] == [
        {"seq": 1, "code": "card_lost"},
        {"seq": 2, "code": "card_lost"},
    ]
    assert await pos.purse() == 50_000
    assert (await pos.recorded(1))["bearer"] == "merchant"
    assert await offline_transfers(pos.c) == 0


async def test_sale_before_the_loss_report_is_the_holders(pos: Pos) -> None:
    """Sold offline at 10:04, reported lost at 10:05, uploaded at 10:35: the holder's sale."""
    v = await pos.deny_version()
    before = pos.sale(1, amount=800, denylist_version=v)  # dated a minute before the report
    await pos.report_loss()
    pos.c.clock.advance(minutes=30)
    up = await pos.upload(before)
    assert up["accepted"] == [1]
    assert await pos.purse() == 10_000 - 800


async def test_stale_terminal_cannot_charge_a_card_blocked_after_its_list(pos: Pos) -> None:
    """Blocked 20 minutes before the sale; the terminal's list predates the block and was
    older than offline_max_age_s (600 s) at the sale: the terminal should not have sold."""
    held = await pos.deny_version()
    await pos.report_loss()
    pos.c.clock.advance(minutes=21)
    up = await pos.upload(pos.sale(1, denylist_version=held), pos.sale(2))  # 2: no version
    assert up["rejected"] == [
        {"seq": 1, "code": "denylist_stale"},
        {"seq": 2, "code": "denylist_stale"},
    ]
    assert await pos.purse() == 10_000
    row = await pos.recorded(2)
    assert (row["bearer"], row["denylist_version"]) == ("merchant", None)


async def test_fresh_terminal_that_could_not_know_is_accepted_and_disputed(pos: Pos) -> None:
    """Blocked 2 minutes before the sale, list within its allowed age: the propagation window
    the contract allows. Debited, and listed for the card center as disputed."""
    held = await pos.deny_version()
    await pos.report_loss()
    pos.c.clock.advance(minutes=3)
    up = await pos.upload(pos.sale(1, denylist_version=held))
    assert up["accepted"] == [1]
    assert await pos.purse() == 10_000 - 500
    row = await pos.recorded(1)
    assert row["bearer"] == "holder"
    assert row["detail"].startswith("争议")
    report = await pos.c.center.reports.offline_disputes(
        pos.c.admin, pos.c.clock.now() - timedelta(days=1), pos.c.clock.now() + timedelta(days=1)
    )
    assert report.column("结果 / result")[0] == "已扣款，有争议 / debited, disputed (accepted)"
    assert report.column("卡片 / card")[0] == f"{pos.uid[:4]}…{pos.uid[-2:]}"
    assert report.column("承担方 / borne by")[0] == "持卡人 / holder"


# --- limits --------------------------------------------------------------------------------------


async def test_sale_over_the_offline_per_sale_limit(pos: Pos) -> None:
    v = await pos.deny_version()
    up = await pos.upload(pos.sale(1, amount=40_000, denylist_version=v))
    assert up["rejected"] == [{"seq": 1, "code": "offline_limit"}]
    assert await pos.purse() == 10_000
    assert "20.00" in (await pos.recorded(1))["detail"]


async def test_daily_offline_limit_per_card_and_terminal(pos: Pos) -> None:
    """5000 fen per card per campus day on one terminal: the third 2000 fen sale is refused;
    another terminal and the next campus day count on their own."""
    v = await pos.deny_version()
    up = await pos.upload(
        pos.sale(1, 2000, denylist_version=v),
        pos.sale(2, 2000, denylist_version=v),
        pos.sale(3, 2000, denylist_version=v),
        pos.sale(4, 1000, denylist_version=v),
    )
    assert up["accepted"] == [1, 2, 4]
    assert up["rejected"] == [{"seq": 3, "code": "offline_limit"}]
    other = await pos.upload(pos.sale(1, 2000, denylist_version=v), terminal="pos-002")
    assert other["accepted"] == [1]
    pos.c.clock.advance(days=1)
    up = await pos.upload(pos.sale(5, 2000, denylist_version=v))
    assert up["accepted"] == [5]
    assert await pos.purse() == 10_000 - 2000 - 2000 - 1000 - 2000 - 2000


async def test_insufficient_funds_is_recorded_for_the_card_center(pos: Pos) -> None:
    """10,000 fen spent over five days (at most 5,000 a day), then one more sale."""
    v = await pos.deny_version()
    up = await pos.upload(
        *[pos.sale(i, 2000, at_ms=ms(pos.c.clock.now() - timedelta(days=i))) for i in range(1, 6)],
        pos.sale(6, 2000, denylist_version=v),
    )
    assert up["accepted"] == [1, 2, 3, 4, 5]
    assert up["rejected"] == [{"seq": 6, "code": "insufficient_funds"}]
    assert (await pos.recorded(6))["bearer"] == "card_center"
    assert await pos.purse() == 0


async def test_unknown_card_is_recorded(pos: Pos) -> None:
    up = await pos.upload({**pos.sale(1), "card": "04FFFFFFFFFFFF"})
    assert up["rejected"] == [{"seq": 1, "code": "card_unknown"}]
    assert (await pos.recorded(1))["bearer"] == "merchant"


# --- the clock -----------------------------------------------------------------------------------


async def test_absurd_sale_times_never_block_the_batch(pos: Pos) -> None:
    """An at_ms after year 9999 used to answer ``internal`` for ever and block the batch."""
    v = await pos.deny_version()
    now = pos.c.clock.now()
    up = await pos.upload(
        pos.sale(1, denylist_version=v),
        pos.sale(2, at_ms=YEAR_10000_MS, denylist_version=v),
        pos.sale(3, at_ms=ms(now + timedelta(hours=1)), denylist_version=v),
        pos.sale(4, at_ms=ms(now - timedelta(days=8)), denylist_version=v),
        pos.sale(5, at_ms=0, denylist_version=v),
        pos.sale(6, at_ms=ms(now + timedelta(minutes=4)), denylist_version=v),
    )
    assert up["accepted"] == [1, 6]
    assert up["rejected"] == [
        {"seq": 2, "code": "clock_skew"},
        {"seq": 3, "code": "clock_skew"},
        {"seq": 4, "code": "too_late"},
        {"seq": 5, "code": "too_late"},
    ]
    row = await pos.recorded(2)
    assert (row["sold_at"], row["at_ms"]) == (None, YEAR_10000_MS)
    assert await pos.purse() == 10_000 - 1000


# --- exactly once --------------------------------------------------------------------------------


async def test_duplicates_stay_exactly_once_for_accepted_and_rejected_sales(pos: Pos) -> None:
    v = await pos.deny_version()
    batch = [pos.sale(1, denylist_version=v), pos.sale(2, merchant_id="canteen2")]
    first = await pos.upload(*batch)
    assert (first["accepted"], first["rejected"]) == (
        [1],
        [{"seq": 2, "code": "permission_denied"}],
    )
    again = await pos.upload(*batch)
    assert (again["accepted"], again["duplicates"], again["rejected"]) == ([], [1, 2], [])
    assert await offline_transfers(pos.c) == 1
    assert len(await find(pos.c, "offline_sales", terminal_id="pos-001")) == 2
    assert await pos.purse() == 10_000 - 500


async def test_the_gateway_passes_the_configured_clock_window(counter: Counter) -> None:
    settings = load_settings(
        None,
        db=str(counter.path),
        offline={"settle_max_age_s": 3600, "settle_clock_tolerance_s": 60},
    )
    writer = SqliteTapWriter(counter.path)  # never started: only the wiring is checked
    gateway = Gateway(
        settings, Context(registry=counter.registry, clock=counter.clock), executor=writer
    )
    rules = gateway.service.settlement
    assert (rules.max_sale_age, rules.clock_tolerance) == (timedelta(hours=1), timedelta(minutes=1))
    assert rules.max_list_age == timedelta(seconds=settings.denylist.max_offline_age_s)
