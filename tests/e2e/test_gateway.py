"""The terminal gateway end to end: real Mosquitto, real SQLite, real MQTT v5 terminals."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import datetime, timedelta

import pytest

from protocol.wire import DenyDelta, DenySnapshot
from tests.e2e.campus import Campus

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def test_kiosk_loss_report_is_declined_at_pos_and_door(campus: Campus) -> None:
    """LOSS-1/LOSS-2: reported lost at a kiosk, refused at once at a POS and a door."""
    s = campus.students[0]
    async with (
        campus.terminal("kiosk-001") as kiosk,
        campus.terminal("pos-001", extra=("onecard/v1/blacklist/#",)) as pos,
        campus.terminal("door-001") as door,
    ):
        assert (
            await pos.request("hello", {"kind": "pos", "firmware": "t-1", "denylist_version": 0})
        )["ok"]
        ok = await pos.request("purchase", {"card": s.uid, "amount_fen": 500})
        assert ok["ok"], ok
        login = await kiosk.request("login", {"number": s.number, "password": s.password})
        assert login["ok"], login
        assert login["data"]["must_change_password"] is True
        session = login["data"]["session"]
        lost = await kiosk.request("report_loss", {"session": session})
        assert lost["ok"], lost
        version = lost["data"]["denylist_version"]
        assert version >= 1
        refused = await pos.request("purchase", {"card": s.uid, "amount_fen": 500})
        assert refused["ok"] is False
        assert refused["error"]["code"] == "card_lost"
        assert refused["error"]["rule"] == "LOSS-2"
        access = await door.request("access", {"card": s.uid})
        assert access["data"] == {"allowed": False, "reason": "card_lost"}
        # the POS got the change on the deny-list topic too, for its offline decisions
        deadline = asyncio.get_running_loop().time() + 5
        held: set[str] = set()
        while s.uid not in held:
            assert asyncio.get_running_loop().time() < deadline
            payload = await pos.next_other("onecard/v1/blacklist/")
            if b'"entries"' in payload:
                held = set(DenySnapshot.model_validate_json(payload).entries)
            else:
                delta = DenyDelta.model_validate_json(payload)
                held |= {c.card for c in delta.changes if c.kind.blocks}
        unlock = await kiosk.request("unlock", {"session": session})
        assert unlock["error"]["rule"] == "LOSS-3"
    assert await campus.balance(s) == 10_000 - 500


async def test_retried_purchase_debits_once_and_conflicts_are_refused(campus: Campus) -> None:
    s = campus.students[1]
    async with campus.terminal("pos-001") as pos:
        first = await pos.request(
            "purchase", {"card": s.uid, "amount_fen": 1234}, request_id="sale-1"
        )
        again = await pos.request(
            "purchase", {"card": s.uid, "amount_fen": 1234}, request_id="sale-1"
        )
        assert first == again
        assert first["data"]["balance_after_fen"] == 10_000 - 1234
        other = await pos.request("purchase", {"card": s.uid, "amount_fen": 1}, request_id="sale-1")
        assert other["error"]["code"] == "idempotency_conflict"
    assert await campus.balance(s) == 10_000 - 1234
    async with campus.registry.read() as tx:
        rows = await tx.find("transfers", terminal_id="pos-001", kind="purchase")
    assert len(rows) == 1


async def test_counter_loss_reaches_terminals_without_restart(campus: Campus) -> None:
    """A status change made at the counter (CLI/service) reaches the gateway and the terminals."""
    s = campus.students[2]
    async with campus.terminal("pos-002", extra=("onecard/v1/blacklist/delta",)) as pos:
        await campus.center.cards.report_loss(campus.admin, s.serial, presented_id=s.number)
        payload = await pos.next_other("blacklist/delta", timeout=5)
        delta = DenyDelta.model_validate_json(payload)
        assert any(c.card == s.uid and c.kind == "lost" for c in delta.changes)
        refused = await pos.request("purchase", {"card": s.uid, "amount_fen": 100})
        assert refused["error"]["code"] == "card_lost"


async def test_broker_restart_is_survived(campus: Campus) -> None:
    s = campus.students[3]
    campus.broker.restart()
    async with asyncio.timeout(15):
        while not campus.gateway.ready or campus.gateway.session is None:
            await asyncio.sleep(0.05)
        while True:
            try:
                async with campus.terminal("pos-001") as pos:
                    reply = await pos.request(
                        "purchase", {"card": s.uid, "amount_fen": 200}, timeout=2
                    )
                    break
            except (TimeoutError, OSError, Exception):
                await asyncio.sleep(0.2)
    assert reply["ok"], reply
    assert campus.gateway.metrics.mqtt_reconnects._value.get() >= 1


async def test_disabled_terminal_is_refused_at_once(campus: Campus) -> None:
    s = campus.students[0]
    async with campus.terminal("pos-002") as pos:
        assert (await pos.request("purchase", {"card": s.uid, "amount_fen": 100}))["ok"]
        await campus.center.terminals.set_enabled(campus.admin, "pos-002", False)
        reply = await pos.request("purchase", {"card": s.uid, "amount_fen": 100})
        assert reply["error"]["code"] == "terminal_disabled"


async def test_bad_input_gets_error_replies_and_the_gateway_keeps_serving(campus: Campus) -> None:
    s = campus.students[0]
    async with campus.terminal("pos-001") as pos:
        bad = await pos.send("purchase", b'{"v":1,"request_id":"x1","data":{"card":"zz"}}', "x1")
        assert bad["error"]["code"] == "malformed"
        # oversized: refused unread, so the reply cannot name the request (request_id null)
        big = await pos.send(
            "purchase", b'{"v":1,"request_id":"x2","pad":"' + b"a" * 20000 + b'"}', "None"
        )
        assert big["request_id"] is None
        assert big["error"]["code"] == "malformed"
        wrong_kind = await pos.request("access", {"card": s.uid})
        assert wrong_kind["error"]["code"] == "unsupported"
        amount = await pos.request("purchase", {"card": s.uid, "amount_fen": -5})
        assert amount["ok"] is False
        unknown_card = await pos.request("purchase", {"card": "04FFFFFFFFFFFF", "amount_fen": 5})
        assert unknown_card["error"]["code"] == "card_unknown"
        broke = await pos.request("purchase", {"card": s.uid, "amount_fen": 999_999})
        assert broke["error"]["code"] == "insufficient_funds"
        fine = await pos.request("purchase", {"card": s.uid, "amount_fen": 1})
        assert fine["ok"]


async def test_void_meal_water_and_offline_upload(campus: Campus) -> None:
    s = campus.students[1]
    async with campus.terminal("pos-001") as pos, campus.terminal("water-001") as water:
        sale = await pos.request("purchase", {"card": s.uid, "amount_fen": 800}, request_id="v-1")
        void = await pos.request("void", {"original_request_id": "v-1"})
        assert void["data"]["refunded_fen"] == 800
        assert void["data"]["balance_after_fen"] == sale["data"]["balance_after_fen"] + 800
        meal = await pos.request("meal", {"card": s.uid, "amount_fen": 600})
        assert meal["data"]["paid_by"] == "purse"
        held = await water.request("water_hold", {"card": s.uid, "amount_fen": 300})
        assert held["ok"], held
        settled = await water.request(
            "water_settle", {"hold_id": held["data"]["hold_id"], "used_fen": 120}
        )
        assert settled["data"]["charged_fen"] == 120
        assert settled["data"]["released_fen"] == 180
        sold = _ms(campus.clock.now()) - 60_000
        batch = [
            {"seq": 1, "card": s.uid, "amount_fen": 100, "at_ms": sold},
            {"seq": 2, "card": s.uid, "amount_fen": 100, "at_ms": sold + 1000},
            {"seq": 5, "card": s.uid, "amount_fen": 100, "at_ms": sold + 2000},
        ]
        up = await pos.request("offline_upload", {"sales": batch})
        assert up["data"]["accepted"] == [1, 2, 5]
        assert up["data"]["gaps"] == [{"first": 3, "last": 4}]
        again = await pos.request("offline_upload", {"sales": batch[:2]})
        assert again["data"]["duplicates"] == [1, 2]
    assert await campus.balance(s) == 10_000 - 600 - 120 - 300


async def test_offline_upload_settles_each_sale_by_the_rules(campus: Campus) -> None:
    """Issue 8, item 3, through the broker: a POS of canteen1 uploads sales for another merchant,
    a nonexistent one, over the per-sale limit, dated after year 9999, and for a card lost before
    the sale with the loss on its list; each is rejected and recorded, moves no money, and the
    good sales of the same batch are accepted (contract §8.3)."""
    good, lost = campus.students[2], campus.students[3]
    await campus.center.cards.report_loss(campus.admin, lost.serial, presented_id=lost.number)
    async with campus.registry.read() as tx:
        version = int((await tx.rows("SELECT max(version) AS v FROM deny_changes"))[0]["v"])
    sold = _ms(campus.clock.now()) + 1000  # after the loss report

    def sale(seq: int, card: str, amount: int = 500, **extra: object) -> dict[str, object]:
        return {
            "seq": seq,
            "card": card,
            "amount_fen": amount,
            "at_ms": sold + seq,
            "denylist_version": version,
            **extra,
        }

    batch = [
        sale(1, good.uid),
        sale(2, good.uid, merchant_id="canteen2"),
        sale(3, good.uid, merchant_id="ghost"),
        sale(4, good.uid, amount=40_000),
        sale(5, lost.uid, amount=2000),
        {**sale(6, good.uid), "at_ms": 253_402_300_800_000},
        sale(7, good.uid, amount=700, merchant_id="canteen1"),
    ]
    async with campus.terminal("pos-002") as pos:
        up = await pos.request("offline_upload", {"sales": batch})
        assert up["ok"], up
        assert up["data"]["accepted"] == [1, 7]
        assert up["data"]["rejected"] == [
            {"seq": 2, "code": "permission_denied"},
            {"seq": 3, "code": "permission_denied"},
            {"seq": 4, "code": "offline_limit"},
            {"seq": 5, "code": "card_lost"},
            {"seq": 6, "code": "clock_skew"},
        ]
        again = await pos.request("offline_upload", {"sales": batch})
        assert again["data"]["duplicates"] == [1, 2, 3, 4, 5, 6, 7]
    assert await campus.balance(good) == 10_000 - 500 - 700
    assert await campus.balance(lost) == 10_000
    async with campus.registry.read() as tx:
        assert await tx.balance("merchant:canteen2") == 0
        ghost = await tx.rows("SELECT id FROM accounts WHERE id = 'merchant:ghost'")
        recorded = await tx.find("offline_sales", terminal_id="pos-002", order_by="seq")
        total = await tx.rows("SELECT sum(balance) AS s FROM accounts")
    assert ghost == []
    assert [r["bearer"] for r in recorded] == [
        "holder",
        "merchant",
        "merchant",
        "merchant",
        "merchant",
        "merchant",
        "holder",
    ]
    assert int(total[0]["s"]) == 0
    table = await campus.center.reports.offline_disputes(
        campus.admin,
        campus.clock.now() - timedelta(hours=1),
        campus.clock.now() + timedelta(hours=1),
    )
    assert table.column("序号 / seq")[:-1] == [2, 3, 4, 5, 6]
    assert lost.uid not in str(table.rows)  # cards are masked


async def test_mosquitto_rr_balance_and_purchase(campus: Campus) -> None:
    """The contract document's mosquitto_rr commands work as written (ARCHITECTURE §3)."""
    s = campus.students[0]
    base = [
        "mosquitto_rr",
        "-V",
        "mqttv5",
        "-h",
        campus.broker.host,
        "-p",
        str(campus.broker.port),
        "-q",
        "1",
        "-W",
        "5",
    ]

    def rr(tid: str, op: str, body: dict[str, object]) -> dict[str, object]:
        cmd = [
            *base,
            "-i",
            tid,
            "-u",
            tid,
            "-P",
            campus.broker.password(tid),
            "-t",
            f"onecard/v1/t/{tid}/req/{op}",
            "-e",
            f"onecard/v1/t/{tid}/resp/{op}",
            "-m",
            json.dumps(body),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    purchase = await asyncio.to_thread(
        rr,
        "pos-001",
        "purchase",
        {"v": 1, "request_id": "pos-001-000043", "data": {"card": s.uid, "amount_fen": 1250}},
    )
    assert purchase["ok"] is True
    login = await asyncio.to_thread(
        rr,
        "kiosk-001",
        "login",
        {"v": 1, "request_id": "k-1", "data": {"number": s.number, "password": s.password}},
    )
    session = login["data"]["session"]  # type: ignore[index]
    balance = await asyncio.to_thread(
        rr, "kiosk-001", "balance", {"v": 1, "request_id": "k-2", "data": {"session": session}}
    )
    assert balance["data"]["balance_fen"] == 10_000 - 1250  # type: ignore[index]
    assert balance["data"]["recent"][0]["amount_fen"] == 1250  # type: ignore[index]
