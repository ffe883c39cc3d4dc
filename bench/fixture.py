"""Benchmark fixtures: a seeded registry, a private Mosquitto and the gateway as its own process.

- :func:`seed_tap_registry` builds a registry through the real services (holders, temp cards
  with balances, POS terminals, a kiosk), like the demo does.
- :func:`bulk_scale_registry` loads a million cards straight into a migrated registry with stdlib
  ``sqlite3.executemany`` (a fixture, not a use case: the services would take hours).
- :class:`GatewayProcess` runs ``onecard serve --config ...`` as a child process, waits for
  ``/readyz`` and reads its RSS from ``/proc``; always bounded in time, always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from gateway.demo.seed import seed_campus
from gateway.mqtt.broker_files import mosquitto_password_hash
from gateway.services.base import Actor, Context, SystemClock
from gateway.services.center import CardCenter
from protocol.types import Permission
from protocol.wire import TerminalKind
from storage.sql import SqlRegistry
from tests.broker import PrivateBroker, free_port

LOOPBACK = "127.0.0.1"
GATEWAY_USER = "gateway"
PUBLISHER_USER = "benchpub"  # a second gateway-ACL account for the fan-out floor
ROOT = Path(__file__).resolve().parents[1]


def terminal_password(terminal_id: str) -> str:
    return f"pw-{terminal_id}"


def pos_ids(count: int) -> list[str]:
    return [f"pos-{i:04d}" for i in range(1, count + 1)]


def door_ids(count: int) -> list[str]:
    return [f"door-{i:04d}" for i in range(1, count + 1)]


KIOSK_ID = "kiosk-001"


@dataclass
class TapFixture:
    db: Path
    cards: list[dict[str, Any]]
    pos: list[str]
    kiosk: str = KIOSK_ID
    seconds: float = 0.0
    students: list[dict[str, Any]] = field(default_factory=list)


async def seed_tap_registry(db: Path, *, cards: int, pos: int) -> TapFixture:
    """A campus seeded through the services: ``cards`` students with temp cards and balances,
    ``pos`` POS terminals (merchant canteen1) and one kiosk."""
    started = time.perf_counter()
    db.parent.mkdir(parents=True, exist_ok=True)
    seeded, terminals = await seed_tap_campus(db, cards=cards, pos=pos)
    return TapFixture(
        db=db,
        cards=seeded,
        pos=terminals,
        seconds=time.perf_counter() - started,
    )


async def seed_tap_campus(
    db: Path | str, *, cards: int, pos: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """What :func:`seed_tap_registry` seeds, on any registry (bench/ha.py: PostgreSQL): the
    cards and the POS terminal ids."""
    registry = await SqlRegistry.open(db, migrate=True)
    try:
        ctx = Context(registry=registry, clock=SystemClock())
        center = CardCenter.build(ctx)
        admin = Actor(name="bench", permissions=frozenset(Permission), operator_id=1)
        seeded = await seed_campus(
            center,
            admin,
            students=cards,
            staff=0,
            visitors=0,
            terminals=0,
            password_hash=mosquitto_password_hash,
            new_password=lambda: "unused",
        )
        # several thousand taps per card must not run a purse dry: top everyone up
        await center.money.topup_batch(admin, [(c["serial"], 500_000) for c in seeded.cards])
        terminals = pos_ids(pos)
        for tid in terminals:
            await center.terminals.add(
                admin,
                tid,
                TerminalKind.POS,
                password_hash=mosquitto_password_hash(terminal_password(tid)),
                merchant_id="canteen1",
            )
        await center.terminals.add(
            admin,
            KIOSK_ID,
            TerminalKind.KIOSK,
            password_hash=mosquitto_password_hash(terminal_password(KIOSK_ID)),
        )
    finally:
        await registry.close()
    return seeded.cards, terminals


def ledger_state(db: Path, terminals: list[str] | None = None) -> dict[str, int]:
    """Purchase transfers (optionally from ``terminals``) and the sum of purse balances, read
    with stdlib sqlite3 (WAL: readers do not block the gateway)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        where = "kind = 'purchase'"
        args: list[Any] = []
        if terminals is not None:
            where += f" AND terminal_id IN ({','.join('?' * len(terminals))})"
            args = list(terminals)
        count, amount = con.execute(
            f"SELECT count(*), coalesce(sum(amount), 0) FROM transfers WHERE {where}",  # noqa: S608
            args,
        ).fetchone()
        (purses,) = con.execute(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE kind = 'purse'"
        ).fetchone()
        (idem,) = con.execute("SELECT count(*) FROM idempotency WHERE op = 'purchase'").fetchone()
        return {
            "purchases": int(count),
            "purchase_fen": int(amount),
            "purse_fen": int(purses),
            "idempotency": int(idem),
        }
    finally:
        con.close()


def start_broker(directory: Path, terminals: list[str]) -> PrivateBroker:
    """The production configuration (password file, ACL, NODELAY) on a loopback port."""
    users = {GATEWAY_USER: terminal_password(GATEWAY_USER)}
    users[PUBLISHER_USER] = terminal_password(PUBLISHER_USER)
    users.update({tid: terminal_password(tid) for tid in terminals})
    broker = PrivateBroker(directory, users=users, gateway_users=(GATEWAY_USER, PUBLISHER_USER))
    broker.start()
    return broker


