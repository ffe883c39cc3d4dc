"""Durability cost: one commit per debit vs group commit, ``synchronous=FULL``, WAL.

Stdlib ``sqlite3`` in one thread on a migrated registry (the real schema: indexes, CHECK
constraints and the append-only triggers on ``transfers``). One debit has the gateway's shape:

1. conditional ``UPDATE accounts SET balance = balance - :amt WHERE id = :purse AND
   balance >= :amt`` (rowcount 0 = insufficient funds, a decline that is still recorded),
2. ``UPDATE`` of the merchant account (the balanced other leg),
3. ``INSERT`` into ``transfers``,
4. ``INSERT`` into ``idempotency`` (the stored reply).

Batch 1 commits each debit alone; batch B runs B debits in one ``BEGIN IMMEDIATE ... COMMIT``.
The baseline measured in the same run is the raw ``fsync`` rate of the same disk (4 KiB write +
fsync): a commit with ``synchronous=FULL`` in WAL mode costs at least one.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.fixture import bulk_scale_registry

REPLY = '{"v":1,"request_id":"%s","ok":true,"data":{"balance_after_fen":%d,"transfer_id":"%d"}}'


def fsync_rate(directory: Path, seconds: float) -> float:
    """4 KiB writes, each followed by fsync, per second."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * 4096
    count = 0
    try:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            os.pwrite(fd, block, 0)
            os.fsync(fd)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def _prepare(db: Path, purses: int) -> None:
    bulk_scale_registry(db, cards=purses, denied=0)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN")
        con.execute("UPDATE accounts SET balance = 1000000 WHERE kind = 'purse'")
        con.execute("INSERT INTO merchants (id, name) VALUES ('canteen1', '第一食堂')")
        con.execute(
            "INSERT INTO accounts (id, kind, holder_id, balance) "
            "VALUES ('merchant:canteen1', 'merchant', NULL, 0)"
        )
        con.execute("COMMIT")
    finally:
        con.close()


def run_batches(
    db: Path, batch: int, seconds: float, purses: int, tag: str, max_debits: int = 2_000_000
) -> dict[str, Any]:
    con = sqlite3.connect(db, isolation_level=None)
    rng = random.Random(batch)
    try:
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=10000",
        ):
            con.execute(pragma)
        (before,) = con.execute(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE kind = 'purse'"
        ).fetchone()
        debits = 0
        declined = 0
        commits = 0
        now = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline and debits < max_debits:
            con.execute("BEGIN IMMEDIATE")
            for _ in range(batch):
                debits += 1
                holder = rng.randrange(1, purses + 1)
                amount = 1
                rid = f"pos-0001-{tag}-{debits:08d}"
                cur = con.execute(
                    "UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?",
                    (amount, f"purse:{holder}", amount),
                )
                if cur.rowcount != 1:
                    declined += 1
                    reply = '{"ok":false}'
                else:
                    con.execute(
                        "UPDATE accounts SET balance = balance + ? WHERE id = 'merchant:canteen1'",
                        (amount,),
                    )
                    tid = con.execute(
                        "INSERT INTO transfers (kind, source, dest, amount, at, actor, card_id, "
                        "terminal_id, memo) VALUES ('purchase', ?, 'merchant:canteen1', ?, ?, "
                        "'terminal:pos-0001', ?, 'pos-0001', '')",
                        (f"purse:{holder}", amount, now, holder),
                    ).lastrowid
                    reply = REPLY % (rid, 0, tid or 0)
                con.execute(
                    "INSERT INTO idempotency (terminal_id, request_id, op, fingerprint, reply, at) "
                    "VALUES ('pos-0001', ?, 'purchase', ?, ?, ?)",
                    (rid, "0" * 64, reply, now),
                )
            con.execute("COMMIT")
            commits += 1
        elapsed = time.perf_counter() - started
        (after,) = con.execute(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE kind = 'purse'"
        ).fetchone()
    finally:
        con.close()
    return {
        "batch": batch,
        "debits": debits,
        "declined": declined,
        "commits": commits,
        "seconds": elapsed,
        "debits_per_s": debits / elapsed,
        "commits_per_s": commits / elapsed,
        "conserved": before - after == debits - declined,
    }


def run(
    workdir: Path, *, seconds: float, batches: tuple[int, ...] = (1, 10, 100)
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "durability.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    purses = 10_000
    _prepare(db, purses)
    floor = fsync_rate(workdir, min(2.0, seconds))
    points = [run_batches(db, batch, seconds, purses, tag=f"b{batch}") for batch in batches]
    base = points[0]["debits_per_s"] if points else 0.0
    for point in points:
        point["vs_batch1"] = point["debits_per_s"] / base if base else None
        point["vs_fsync_floor"] = point["commits_per_s"] / floor if floor else None
    return {"fsync_per_s": floor, "points": points, "purses": purses}
