"""FEE: fees, receipt books and reconciliation with finance, through the services on SQLite."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from protocol.cards.fees import FeeSchedule
from protocol.errors import ErrorCode, InvalidInput, OnecardError
from protocol.ledger import deposit, fee_income
from protocol.types import CardState, HolderCategory, Permission
from storage.records import Card, Holder
from storage.sql import SqlRegistry
from tests.conftest import Counter
from tests.gateway.services import helpers as h


async def lose_and_replace(c: Counter, who: Holder, card: Card) -> Card:
    """One temp-card replacement (30 yuan): the cheapest way to take the next receipt."""
    await h.lose(c, who, card.serial)
    return (await c.center.cards.replace(c.op, card.serial, presented_id=who.number)).card


@pytest.mark.asyncio
async def test_fee1_fees_collected_into_fee_income_deposits_held_apart(counter: Counter) -> None:
    """FEE-1: replacement fees and the ISS-4/EXC-2/TERM-5 fees go to fee income; temp-card
    deposits are collected too but held for the holder."""
    c = counter
    student, card = await h.student_with_temp(c)
    visitor, _ = await h.visitor_with_temp(c)
    card = await lose_and_replace(c, student, card)  # REP-2: 30
    await c.center.cards.exchange_for_changed_data(  # EXC-2: 50
        c.op,
        card.serial,
        presented_id=student.number,
        document_ref="教务处〔2026〕3号",
        changes={"class_name": "计科2026-2班"},
    )
    assert await h.balance(c, fee_income()) == 8000
    assert await h.balance(c, deposit(visitor.id)) == 3000
    items = [r["item"].split(" / ")[1] for r in await h.find(c, "receipts")]
    assert items == ["deposit", "replacement_temp", "exchange"]


@pytest.mark.asyncio
async def test_fee1_amounts_are_configurable_and_a_zero_fee_takes_no_receipt(
    registry: SqlRegistry, tmp_path: Path
) -> None:
    """FEE-1: the fee schedule is data: another amount is charged as configured; a waived fee
    (0) moves no money and uses no receipt number."""
    c = await h.make_counter(
        registry,
        tmp_path,
        books=[("F1", 1, 50)],
        fees=FeeSchedule(replacement_temp=2000, exchange=0),
    )
    student, card = await h.student_with_temp(c)
    card = await lose_and_replace(c, student, card)
    (receipt,) = await h.find(c, "receipts")
    assert receipt["amount"] == 2000
    result = await c.center.cards.exchange_for_changed_data(
        c.op,
        card.serial,
        presented_id=student.number,
        document_ref="教务处〔2026〕3号",
        changes={"class_name": "计科2026-2班"},
    )
    assert result.receipts == []
    assert await h.count(c, "receipts") == 1
    assert await h.balance(c, fee_income()) == 2000


@pytest.mark.asyncio
async def test_fee2_receipts_numbered_from_the_open_book_and_the_next_book_continues(
    registry: SqlRegistry, tmp_path: Path
) -> None:
    """FEE-2: every receipt names payer, item, amount, date and cashier; numbers run on from the
    open book; a used-up book is closed and the next one continues; no open book, no fee (and
    the procedure is not done)."""
    c = await h.make_counter(registry, tmp_path, books=[("S1", 101, 102), ("S2", 201, 202)])
    student, card = await h.student_with_temp(c)
    numbers = []
    for _ in range(4):
        card = await lose_and_replace(c, student, card)
        numbers.append((await h.find(c, "receipts"))[-1]["receipt_no"])
    assert numbers == [101, 102, 201, 202]
    books = {b["book_no"]: b for b in await h.find(c, "receipt_books")}
    assert books["S1"]["used_up_at"] is not None
    assert books["S2"]["used_up_at"] == c.clock.now()

    last = (await h.find(c, "receipts"))[-1]
    assert last["payer"] == student.name
    assert last["item"] == "补卡费（临时CPU卡） / replacement_temp"
    assert last["amount"] == 3000
    assert last["at"] == c.clock.now()
    assert last["cashier"] == c.op.name
    assert last["book_id"] == books["S2"]["id"]

    await h.lose(c, student, card.serial)
    with pytest.raises(OnecardError) as err:
        await c.center.cards.replace(c.op, card.serial, presented_id=student.number)
    assert (err.value.rule, err.value.code) == ("FEE-2", ErrorCode.OUT_OF_STOCK)
    assert (await h.card(c, card.serial)).state is CardState.LOST
    assert await h.balance(c, fee_income()) == 4 * 3000

    with pytest.raises(OnecardError) as err:
        await c.center.receipts.add_book(c.admin, "S3", 202, 250)
    assert (err.value.rule, err.value.code) == ("FEE-2", ErrorCode.DUPLICATE)
    with pytest.raises(InvalidInput) as bad:
        await c.center.receipts.add_book(c.admin, "S3", 300, 299)
    assert bad.value.rule == "FEE-2"
    await c.center.receipts.add_book(c.admin, "S3", 301, 350)
    card = (await c.center.cards.replace(c.op, card.serial, presented_id=student.number)).card
    assert (await h.find(c, "receipts"))[-1]["receipt_no"] == 301


@pytest.mark.asyncio
async def test_fee3_every_receipt_recorded_electronically_with_its_transfer(
    counter: Counter,
) -> None:
    """FEE-3: each receipt is on record (payer, date, number, amount, item, cashier) and tied to
    the ledger transfer that moved the money."""
    c = counter
    student, card = await h.student_with_temp(c)
    await h.visitor_with_temp(c)
    await lose_and_replace(c, student, card)
    receipts = await h.find(c, "receipts")
    assert [r["receipt_no"] for r in receipts] == [1, 2]
    for receipt in receipts:
        (transfer,) = await h.find(c, "transfers", id=receipt["transfer_id"])
        assert transfer["amount"] == receipt["amount"]
        assert transfer["at"] == receipt["at"]
        assert transfer["actor"] == receipt["cashier"]
        assert transfer["source"] == "cash:counter"
    joined = await h.rows(
        c,
        "SELECT sum(r.amount) AS s FROM receipts r JOIN transfers t ON t.id = r.transfer_id "
        "WHERE t.kind IN ('fee', 'deposit_in')",
    )
    assert joined[0]["s"] == 6000


@pytest.mark.asyncio
async def test_fee4_reconcile_only_after_10_used_up_books(
    registry: SqlRegistry, tmp_path: Path
) -> None:
    """FEE-4: after 10 receipt books are used up, money and books go back to finance: refused
    at 9, done at 10 with the books, receipt count and total; those books are not counted
    again."""
    books = [(f"R{i:02d}", i, i) for i in range(1, 11)] + [("R11", 11, 60)]
    c = await h.make_counter(registry, tmp_path, books=books)
    with pytest.raises(OnecardError) as err:
        await c.center.receipts.reconcile(c.admin)
    assert (err.value.rule, err.value.code) == ("FEE-4", ErrorCode.TOO_EARLY)

    student, card = await h.student_with_temp(c)
    for _ in range(9):
        card = await lose_and_replace(c, student, card)
    with pytest.raises(OnecardError) as err:
        await c.center.receipts.reconcile(c.admin)
    assert (err.value.rule, err.value.code) == ("FEE-4", ErrorCode.TOO_EARLY)
    assert "9" in err.value.message_en

    card = await lose_and_replace(c, student, card)
    card = await lose_and_replace(c, student, card)  # receipt 11, in the open book R11
    summary = await c.center.receipts.reconcile(c.admin)
    assert summary["books"] == [f"R{i:02d}" for i in range(1, 11)]
    assert (summary["receipts"], summary["total"]) == (10, 30000)
    (row,) = await h.find(c, "reconciliations")
    assert (row["books"], row["receipts"], row["total"]) == (10, 10, 30000)
    assert {
        b["reconciliation_id"] for b in await h.find(c, "receipt_books") if b["used_up_at"]
    } == {row["id"]}
    assert len(await h.audit(c, "receipts.reconcile")) == 1
    with pytest.raises(OnecardError) as err:
        await c.center.receipts.reconcile(c.admin)
    assert err.value.rule == "FEE-4"


@pytest.mark.asyncio
async def test_fee2_the_receipt_names_the_cashier_by_real_name(counter: Counter) -> None:
    """FEE-2/FEE-3: every receipt names the cashier (收款人) — the operator's real name from the
    account register (ACC-2), not the login."""
    c = counter
    await c.center.operators.create(
        c.admin,
        username="cashier07",
        real_name="周收费",
        department="智能卡中心",
        permissions=[Permission.CARD_HANDLING],
        approved_by="网管中心主任 张",
        application_ref="卡中心〔2026〕3号",
        initial_password="Init-2026-pass",
    )
    session = await c.center.operators.login("cashier07", "Init-2026-pass")
    await c.center.operators.change_password(session.token, "Init-2026-pass", "Better-pass-77")
    clerk = await c.center.operators.authenticate(session.token)
    assert (clerk.name, clerk.real_name) == ("cashier07", "周收费")
    registered = await c.center.cards.register_temporary_holder(
        clerk,
        name="访客甲",
        national_id="11010519491231002X",
        category=HolderCategory.VISITING_PROFESSOR,
        valid_through=date(2027, 6, 30),
        application_ref="申请表-1",
    )
    issued = await c.center.cards.issue_temp(clerk, registered.id)
    assert issued.receipts[0].cashier == "周收费"
    student, card = await h.student_with_temp(c)
    await h.lose(c, student, card.serial)
    replaced = await c.center.cards.replace(clerk, card.serial, presented_id=student.number)
    assert replaced.receipts[0].cashier == "周收费"
    cashiers = {r["cashier"] for r in await h.find(c, "receipts")}
    assert cashiers == {"周收费"}
