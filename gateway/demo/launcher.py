"""`onecard demo`: a private Mosquitto, the gateway on a fresh SQLite registry seeded with a
synthetic campus, and a simulated fleet with its live dashboard — all on this machine.

``--registry postgres --gateways N`` (issue 12) seeds a fresh database ``onecard_demo`` on the
local PostgreSQL (``ONECARD_DEMO_PG``, default ``postgresql://postgres@127.0.0.1:5432``) and
runs N gateways in one MQTT shared-subscription group, each with its own broker account and
/metrics; one of them leads (deny list, scheduler).

Processes: mosquitto (files rendered from the registry, like production), ``onecard serve``
(the gateway), ``onecard web`` (the cardholder portal; its address and a demo account are
printed), ``python -m simulators fleet`` (black-box terminals speaking the contract). Ctrl-C
(or the end of ``--duration``) stops the fleet first (it prints its summary), then the portal,
the gateway (SIGTERM: drain, retained ``offline``), then the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.demo.seed import seed_campus
from gateway.mqtt import broker_files as bf
from gateway.services.base import Actor, Context, SystemClock
from gateway.services.center import CardCenter
from protocol.types import Permission
from storage.sql import SqlRegistry

DEMO_OPERATOR = "counter1"


@dataclass(frozen=True)
class DemoSize:
    students: int = 20_000
    staff: int = 2_000
    visitors: int = 200
    terminals: int = 200
    #: "sqlite" (``make demo``) or "postgres"; several gateways need PostgreSQL
    registry: str = "sqlite"
    gateways: int = 1


@dataclass
class DemoPaths:
    root: Path

    registry: str = "sqlite"

    @property
    def db(self) -> Path | str:
        if self.registry == "postgres":
            return f"{_pg_server()}/{PG_DEMO_DATABASE}"
        return self.root / "onecard.sqlite3"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def terminals(self) -> Path:
        return self.root / "terminals.json"

    @property
    def cards(self) -> Path:
        return self.root / "cards.json"

    @property
    def config(self) -> Path:
        return self.root / "onecard.toml"


PG_DEMO_DATABASE = "onecard_demo"


def _pg_server() -> str:
    return os.environ.get("ONECARD_DEMO_PG", "postgresql://postgres@127.0.0.1:5432").rstrip("/")


async def _fresh_pg_database() -> None:
    """Drop and create ``onecard_demo`` (the demo's own database, nothing else is touched)."""
    import asyncpg

    conn = await asyncpg.connect(f"{_pg_server()}/postgres", timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{PG_DEMO_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{PG_DEMO_DATABASE}"')
    finally:
        await conn.close()


def gateway_names(count: int) -> list[str]:
    """Broker accounts of the demo's gateways: ``gateway`` alone, or ``gw1`` … ``gwN``."""
    return ["gateway"] if count == 1 else [f"gw{i}" for i in range(1, count + 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_secret(path: Path, data: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, ensure_ascii=False)


async def prepare(paths: DemoPaths, size: DemoSize, *, gateway_password: str) -> None:
    """A fresh registry seeded through the services, and the fleet's credential files."""
    if paths.root.exists():
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True)
    started = time.perf_counter()
    if size.registry == "postgres":
        await _fresh_pg_database()
    registry = await SqlRegistry.open(paths.db, migrate=True)
    try:
        center = CardCenter.build(Context(registry=registry, clock=SystemClock()))
        actor = Actor(name="demo-seed", permissions=frozenset(Permission))
        seeded = await seed_campus(
            center,
            actor,
            students=size.students,
            staff=size.staff,
            visitors=size.visitors,
            terminals=size.terminals,
            password_hash=bf.mosquitto_password_hash,
            new_password=bf.new_password,
        )
        async with registry.read() as tx:
            rows = await tx.find("terminals", order_by="id")
        # the operator console's demo account (issue 11): every permission, and like any new
        # account it must change this password at the first login (ACC-3)
        operator_password = f"Desk-{secrets.token_urlsafe(6)}-9x"
        await center.operators.bootstrap(DEMO_OPERATOR, "演示操作员", operator_password)
    finally:
        await registry.close()
    # the portal's demo account (README) stays out of the fleet: no random loss report hits it
    demo_account = seeded.cards.pop(0)
    # the conformance kit's own terminals and cards (README: python -m conformance gateway
    # --demo var/demo-live) stay out of the fleet too: the kit would take over their sessions
    kit_terminals: dict[str, dict[str, Any]] = {}
    per_kind = Counter(str(t["kind"]) for t in seeded.terminals)
    for entry in list(seeded.terminals):  # the fleet keeps at least one of each kind
        if entry["kind"] not in kit_terminals and per_kind[entry["kind"]] > 1:
            kit_terminals[entry["kind"]] = {"id": entry["id"], "password": entry["password"]}
            seeded.terminals.remove(entry)
    kit_cards = [seeded.cards.pop(0) for _ in range(min(8, len(seeded.cards) // 2))]
    _write_secret(paths.root / "conformance.json", {"terminals": kit_terminals, "cards": kit_cards})
    _write_secret(paths.terminals, seeded.terminals)
    _write_secret(paths.cards, seeded.cards)
    _write_secret(paths.root / "demo-account.json", demo_account)
    _write_secret(
        paths.root / "demo-operator.json",
        {"username": DEMO_OPERATOR, "password": operator_password},
    )
    console_mqtt = bf.new_password()
    accounts = [_Account(r["id"], bool(r["enabled"]), r["mqtt_password_hash"]) for r in rows]
    names = gateway_names(size.gateways)
    # the first gateway's password is the one given; the others get their own
    passwords = {n: gateway_password if i == 0 else bf.new_password() for i, n in enumerate(names)}
    entries = bf.password_entries(
        accounts,
        {
            **{n: bf.mosquitto_password_hash(pw) for n, pw in passwords.items()},
            "console": bf.mosquitto_password_hash(console_mqtt),
        },
    )
    port = free_port()
    as_root = os.geteuid() == 0
    bf.write_broker_files(
        paths.broker,
        entries=entries,
        gateway_users=names,
        monitor_users=["console"],
        port=port,
        persistence=False,
        persistence_dir=None,
        log_dest=paths.broker / "mosquitto.log",
        run_as="root" if as_root else None,
        owner=None,
    )
    http_ports = [free_port() for _ in names]
    http_port = http_ports[0]
    metrics_urls = ", ".join(f'"http://127.0.0.1:{p}/metrics"' for p in http_ports)
    # several gateways: one secret share group (a terminal must not be able to join it)
    group = f'shared_group = "onecard-{secrets.token_hex(6)}"\n' if len(names) > 1 else ""
    web_port = free_port()
    pay_port = free_port()  # the sandbox payment provider (online top-up, TOP-1)
    console_port, agent_port = free_port(), free_port()
    key_file = paths.root / "payments.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:  # the provider's signing key: a file, never the registry
        fh.write(bf.new_password())
    paths.config.write_text(
        f'db = "{paths.db}"\nlog_level = "WARNING"\nscheduler_interval_s = 5.0\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nusername = "{names[0]}"\n'
        f'password = "{gateway_password}"\nclient_id = "{names[0]}"\n{group}'
        f"[http]\nport = {http_port}\n"
        f'[web]\nhost = "127.0.0.1"\nport = {web_port}\ncookie_secure = false\n'
        f"gateway_metrics_urls = [{metrics_urls}]\n"
        f'[payments]\nprovider = "sandbox"\napi_url = "http://127.0.0.1:{pay_port}"\n'
        f'notify_url = "http://127.0.0.1:{web_port}/pay/notify/sandbox"\n'
        f'merchant_id = "onecard-demo"\nkey_file = "{key_file}"\n'
        f'[console]\nhost = "127.0.0.1"\nport = {console_port}\ncookie_secure = false\n'
        f'origin = "http://127.0.0.1:{console_port}"\n'
        f'reader_agent_url = "http://127.0.0.1:{agent_port}"\n'
        f'mqtt_username = "console"\nmqtt_password = "{console_mqtt}"\n'
        f"gateway_metrics_urls = [{metrics_urls}]\n"
    )
    for name, http in zip(names[1:], http_ports[1:], strict=True):
        # the other gateways: the same registry and broker, their own account and /metrics
        (paths.root / f"{name}.toml").write_text(
            f'db = "{paths.db}"\nlog_level = "WARNING"\nscheduler_interval_s = 5.0\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nusername = "{name}"\n'
            f'password = "{passwords[name]}"\nclient_id = "{name}"\n{group}'
            f"[http]\nport = {http}\n"
        )
    (paths.root / "ports.json").write_text(
        json.dumps(
            {
                "mqtt": port,
                "http": http_port,
                "gateways_http": http_ports,
                "web": web_port,
                "pay": pay_port,
                "console": console_port,
            }
        )
    )
    print(  # noqa: T201
        f"已生成演示校园 seeded campus: {len(seeded.cards)} cards, "
        f"{len(seeded.terminals)} terminals in {time.perf_counter() - started:.1f}s  ({paths.root})"
    )


@dataclass(frozen=True)
class _Account:
    id: str
    enabled: bool
    mqtt_password_hash: str


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    msg = f"nothing listening on 127.0.0.1:{port} after {timeout}s"
    raise TimeoutError(msg)


def _wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the gateway exited with {proc.returncode}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310
            if resp.status == 200:
                return
        time.sleep(0.1)
    msg = f"gateway not ready after {timeout}s"
    raise TimeoutError(msg)


def _stop(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20
) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_demo(
    root: Path, size: DemoSize, *, duration: float | None, dashboard: bool, seed: int = 1
) -> int:
    """Set up, run until Ctrl-C or ``duration``, stop cleanly; the fleet's exit code."""
    paths = DemoPaths(root, registry=size.registry)
    gateway_password = bf.new_password()
    asyncio.run(prepare(paths, size, gateway_password=gateway_password))
    ports = json.loads((paths.root / "ports.json").read_text())
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")}
    broker = gateway = fleet = web = pay = console = None
    others: list[subprocess.Popen[bytes]] = []
    code = 1
    try:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        broker = subprocess.Popen(  # noqa: S603 - our own files
            [mosquitto, "-c", str(paths.broker / bf.CONF_NAME)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(paths.broker / "stderr.log").open("wb"),
            start_new_session=True,  # stopped by us after the fleet and the gateway
        )
        _wait_port(ports["mqtt"], 10)
        gateway_log = (paths.root / "gateway.log").open("wb")
        gateway = subprocess.Popen(  # noqa: S603
            [str(bin_dir / "onecard"), "serve", "--config", str(paths.config)],
            env=env,
            stdout=gateway_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to the fleet; we stop the gateway ourselves
        )
        _wait_ready(f"http://127.0.0.1:{ports['http']}/readyz", 30, gateway)
        for name, http in zip(
            gateway_names(size.gateways)[1:], ports["gateways_http"][1:], strict=True
        ):
            others.append(
                subprocess.Popen(  # noqa: S603
                    [
                        str(bin_dir / "onecard"),
                        "serve",
                        "--config",
                        str(paths.root / f"{name}.toml"),
                    ],
                    env=env,
                    stdout=(paths.root / f"{name}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            _wait_ready(f"http://127.0.0.1:{http}/readyz", 30, others[-1])
        print(  # noqa: T201
            f"网关就绪 gateway ready ({size.gateways}, {size.registry}): "
            f"mqtt 127.0.0.1:{ports['mqtt']}, metrics "
            + ", ".join(f"http://127.0.0.1:{p}/metrics" for p in ports["gateways_http"])
            + " — Ctrl-C 停止 / stops"
        )
        pay = subprocess.Popen(  # noqa: S603 - the sandbox payment provider, our own module
            [
                *(sys.executable, "-m", "gateway.payments.sandbox_app"),
                *("--port", str(ports["pay"]), "--merchant-id", "onecard-demo"),
                *("--key-file", str(paths.root / "payments.key")),
            ],
            env=env,
            stdout=(paths.root / "sandbox-pay.log").open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_ready(f"http://127.0.0.1:{ports['pay']}/healthz", 30, pay)
        web_log = (paths.root / "web.log").open("wb")
        web = subprocess.Popen(  # noqa: S603
            [str(bin_dir / "onecard"), "web", "--config", str(paths.config)],
            env=env,
            stdout=web_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_ready(f"http://127.0.0.1:{ports['web']}/healthz", 30, web)
        account = json.loads((paths.root / "demo-account.json").read_text())
        print(  # noqa: T201
            f"持卡人自助服务 cardholder portal: http://127.0.0.1:{ports['web']}/ — "
            f"演示账号 demo account {account['number']} / {account['password']}"
        )
        print(  # noqa: T201
            f"沙箱支付平台 sandbox payment provider: http://127.0.0.1:{ports['pay']}/ — "
            f"对账单 statement /statement?date=YYYY-MM-DD"
        )
        console = subprocess.Popen(  # noqa: S603
            [str(bin_dir / "onecard"), "console", "--config", str(paths.config)],
            env=env,
            stdout=(paths.root / "console.log").open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_ready(f"http://127.0.0.1:{ports['console']}/healthz", 30, console)
        operator = json.loads((paths.root / "demo-operator.json").read_text())
        print(  # noqa: T201
            f"智能卡中心操作台 operator console: http://127.0.0.1:{ports['console']}/ — "
            f"演示操作员 demo operator {operator['username']} / {operator['password']} "
            "(首次登录须修改密码 change it at the first login; 读卡器 reader: "
            f"onecard reader-agent --config {paths.config})"
        )
        fleet_cmd = [
            *(sys.executable, "-m", "simulators", "fleet"),
            *("--host", "127.0.0.1", "--port", str(ports["mqtt"])),
            *("--terminals", str(paths.terminals), "--cards", str(paths.cards)),
            *("--seed", str(seed), "--json", str(paths.root / "fleet-result.json")),
            *("--loss-per-minute", "6"),
        ]
        if duration is not None:
            fleet_cmd += ["--duration", str(duration)]
        else:
            fleet_cmd += ["--duration", str(10 * 365 * 86400)]
        if dashboard:
            fleet_cmd += [
                "--dashboard",
                "--metrics-url",
                f"http://127.0.0.1:{ports['http']}/metrics",
            ]
        fleet = subprocess.Popen(fleet_cmd, env=env, stdin=subprocess.DEVNULL)  # noqa: S603
        try:
            code = fleet.wait()
        except KeyboardInterrupt:
            code = _stop(fleet, signal.SIGINT, 60) or 0
    finally:
        _stop(fleet, signal.SIGINT, 60)
        _stop(console, signal.SIGTERM, 15)
        _stop(web, signal.SIGTERM, 15)
        _stop(pay, signal.SIGTERM, 10)
        for other in others:
            _stop(other, signal.SIGTERM, 30)
        _stop(gateway, signal.SIGTERM, 30)
        _stop(broker, signal.SIGTERM, 10)
    return code
