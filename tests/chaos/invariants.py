"""What must hold after every chaos scenario (issue 8, "make chaos").

(a) no acknowledged debit lost — every approval a terminal received (online, or late for a
    request that was in doubt) is a transfer in the registry with that id, terminal, request and
    amount; every offline sale the gateway acknowledged (accepted or duplicate) has its row;
(b) none doubled — at most one purchase transfer per ``(terminal, request_id)`` and per
    ``(terminal, offline seq)``; no terminal saw two transfers for one request;
(c) no debit without an approval the terminal received — every purchase transfer of a site
    terminal matches an approval that terminal received, or an offline sale it stored;
(d) conservation — every account equals its transfers in minus out, Σ balances = 0, no purse
    negative (:func:`tests.storage.test_ledger_conservation.check_conservation`);
(e) deny list converged — every terminal holds the registry's newest deny-list version and
    every card reported lost;
(f) gateway status truthful — the retained ``onecard/v1/gateway/status`` said ``offline``
    within a bound after the gateway stopped serving, and says ``online`` at the end while it
    serves.

Each check returns a :class:`Check` (never raises), so a driver can print every result.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gateway.services.base import Actor, Context, SystemClock
from gateway.services.center import CardCenter
from protocol.types import Permission
from simulators.terminals import Mode, Pos
from storage.sql import SqlRegistry
from tests.chaos.site import Site, StatusWatcher
from tests.storage.test_ledger_conservation import check_conservation

__all__ = [
    "Check",
    "check_acknowledged",
    "check_conservation_of",
    "check_deny_converged",
    "check_status",
    "money_checks",
]

DEBIT_OPS = frozenset({"purchase", "meal"})


@dataclass(frozen=True, slots=True)
class Check:
    key: str  # a .. f
    name: str
    ok: bool
    detail: str = ""

    @property
    def mark(self) -> str:
        return "PASS" if self.ok else "FAIL"


def _rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def _sample(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n})" if len(items) > n else "")


def _reply_transfer(reply: str) -> int | None:
    try:
        body = json.loads(reply)
    except ValueError:
        return None
    data = body.get("data") if isinstance(body, dict) and body.get("ok") else None
    transfer = data.get("transfer_id") if isinstance(data, dict) else None
    return int(transfer) if isinstance(transfer, str) and transfer.isdigit() else None


def check_acknowledged(site: Site, *, exclude: frozenset[str] = frozenset()) -> list[Check]:
    """(a), (b) and (c) from the terminals' records and the registry.

    A transfer is tied to its request by the stored reply (``idempotency``, committed in the
    same transaction as the transfer) or, for a sale made offline, by ``offline_sales``."""
    ids = {t.id for t in site.terminals} - exclude
    transfers = {
        int(str(r[0])): (str(r[1]), int(str(r[2])), str(r[3]))
        for r in _rows(
            site.db,
            "SELECT id, terminal_id, amount, memo FROM transfers "
            "WHERE kind = 'purchase' AND terminal_id IS NOT NULL",
        )
        if r[1] in ids
    }
    by_reply: dict[int, list[tuple[str, str]]] = {}
    for tid, rid, reply in _rows(
        site.db,
        "SELECT terminal_id, request_id, reply FROM idempotency WHERE op IN ('purchase', 'meal')",
    ):
        transfer = _reply_transfer(str(reply))
        if transfer is not None and tid in ids:
            by_reply.setdefault(transfer, []).append((str(tid), str(rid)))
    by_sale: dict[int, list[tuple[str, int]]] = {}
    sales: dict[tuple[str, int], tuple[str, int | None]] = {}
    for tid, seq, res, sale_transfer in _rows(
        site.db, "SELECT terminal_id, seq, result, transfer_id FROM offline_sales"
    ):
        key = (str(tid), int(str(seq)))
        sales[key] = (str(res), None if sale_transfer is None else int(str(sale_transfer)))
        if sale_transfer is not None and tid in ids:
            by_sale.setdefault(int(str(sale_transfer)), []).append(key)
    seen: dict[tuple[str, str], list[str]] = {}
    for _t, r in site.recorder.results:
        if r.request_id is not None:
            seen.setdefault((r.terminal_id, r.request_id), []).append(
                f"{r.mode.value}:{'approved' if r.approved else r.code}"
            )
    # what the terminals were told: (terminal, request id) -> (transfer id, amount)
    approved: dict[tuple[str, str], tuple[int, int | None]] = {}
    for _t, r in site.recorder.results:
        if (
            r.op in DEBIT_OPS
            and r.approved
            and r.mode in (Mode.ONLINE, Mode.LATE)
            and r.transfer_id is not None
            and r.request_id is not None
            and r.terminal_id in ids
        ):
            approved[r.terminal_id, r.request_id] = (int(r.transfer_id), r.amount_fen)
    # (a) lost
    lost: list[str] = []
    for (tid, rid), (transfer, amount) in approved.items():
        row = transfers.get(transfer)
        if row is None or row[0] != tid or (amount is not None and row[1] != amount):
            lost.append(f"{tid}/{rid}→#{transfer}")
    n_offline = 0
    for pos in site.pos:
        if pos.id not in ids:
            continue
        for seq in sorted(pos.uploaded):
            n_offline += 1
            sale = sales.get((pos.id, seq))
            if sale is None or (sale[0] == "accepted" and sale[1] not in transfers):
                lost.append(f"{pos.id}/offline#{seq}")
    # (b) doubled: one request or one offline sale behind two transfers
    doubled = [
        f"{t}/{r}" for t, r in Counter(k for v in by_reply.values() for k in v).items() if r > 1
    ]
    per_sale = Counter((t, m) for t, _a, m in transfers.values() if m.startswith("offline #"))
    doubled += [f"{t}/{m}×{n}" for (t, m), n in per_sale.items() if n > 1]
    doubled += [v for t in site.terminals if t.id in ids for v in t.violations]
    # (c) a debit the terminal never heard of
    stored = {(p.id, seq) for p in site.pos for seq in p.stored}
    heard = {(tid, rid, transfer) for (tid, rid), (transfer, _a) in approved.items()}
    unheard: list[str] = []
    for transfer in transfers:
        if transfer in by_sale:
            unheard += [f"{t}/offline#{q}" for t, q in by_sale[transfer] if (t, q) not in stored]
        elif transfer in by_reply:
            unheard += [
                f"{t}/{r}→#{transfer} (terminal saw: {', '.join(seen.get((t, r), ['nothing']))})"
                for t, r in by_reply[transfer]
                if (t, r, transfer) not in heard
            ]
        else:
            unheard.append(f"#{transfer} (no stored reply, no offline sale)")
    return [
        Check(
            "a",
            "no acknowledged debit lost",
            not lost,
            f"{len(approved)} online approvals received, {n_offline} offline sales acknowledged"
            + (f"; LOST {len(lost)}: {_sample(lost)}" if lost else ""),
        ),
        Check(
            "b",
            "no debit doubled",
            not doubled,
            f"{len(transfers)} purchase transfers"
            + (f"; DOUBLED: {_sample(doubled)}" if doubled else ""),
        ),
        Check(
            "c",
            "no debit without a received approval",
            not unheard,
            "every transfer matches an approval received or an offline sale stored"
            if not unheard
            else f"{len(unheard)} debits the terminal never heard of: {_sample(unheard)}",
        ),
    ]


def unsettled_check(site: Site, unsettled: list[str]) -> Check:
    """Part of (a)/(c): nothing left in doubt or waiting for upload at the end."""
    pending = [p for p in site.pos if p.unresolved_offline()]
    detail = "every request answered, every offline sale settled"
    if unsettled or pending:
        detail = f"still in doubt or not uploaded: {_sample(unsettled or [p.id for p in pending])}"
    return Check("a", "everything settled after recovery", not (unsettled or pending), detail)


async def check_conservation_of(db: Path) -> Check:
    """(d), twice: the ledger test's own checker and ``onecard ledger verify``'s service."""
    registry = await SqlRegistry.open(db)
    try:
        try:
            await check_conservation(registry)
        except AssertionError as exc:
            return Check("d", "conservation", False, f"FAILED: {exc}"[:300])
        center = CardCenter.build(Context(registry=registry, clock=SystemClock()))
        actor = Actor(name="chaos-verify", permissions=frozenset(Permission))
        report = await center.ledger.verify(actor)
    finally:
        await registry.close()
    if not report.ok:
        found = "; ".join(f"{f.check} {f.subject}: {f.message_en}" for f in report.findings[:3])
        return Check(
            "d", "conservation", False, f"ledger verify: {report.problems} problems: {found}"
        )
    return Check(
        "d",
        "conservation",
        True,
        f"{report.accounts} accounts, {report.transfers} transfers, "
        f"Σ balances = {report.total_balance} (test checker and ledger verify)",
    )


async def money_checks(
    site: Site, unsettled: list[str], exclude: frozenset[str] = frozenset()
) -> list[Check]:
    return [
        unsettled_check(site, unsettled),
        *check_acknowledged(site, exclude=exclude),
        await check_conservation_of(site.db),
    ]


async def check_deny_converged(
    site: Site, lost_serials: list[str], *, within_s: float = 30.0
) -> tuple[Check, float | None]:
    """(e): every running terminal holds the newest version and every lost card."""
    newest = int(str(_rows(site.db, "SELECT coalesce(max(version), 0) FROM deny_changes")[0][0]))
    uids = {
        str(r[0]).upper()
        for s in lost_serials
        for r in _rows(site.db, "SELECT uid FROM cards WHERE serial = ?", s)
        if r[0]
    }
    started = time.monotonic()
    deadline = started + within_s
    behind: list[str] = []
    while True:
        behind = [
            f"{t.id}@{t.deny.version}"
            for t in site.terminals
            if t.deny.version < newest or any(u not in t.deny for u in uids)
        ]
        if not behind or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    detail = f"{len(site.terminals)} terminals hold version {newest} ({len(uids)} lost cards)"
    if behind:
        detail = f"{len(behind)} terminals behind version {newest} after {within_s:.0f} s: {_sample(behind)}"
    return Check("e", "deny list converged", not behind, detail), (None if behind else took)


def check_status(
    watcher: StatusWatcher,
    down: list[tuple[float, float]],
    *,
    bound_s: float,
    serving_now: bool,
) -> tuple[Check, list[float]]:
    """(f): ``offline`` within ``bound_s`` of each window in which the gateway could not serve
    (shorter windows may end before the broker notices), ``online`` at the end while serving."""
    problems: list[str] = []
    lags: list[float] = []
    for start, end in down:
        seen = watcher.first("offline", start)
        if seen is not None and seen <= end + bound_s:
            lags.append(seen - start)
            if seen - start > bound_s:
                problems.append(f"offline only after {seen - start:.1f} s")
        elif end - start > bound_s:
            problems.append(f"still 'online' {end - start:.1f} s into an outage")
    final = watcher.state
    if serving_now and final != "online":
        problems.append(f"says {final!r} while the gateway serves")
    if not serving_now and final == "online":
        problems.append("says 'online' while the gateway does not serve")
    detail = (
        "; ".join(problems)
        if problems
        else (f"offline after {', '.join(f'{x:.1f}' for x in lags)} s; " if lags else "")
        + f"final: {final}"
    )
    return Check("f", "gateway status truthful", not problems, detail), lags


def check_offline_settlement(
    site: Site, terminals: list[Pos], after_loss: list[tuple[str, int]]
) -> Check:
    """(g), issue 8 item 3 and contract §8.3: every offline sale a POS stored is recorded once
    with its outcome; a refused sale moved no money; a sale dated after its card was reported
    lost (which the offline terminal could not know) is refused, or accepted only as a
    *disputed* sale with its reason recorded — never debited silently, never dropped."""
    columns = {str(r[1]) for r in _rows(site.db, "PRAGMA table_info(offline_sales)")}
    detail_col = "detail" if "detail" in columns else "NULL"
    rows = {
        (str(r[0]), int(str(r[1]))): (str(r[2]), r[3], r[4])
        for r in _rows(
            site.db,
            f"SELECT terminal_id, seq, result, transfer_id, {detail_col} FROM offline_sales",
        )
    }
    problems: list[str] = []
    for pos in terminals:
        for seq in sorted(pos.stored):
            row = rows.get((pos.id, seq))
            if row is None:
                problems.append(f"{pos.id}#{seq} not recorded")
            elif row[0] != "accepted" and row[1] is not None:
                problems.append(f"{pos.id}#{seq} refused ({row[0]}) but debited")
    outcomes: list[str] = []
    for pid, seq in after_loss:
        row = rows.get((pid, seq))
        if row is None:
            continue  # reported above
        if row[0] == "accepted":
            if not row[2]:
                problems.append(f"{pid}#{seq} (after the loss) debited without a recorded dispute")
            outcomes.append("accepted as disputed" if row[2] else "accepted silently")
        else:
            outcomes.append(f"refused {row[0]}")
    if not after_loss:
        problems.append("the terminal made no sale after the loss (scenario broken)")
    stored = sum(len(p.stored) for p in terminals)
    detail = f"{stored} sales recorded once each; sale after the loss: {', '.join(outcomes) or '-'}"
    return Check(
        "g",
        "offline sales settled by the rules (none silent, none dropped)",
        not problems,
        detail if not problems else f"{'; '.join(problems[:3])}; {detail}",
    )


def pos_of(site: Site, ids: set[str]) -> list[Pos]:
    return [p for p in site.pos if p.id in ids]
