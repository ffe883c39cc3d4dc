"""Scenarios that need the card counter: the counter is driven as an operator drives it, through
the ``onecard`` command line (``--json``; ``ONECARD_NOW`` moves business time), and the effect is
checked at the terminals over MQTT — black box at both ends, like a real site acceptance test.

They need a :class:`CounterCli` (an ``onecard`` executable and the environment naming the
registry and a logged-in operator session) in the scenario context.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from protocol.errors import ErrorCode
from protocol.wire import BalanceResponse, TerminalKind, mask_card
from simulators.scenarios import ScenarioContext, ScenarioResult
from simulators.terminals import DoorReader, Kiosk, Pos


@dataclass
class CounterCli:
    """``onecard --json ...`` as a subprocess, with business time set per call."""

    executable: str
    env: dict[str, str] = field(default_factory=dict)

    async def run(self, *args: str, at: datetime | None = None) -> tuple[int, dict[str, Any]]:
        env = {**os.environ, **self.env}
        env.pop("ONECARD_NOW", None)
        if at is not None:
            env["ONECARD_NOW"] = at.isoformat()
        proc = await asyncio.create_subprocess_exec(
            self.executable,
            "--json",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        text = out.decode().strip().splitlines()
        try:
            body = json.loads(text[-1]) if text else {}
        except ValueError:
            body = {"ok": False, "error": {"message": (out + err).decode()[-500:]}}
        return int(proc.returncode or 0), body


def _cli(ctx: ScenarioContext) -> CounterCli:
    counter = ctx.extra.get("counter")
    if not isinstance(counter, CounterCli):
        msg = "this scenario drives the counter: give the context a CounterCli"
        raise TypeError(msg)
    return counter


def _rule(body: dict[str, Any]) -> str | None:
    error = body.get("error") or {}
    return error.get("rule") if isinstance(error, dict) else None


async def _balance(kiosk: Kiosk, number: str, password: str) -> int | None:
    result = await kiosk.login_and_balance(number, password)
    return result.data.balance_fen if isinstance(result.data, BalanceResponse) else None


async def replacement_after_48h(ctx: ScenarioContext) -> ScenarioResult:
    """LOSS-1/2, REP-1, REP-5, LOSS-4: a card reported lost at the counter is refused at a POS;
    replacement is refused at 47 h and done at 48 h; the new card pays with the same balance
    and the old card is void."""
    result = ScenarioResult("replacement_after_48h")
    cli = _cli(ctx)
    card = ctx.cards[0]
    pos, kiosk = ctx.make(ctx.first(TerminalKind.POS)), ctx.make(ctx.first(TerminalKind.KIOSK))
    assert isinstance(pos, Pos)
    assert isinstance(kiosk, Kiosk)
    t0 = datetime.now(UTC)
    async with pos, kiosk:
        await asyncio.gather(pos.wait_synced(ctx.wait_s), kiosk.wait_synced(ctx.wait_s))
        before = await _balance(kiosk, card.number, card.password)
        code, body = await cli.run("card", "loss", card.uid, "--id-doc", card.number, at=t0)
        result.check("loss reported at the counter", code == 0, body.get("error"))
        sale = await pos.sale(card.uid, 100)
        result.check("POS refuses the lost card", sale.code == ErrorCode.CARD_LOST, sale.code)
        code, body = await cli.run(
            "card",
            "replace",
            card.uid,
            "--id-doc",
            card.number,
            "--kind",
            "temp",
            at=t0 + timedelta(hours=47),
        )
        result.check(
            "refused at 47 h (REP-1)", code == 2 and _rule(body) == "REP-1", body.get("error")
        )
        code, body = await cli.run(
            "card",
            "replace",
            card.uid,
            "--id-doc",
            card.number,
            "--kind",
            "temp",
            at=t0 + timedelta(hours=48),
        )
        result.check("replaced at 48 h", code == 0, body.get("error"))
        new_uid = str(((body.get("data") or {}).get("card") or {}).get("uid") or "")
        result.details["new_card"] = mask_card(new_uid) if new_uid else None
        after = await _balance(kiosk, card.number, card.password)
        result.check(
            "the balance follows the holder (REP-5)",
            after == before and after is not None,
            (before, after),
        )
        old = await pos.sale(card.uid, 100)
        result.check("the old card is void (LOSS-4)", old.code == ErrorCode.CARD_VOID, old.code)
        if new_uid:
            new = await pos.sale(new_uid, 100)
            result.check("the new card pays at the POS", new.approved, new.code)
    return result


async def faulty_exchange_freeze(ctx: ScenarioContext) -> ScenarioResult:
    """EXC-3/5: a faulty card's balance is frozen for 48 hours (the card is refused, the purse
    shows 0), the exchange is refused at 47 h and done at 48 h; the new card has the balance."""
    result = ScenarioResult("faulty_exchange_freeze")
    cli = _cli(ctx)
    card = ctx.cards[1]
    pos, kiosk = ctx.make(ctx.first(TerminalKind.POS)), ctx.make(ctx.first(TerminalKind.KIOSK))
    assert isinstance(pos, Pos)
    assert isinstance(kiosk, Kiosk)
    t0 = datetime.now(UTC)
    async with pos, kiosk:
        await asyncio.gather(pos.wait_synced(ctx.wait_s), kiosk.wait_synced(ctx.wait_s))
        before = await _balance(kiosk, card.number, card.password)
        code, body = await cli.run(
            "card", "fault", card.uid, "--id-doc", card.number, "--finding", "芯片无响应", at=t0
        )
        result.check("fault registered, balance frozen", code == 0, body.get("error"))
        frozen = await _balance(kiosk, card.number, card.password)
        result.check("the purse shows 0 while frozen", frozen == 0, frozen)
        sale = await pos.sale(card.uid, 100)
        result.check("POS refuses the frozen card", sale.code == ErrorCode.CARD_FROZEN, sale.code)
        code, body = await cli.run("card", "exchange", card.uid, at=t0 + timedelta(hours=47))
        result.check(
            "exchange refused at 47 h (EXC-3)",
            code == 2 and _rule(body) == "EXC-3",
            body.get("error"),
        )
        code, body = await cli.run("card", "exchange", card.uid, at=t0 + timedelta(hours=48))
        result.check("exchanged at 48 h", code == 0, body.get("error"))
        new_uid = str(((body.get("data") or {}).get("card") or {}).get("uid") or "")
        after = await _balance(kiosk, card.number, card.password)
        fee_free = before is not None and after is not None and after == before
        result.check("the frozen balance moved to the new card", fee_free, (before, after))
        if new_uid:
            new = await pos.sale(new_uid, 100)
            result.check("the new card pays at the POS", new.approved, new.code)
    return result


async def temp_card_expiry(ctx: ScenarioContext) -> ScenarioResult:
    """TERM-2/3: a visitor's temp card stops at the end of its validity (refused at the door once
    the scheduler ran), can be extended within 3 months, and is terminated automatically after."""
    result = ScenarioResult("temp_card_expiry")
    cli = _cli(ctx)
    door = ctx.make(ctx.first(TerminalKind.DOOR))
    assert isinstance(door, DoorReader)
    today = datetime.now(UTC)
    through = (today + timedelta(days=1)).date()
    national_id = str(ctx.extra.get("visitor_national_id", "11010519491231002X"))
    async with door:
        await door.wait_synced(ctx.wait_s)
        code, body = await cli.run(
            "holder",
            "register-temp",
            "--name",
            "Visiting Scholar",
            "--national-id",
            national_id,
            "--category",
            "visiting_professor",
            "--valid-through",
            through.isoformat(),
            "--application",
            "scenario",
            at=today,
        )
        if not result.check("visitor registered (ISS-8..11)", code == 0, body.get("error")):
            return result
        holder_id = (body.get("data") or {}).get("holder_id")
        code, body = await cli.run("card", "issue-temp", f"#{holder_id}", at=today)
        result.check("temp card issued with deposit (ISS-10)", code == 0, body.get("error"))
        uid = str(((body.get("data") or {}).get("card") or {}).get("uid") or "")
        ok = await door.access(uid)
        result.check("the door lets it in while valid", ok.approved, ok.code)
        expired_at = datetime.combine(through + timedelta(days=1), datetime.min.time(), UTC)
        code, body = await cli.run("scheduler", "run-due", at=expired_at + timedelta(days=1))
        result.check("the scheduler expired it (TERM-2)", code == 0, body.get("error"))
        refused = await door.access(uid)
        result.check(
            "the door refuses it: expired", refused.code == ErrorCode.CARD_EXPIRED, refused.code
        )
        late = expired_at + timedelta(days=100)
        code, body = await cli.run(
            "card",
            "extend",
            uid,
            "--through",
            (late + timedelta(days=30)).date().isoformat(),
            at=late,
        )
        result.check(
            "no extension after 3 months (TERM-3)",
            code == 2 and _rule(body) == "TERM-3",
            body.get("error"),
        )
        code, body = await cli.run("scheduler", "run-due", at=late)
        result.check("terminated automatically (TERM-3)", code == 0, body.get("error"))
        gone = await door.access(uid)
        result.check(
            "the door refuses it: terminated", gone.code == ErrorCode.CARD_TERMINATED, gone.code
        )
    return result


async def class_graduates(ctx: ScenarioContext) -> ScenarioResult:
    """TERM-4/5/6: a class graduates: balances are settled at the cash point, the monitor hands
    back the cards (one is missing and paid for), every student gets a clearance certificate,
    and every card of the class is refused at the door from then on."""
    result = ScenarioResult("class_graduates")
    cli = _cli(ctx)
    college = str(ctx.extra.get("college", ""))
    class_name = str(ctx.extra.get("class_name", ""))
    members = list(ctx.cards)
    door = ctx.make(ctx.first(TerminalKind.DOOR))
    assert isinstance(door, DoorReader)
    async with door:
        await door.wait_synced(ctx.wait_s)
        serials: list[str] = []
        for card in members:
            code, body = await cli.run("card", "show", card.uid)
            serials.append(str((body.get("data") or {}).get("serial", "")))
            code, body = await cli.run("money", "cashout", card.uid)
            settled = code == 0 or _rule(body) == "REF-2"  # REF-2: nothing to settle
            result.check(f"balance settled {mask_card(card.uid)}", settled, body.get("error"))
        missing = members[-1].number
        code, body = await cli.run(
            "graduate",
            "--college",
            college,
            "--class",
            class_name,
            "--returned",
            ",".join(serials[:-1]),
            "--missing-paid",
            missing,
        )
        report = body.get("data") or {}
        result.check("graduation done (TERM-5)", code == 0, body.get("error"))
        cleared = report.get("cleared") or []
        result.check(
            "a clearance certificate per student",
            len(cleared) == len(members),
            report.get("blocked"),
        )
        result.check(
            "one missing card paid for", report.get("missing_paid") == 1, report.get("missing_paid")
        )
        refused = [await door.access(card.uid) for card in members]
        result.check(
            "every card of the class is refused (TERM-1)",
            all(r.code == ErrorCode.CARD_TERMINATED for r in refused),
            [r.code for r in refused],
        )
    return result


COUNTER_SCENARIOS = {
    "class_graduates": class_graduates,
    "replacement_after_48h": replacement_after_48h,
    "faulty_exchange_freeze": faulty_exchange_freeze,
    "temp_card_expiry": temp_card_expiry,
}
