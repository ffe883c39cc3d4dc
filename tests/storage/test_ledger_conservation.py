"""Ledger conservation on a real registry file (ARCHITECTURE.md §5).

Random sequences of money movements (TOP-1 top-ups, purchases, TOP-2 corrections, EXC-3
freeze/release, REF-2 cash-out, ISS-10/REF-3 deposits, FEE-1 fees) run against a real SQLite file;
after every sequence the sum of all balances is zero, every balance equals what came in minus what
went out, no purse/hold/deposit is negative, and a refused operation left nothing behind. A second
test runs two registries on one file against one purse at once: the conditional debit lets exactly
``balance // amount`` purchases through.

The async bodies are plain coroutines (:func:`apply_operations`, :func:`check_conservation`,
:func:`concurrent_purchases`) so the PostgreSQL contract test runs the very same checks.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from sqlalchemy import func, select

from protocol.errors import ErrorCode, InsufficientFunds, OnecardError, RuleViolation
from protocol.ledger import (
    NON_NEGATIVE_KINDS,
    TransferKind,
    TransferSpec,
    account_kind,
    cash,
    cash_out,
    correction,
    deposit_in,
    deposit_out,
    external,
    fee,
    freeze,
    purchase,
    purse,
    release,
    topup,
)
from storage import schema as s
from storage.sql import SqlRegistry

T0 = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)

Op = tuple[Any, ...]

holders = st.integers(min_value=1, max_value=3)
amounts = st.integers(min_value=1, max_value=3_000)

operations: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("topup"), holders, amounts, st.sampled_from([cash(), cash("kiosk1"), "app"])),
    st.tuples(st.just("purchase"), holders, st.sampled_from(["canteen1", "shop"]), amounts),
    st.tuples(st.just("purchase"), holders, st.sampled_from(["canteen1", "shop"]), amounts),
    st.tuples(st.just("correction"), st.integers(min_value=0, max_value=50), amounts),
    st.tuples(st.just("freeze"), holders, amounts),
    st.tuples(st.just("release"), holders, amounts),
    st.tuples(st.just("cash_out"), holders, amounts),
    st.tuples(st.just("deposit_in"), holders, amounts),
    st.tuples(st.just("deposit_out"), holders, amounts),
    st.tuples(st.just("fee"), amounts),
)


@dataclass
class Model:
    """What the registry must hold after the operations: a plain in-memory ledger."""

    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    purchases: list[tuple[int, TransferSpec]] = field(default_factory=list)
    corrected: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    applied: int = 0
    refused: int = 0


def _spec(op: Op, model: Model) -> tuple[TransferSpec | None, int | None]:
    """The transfer an operation asks for, and the sale it corrects (for TOP-2)."""
    kind = op[0]
    if kind == "topup":
        _, holder, amount, source = op
        return topup(holder, amount, external(source) if source == "app" else source), None
    if kind == "purchase":
        _, holder, shop, amount = op
        return purchase(holder, shop, amount), None
    if kind == "correction":
        _, index, amount = op
        if not model.purchases:
            return None, None
        sale_id, _sale = model.purchases[index % len(model.purchases)]
        return None, sale_id
    builders = {
        "freeze": freeze,
        "release": release,
        "cash_out": cash_out,
        "deposit_in": deposit_in,
        "deposit_out": deposit_out,
    }
    if kind in builders:
        _, holder, amount = op
        return builders[kind](holder, amount), None
    assert kind == "fee"
    return fee(op[1]), None


async def snapshot(reg: SqlRegistry) -> tuple[list[tuple[str, int]], int, int]:
    """Every account row, and how many transfers and audit rows exist."""
    async with reg.read() as tx:
        accounts = [
            (str(r[0]), int(r[1]))
            for r in await tx.conn.execute(
                select(s.accounts.c.id, s.accounts.c.balance).order_by(s.accounts.c.id)
            )
        ]
        transfers = int(
            (await tx.conn.execute(select(func.count()).select_from(s.transfers))).scalar_one()
        )
        audits = int(
            (await tx.conn.execute(select(func.count()).select_from(s.audit_log))).scalar_one()
        )
    return accounts, transfers, audits


async def apply_operations(
    reg: SqlRegistry, ops: list[Op], *, check_rollback: bool = True
) -> Model:
    """Run ``ops`` one transaction each; a refused op must leave the registry untouched."""
    model = Model()
    at = T0
    for number, op in enumerate(ops):
        at += timedelta(minutes=1)
        spec, sale_id = _spec(op, model)
        if spec is None and sale_id is None:
            continue  # a correction before any purchase: nothing to correct
        if sale_id is not None:
            sale = dict(model.purchases)[sale_id]
            expect_ok = op[2] <= sale.amount - model.corrected[sale_id]
        else:
            assert spec is not None
            source_kind = account_kind(spec.source)
            expect_ok = (
                source_kind not in NON_NEGATIVE_KINDS or model.balances[spec.source] >= spec.amount
            )
        before = await snapshot(reg) if check_rollback and not expect_ok else None
        refusal: OnecardError | None = None
        transfer_id = 0
        try:
            async with reg.transaction() as tx:
                # something written first in the same transaction, so a rollback is observable
                await tx.audit(at, "tester", f"op:{op[0]}", "ledger", number)
                if sale_id is not None:
                    original = await tx.get_transfer(sale_id)
                    already = await tx.referencing_total(sale_id)
                    assert already == model.corrected[sale_id]
                    original_spec = TransferSpec(
                        TransferKind(original.kind),
                        original.source,
                        original.dest,
                        original.amount,
                    )
                    spec = correction(original_spec, sale_id, op[2], already)
                assert spec is not None
                transfer_id = await tx.post(spec, at=at, actor="tester")
        except (InsufficientFunds, RuleViolation) as exc:
            refusal = exc
        if refusal is not None:
            assert not expect_ok, (op, dict(model.balances), refusal)
            expected = (
                ErrorCode.CORRECTION_EXCEEDS_ORIGINAL
                if sale_id is not None
                else ErrorCode.INSUFFICIENT_FUNDS
            )
            assert refusal.code is expected
            model.refused += 1
            if before is not None:
                assert await snapshot(reg) == before, "a refused operation left rows behind"
            continue
        assert expect_ok, (op, dict(model.balances))
        assert spec is not None
        model.applied += 1
        model.balances[spec.source] -= spec.amount
        model.balances[spec.dest] += spec.amount
        if spec.kind is TransferKind.PURCHASE:
            model.purchases.append((transfer_id, spec))
        if sale_id is not None:
            model.corrected[sale_id] += spec.amount
    return model


async def check_conservation(reg: SqlRegistry, model: Model | None = None) -> None:
    """Sum of balances is zero; each balance is in minus out; no protected balance below zero."""
    async with reg.read() as tx:
        rows = {
            str(r[0]): (str(r[1]), int(r[2]))
            for r in await tx.conn.execute(
                select(s.accounts.c.id, s.accounts.c.kind, s.accounts.c.balance)
            )
        }
        inflow = {
            str(r[0]): int(r[1])
            for r in await tx.conn.execute(
                select(s.transfers.c.dest, func.sum(s.transfers.c.amount)).group_by(
                    s.transfers.c.dest
                )
            )
        }
        outflow = {
            str(r[0]): int(r[1])
            for r in await tx.conn.execute(
                select(s.transfers.c.source, func.sum(s.transfers.c.amount)).group_by(
                    s.transfers.c.source
                )
            )
        }
        transfers = int(
            (await tx.conn.execute(select(func.count()).select_from(s.transfers))).scalar_one()
        )
        audits = int(
            (await tx.conn.execute(select(func.count()).select_from(s.audit_log))).scalar_one()
        )
    assert sum(balance for _kind, balance in rows.values()) == 0
    for account, (kind, balance) in rows.items():
        assert balance == inflow.get(account, 0) - outflow.get(account, 0), account
        assert kind == account_kind(account).value
        if account_kind(account) in NON_NEGATIVE_KINDS:
            assert balance >= 0, account
    # every account that moved money has a row
    assert set(inflow) | set(outflow) <= set(rows)
    if model is not None:
        assert {a: b for a, (_k, b) in rows.items() if b} == {
            a: b for a, b in model.balances.items() if b
        }
        assert transfers == model.applied
        assert audits == model.applied  # refused operations left no audit row either


def _run(coro_factory: Any) -> None:
    asyncio.run(coro_factory())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(operations, min_size=3, max_size=40))
def test_random_operations_conserve_money(ops: list[Op]) -> None:
    """Conservation, in-minus-out, non-negative balances and clean rollbacks on SQLite."""

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            reg = await SqlRegistry.open(Path(tmp) / "ledger.sqlite3", migrate=True)
            try:
                model = await apply_operations(reg, ops)
                await check_conservation(reg, model)
                note_event(f"refused: {model.refused > 0}; applied: {model.applied > 0}")
            finally:
                await reg.close()

    _run(body)


@pytest.mark.asyncio
async def test_refused_purchase_of_unknown_purse_creates_no_account(registry: SqlRegistry) -> None:
    """A purchase from a purse that never existed fails and leaves no account row behind."""
    before = await snapshot(registry)
    with pytest.raises(InsufficientFunds):
        async with registry.transaction() as tx:
            await tx.post(purchase(99, "shop", 1), at=T0, actor="tester")
    assert await snapshot(registry) == before
    async with registry.read() as tx:
        assert await tx.get("accounts", purse(99)) is None


async def concurrent_purchases(
    first: SqlRegistry, second: SqlRegistry, *, balance: int, amount: int, attempts: int
) -> tuple[int, int]:
    """``attempts`` purchases of ``amount`` against one purse through two registries at once."""
    holder = 4242
    async with first.transaction() as tx:
        await tx.post(topup(holder, balance, cash()), at=T0, actor="tester")

    async def buy(i: int) -> bool:
        reg = first if i % 2 else second
        try:
            async with reg.transaction() as tx:
                await tx.post(
                    purchase(holder, "canteen1", amount),
                    at=T0 + timedelta(seconds=i),
                    actor=f"pos{i % 7}",
                )
        except InsufficientFunds:
            return False
        return True

    # every task finishes before anything is judged or closed: a failure must not leave
    # transactions running on connections the caller is about to close
    outcomes = await asyncio.gather(*(buy(i) for i in range(attempts)), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    results = [bool(outcome) for outcome in outcomes]
    async with first.read() as tx:
        left = await tx.balance(purse(holder))
    return sum(results), left


@pytest.mark.asyncio
async def test_concurrent_writers_never_overdraw(tmp_path: Path) -> None:
    """Two registries on one file, 80 purchases at once: exactly balance // amount succeed.

    Sized so the slowest CI disk (every commit is an fsync) finishes well inside the writers'
    10 s lock wait: 200 attempts took the queue's tail past it on a loaded runner."""
    path = tmp_path / "shared.sqlite3"
    first = await SqlRegistry.open(path, migrate=True)
    second = await SqlRegistry.open(path)
    try:
        balance, amount = 3_000, 70
        ok, left = await concurrent_purchases(
            first, second, balance=balance, amount=amount, attempts=80
        )
        assert ok == balance // amount
        assert left == balance - ok * amount
        assert left >= 0
        await check_conservation(first)
    finally:
        await second.close()
        await first.close()
