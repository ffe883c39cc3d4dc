"""The site under fuzz: a real SQLite registry, a private Mosquitto with per-terminal passwords
and the production ACL (:class:`tests.broker.PrivateBroker`), and the gateway as operators run it
(``onecard serve`` in its own process, production logging with the masking filter, /metrics).

The gateway runs out of process so the fuzzer's own CPU (hypothesis, aiomqtt clients) does not
share its event loop or GIL, and so what the oracle reads is the real log output and the real
/metrics page.
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

from gateway.mqtt.broker_files import ACL_NAME, mosquitto_password_hash
from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from protocol.cards.identity import default_password
from protocol.ledger import NON_NEGATIVE_KINDS, account_kind
from protocol.types import CardKind, HolderKind, Permission
from protocol.wire import TerminalKind
from protocol.wire.topics import ROOT
from storage.sql import SqlRegistry
from tests.broker import PrivateBroker, free_port
from tests.conftest import student_rows

ONECARD = str(Path(sys.executable).with_name("onecard"))
GOOD = "pos-good"
#: Fuzzing terminals, one or more of every kind; the well-behaved POS is GOOD.
FUZZERS: dict[str, tuple[TerminalKind, str | None]] = {
    "pos-fz1": (TerminalKind.POS, "canteen1"),
    "pos-fz2": (TerminalKind.POS, "canteen1"),
    "kiosk-fz1": (TerminalKind.KIOSK, None),
    "door-fz1": (TerminalKind.DOOR, None),
    "water-fz1": (TerminalKind.WATER, "water1"),
}
TOPUP_FEN = 10_000
#: A second account with the gateway's ACL that only listens to every ``resp/`` topic: the
#: broker's view of what the gateway published (tells "never published" from "not delivered").
SPY = "fz-spy"


@dataclass
class Person:
    holder_id: int
    name: str
    number: str
    national_id: str
    serial: str
    uid: str

    @property
    def password(self) -> str:
        return default_password(self.national_id)


@dataclass
class Site:
    directory: Path
    db: Path
    broker: PrivateBroker
    people: list[Person]
    passwords: dict[str, str]
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    started_at: float = 0.0

    @property
    def good_card(self) -> Person:
        return self.people[0]

    @property
    def fuzz_people(self) -> list[Person]:
        return self.people[1:]

    # --- the gateway process ------------------------------------------------------------------
    def start_gateway(self, client: str | None = None, timeout: float = 30.0) -> None:
        self.http_port = free_port()
        config = self.directory / "onecard.toml"
        mqtt_client = f'client = "{client}"\n' if client else ""
        config.write_text(
            f'db = "{self.db}"\nlog_level = "INFO"\n'
            f'[mqtt]\nhost = "{self.broker.host}"\nport = {self.broker.port}\n'
            f'username = "gateway"\npassword = "{self.passwords["gateway"]}"\n{mqtt_client}'
            f"[http]\nport = {self.http_port}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")}
        self.log_path = self.directory / "gateway.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [ONECARD, "serve", "--config", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"onecard serve exited:\n{self.log_text()[-3000:]}")
            if self.http_get("/readyz")[0] == 200:
                self.started_at = time.monotonic()
                return
            time.sleep(0.1)
        raise RuntimeError(f"onecard serve not ready in {timeout} s:\n{self.log_text()[-3000:]}")

    def http_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=5
            ) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except OSError:
            return 0, b""

    def rss_kib(self) -> int:
        """Resident set size of the gateway process (0 when unknown)."""
        if self.proc is None:
            return 0
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop_gateway(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                return None
        return proc.returncode

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.broker.stop()


async def build_site(directory: Path, *, students: int = 6) -> Site:
    """Registry with ``students`` holders (each a temp card with TOPUP_FEN), the terminals, a
    private broker with their passwords; the gateway is started by :meth:`Site.start_gateway`."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    db = directory / "registry.sqlite3"
    registry = await SqlRegistry.open(db, migrate=True)
    try:
        clock = FixedClock(datetime.now(UTC))
        center = CardCenter.build(Context(registry=registry, clock=clock))
        admin = Actor(name="fuzz", permissions=frozenset(Permission), operator_id=1)
        await center.stock.purchase(admin, CardKind.TEMP, 100, "2026")
        await center.stock.requisition(admin, CardKind.TEMP, 50, issued_by="科长", usage_note="fz")
        await center.receipts.add_book(admin, "B1", 1, 100)
        await center.merchants.add(admin, "canteen1", "第一食堂")
        await center.merchants.add(admin, "water1", "开水房")
        rows = student_rows(students)
        for row in rows:
            row.valid_until = date(2030, 7, 31)
        report = await center.holders.import_roster(admin, HolderKind.STUDENT, rows)
        people: list[Person] = []
        for holder_id, row in zip(report.holder_ids, rows, strict=True):
            issued = await center.cards.issue_temp(admin, holder_id)
            await center.money.topup(admin, issued.card.serial, TOPUP_FEN)
            assert issued.card.uid and row.student_number and row.national_id and row.name
            people.append(
                Person(
                    holder_id,
                    row.name,
                    row.student_number,
                    row.national_id,
                    issued.card.serial,
                    issued.card.uid,
                )
            )
        terminals = {**FUZZERS, GOOD: (TerminalKind.POS, "canteen1")}
        passwords = {tid: f"pw-{tid}-{os.getpid()}" for tid in terminals}
        passwords["gateway"] = f"pw-gateway-{os.getpid()}"
        passwords[SPY] = f"pw-spy-{os.getpid()}"
        for tid, (kind, merchant) in terminals.items():
            await center.terminals.add(
                admin,
                tid,
                kind,
                password_hash=mosquitto_password_hash(passwords[tid]),
                merchant_id=merchant,
            )
    finally:
        await registry.close()
    broker = PrivateBroker(directory / "broker", users=passwords)
    with (broker.directory / ACL_NAME).open("a") as acl:
        acl.write(
            f"\n# the fuzzer's spy: reads every reply\nuser {SPY}\ntopic read {ROOT}/t/+/resp/#\n"
        )
    broker.start()
    return Site(directory, db, broker, people, passwords)


def ledger_problems(db: Path) -> list[str]:
    """Conservation (ARCHITECTURE §5): Σ balances = 0, each balance = in - out, no protected
    balance below zero. Empty when it holds. Plain sqlite3, read-only: it checks the file as the
    gateway left it, whatever migration the code on disk expects."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = {
            str(a): (str(k), int(b))
            for a, k, b in conn.execute("SELECT id, kind, balance FROM accounts")
        }
        inflow = dict(conn.execute("SELECT dest, SUM(amount) FROM transfers GROUP BY dest"))
        outflow = dict(conn.execute("SELECT source, SUM(amount) FROM transfers GROUP BY source"))
    out: list[str] = []
    total = sum(balance for _kind, balance in rows.values())
    if total != 0:
        out.append(f"sum of balances is {total}, not 0")
    for account, (_kind, balance) in rows.items():
        moved = int(inflow.get(account, 0)) - int(outflow.get(account, 0))
        if balance != moved:
            out.append(f"{account}: balance {balance} != in - out {moved}")
        if account_kind(account) in NON_NEGATIVE_KINDS and balance < 0:
            out.append(f"{account}: negative balance {balance}")
    missing = (set(inflow) | set(outflow)) - set(rows)
    if missing:
        out.append(f"transfers to or from accounts without a row: {sorted(missing)[:5]}")
    return out


def purse_balance(db: Path, holder_id: int) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT balance FROM accounts WHERE id = ?", (f"purse:{holder_id}",)
        ).fetchone()
    return int(row[0]) if row else 0