def mosquitto_version() -> str:
    try:
        done = subprocess.run(
            ["mosquitto", "-h"],  # noqa: S607 (PATH lookup, like tests/broker.py)
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (done.stdout or done.stderr).splitlines()
    return first[0].replace("mosquitto version ", "") if first else "unknown"


# ----------------------------------------------------------------------------- gateway process


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback only)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) in KiB of ``pid`` and its live child processes together (the
    gateway's tap engine is one), from /proc."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    for child in _children(pid):
        for key, kib in rss_kib(child).items():
            out[key] = out.get(key, 0) + kib
    return out


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.update(int(c) for c in (task / "children").read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """user + system CPU of ``pid`` and its live child processes so far (from /proc): the
    gateway's tap engine (gateway/tapengine.py) is a child process of the gateway."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / ticks
    return own + sum(cpu_seconds(child) for child in _children(pid))


class GatewayProcess:
    """``onecard serve --config X`` as a child process on a private broker."""

    def __init__(
        self,
        directory: Path,
        db: Path,
        broker: PrivateBroker,
        *,
        poll_interval_ms: int = 50,
        applied_wait_ms: int = 300,
        log_level: str = "WARNING",
        mqtt_client: str | None = None,
        engine: str | None = None,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.config = directory / "onecard.toml"
        self.config.write_text(
            f'db = "{db}"\nlog_level = "{log_level}"\nscheduler_interval_s = 3600.0\n'
            f'[mqtt]\nhost = "{LOOPBACK}"\nport = {broker.port}\n'
            + (f'client = "{mqtt_client}"\n' if mqtt_client else "")
            + f'username = "{GATEWAY_USER}"\npassword = "{terminal_password(GATEWAY_USER)}"\n'
            f'[http]\nhost = "{LOOPBACK}"\nport = {self.http_port}\n'
            f"[denylist]\npoll_interval_ms = {poll_interval_ms}\n"
            f"applied_wait_ms = {applied_wait_ms}\n"
            + (f'[requests]\nengine = "{engine}"\n' if engine else "")
        )
        self.log_path = directory / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        onecard = Path(sys.executable).parent / "onecard"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")}
        self.started_at = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 (our own CLI)
                [str(onecard), "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds from :meth:`start` to the first ``/readyz`` 200."""
        deadline = time.perf_counter() + timeout
        url = f"http://{LOOPBACK}:{self.http_port}/readyz"
        while time.perf_counter() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_tail()}")
            if _http_status(url) == 200:
                return time.perf_counter() - self.started_at
            time.sleep(0.01)
        raise TimeoutError(f"gateway not ready in {timeout} s:\n{self.log_tail()}")

    def metrics(self) -> str:
        url = f"http://{LOOPBACK}:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.proc = None
        return proc.returncode


# ----------------------------------------------------------------------------- scale fixture


def _now_text() -> str:
    """A naive UTC timestamp as SQLAlchemy stores DateTime in SQLite."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _state(i: int, denied: int) -> str:
    return "lost" if i <= denied else "active"


def _uid(i: int) -> str:
    return f"5A{i:012X}"


def bulk_scale_registry(db: Path, *, cards: int, denied: int) -> dict[str, float]:
    """``cards`` holders + temp cards + purses and ``denied`` of the cards reported lost, in a
    freshly migrated registry, with ``executemany`` in one transaction per table."""
    started = time.perf_counter()
    db.parent.mkdir(parents=True, exist_ok=True)

    async def migrate() -> None:
        registry = await SqlRegistry.open(db, migrate=True)
        await registry.close()

    asyncio.run(migrate())
    migrated = time.perf_counter()
    now = _now_text()
    valid = date(2030, 7, 31).isoformat() + " 00:00:00.000000"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA foreign_keys=ON")
        step = 100_000
        con.execute("BEGIN")
        for lo in range(1, cards + 1, step):
            hi = min(cards, lo + step - 1)
            con.executemany(
                "INSERT INTO holders (id, kind, category, number, name, national_id, "
                "valid_until, status, failed_logins, created_at) "
                "VALUES (?, 'student', 'student', ?, ?, NULL, ?, 'active', 0, ?)",
                ((i, f"B{i:09d}", f"学生{i}", valid, now) for i in range(lo, hi + 1)),
            )
            con.executemany(
                "INSERT INTO cards (id, serial, uid, kind, holder_id, state, type_group, "
                "card_write_pending, valid_until, created_at, updated_at) "
                "VALUES (?, ?, ?, 'temp', ?, ?, 0, 0, ?, ?, ?)",
                (
                    (i, f"T{i:011d}", _uid(i), i, _state(i, denied), valid, now, now)
                    for i in range(lo, hi + 1)
                ),
            )
            con.executemany(
                "INSERT INTO accounts (id, kind, holder_id, balance) VALUES (?, 'purse', ?, 0)",
                ((f"purse:{i}", i) for i in range(lo, hi + 1)),
            )
        con.execute("COMMIT")
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO deny_changes (version, card_id, serial, uid, change, denied, at) "
            "VALUES (?, ?, ?, ?, 'report_loss', 1, ?)",
            ((i, i, f"T{i:011d}", _uid(i), now) for i in range(1, denied + 1)),
        )
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return {
        "migrate_s": migrated - started,
        "load_s": time.perf_counter() - migrated,
        "db_bytes": float(db.stat().st_size),
    }


def add_deny_change(db: Path, card_id: int) -> int:
    """Append one loss to the deny log from outside the gateway (it polls the log)."""
    con = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        con.execute("BEGIN IMMEDIATE")
        row = con.execute("SELECT coalesce(max(version), 0) + 1 FROM deny_changes").fetchone()
        version = int(row[0])
        now = _now_text()
        con.execute(
            "INSERT INTO deny_changes (version, card_id, serial, uid, change, denied, at) "
            "VALUES (?, ?, ?, ?, 'report_loss', 1, ?)",
            (version, card_id, f"T{card_id:011d}", _uid(card_id), now),
        )
        con.execute("UPDATE cards SET state = 'lost' WHERE id = ?", (card_id,))
        con.execute("COMMIT")
        return int(version)
    finally:
        con.close()
