"""A private campus for chaos runs, built from the product's real parts.

- the registry: a fresh SQLite file seeded through the services (:func:`gateway.demo.seed`);
- the broker: :class:`ChaosBroker`, a :class:`tests.broker.PrivateBroker` with the production
  files (persistence on, as ``onecard broker render`` writes it) and, for the partition scenario,
  a second listener on the host end of a veth pair;
- the gateway: ``onecard serve --config`` as its own process (:class:`GatewayProcess`), so it
  can be killed with SIGKILL and started again, optionally inside a network namespace;
- the terminals: :mod:`simulators.terminals` objects in this process, each with its own MQTT
  session; every result they report is recorded with its time (:class:`Recorder`);
- :class:`Load`: POS terminals selling in a closed loop; :class:`StatusWatcher`: what the
  retained ``onecard/v1/gateway/status`` said, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

from gateway.demo.seed import seed_campus
from gateway.mqtt import broker_files as bf
from gateway.services.base import Actor, Clock, Context, FixedClock, SystemClock
from gateway.services.center import CardCenter
from protocol.types import Permission
from protocol.wire import GATEWAY_STATUS_TOPIC, TerminalKind
from simulators.terminals import Credentials, Mode, Pos, TapResult, Terminal, make_terminal
from storage.sql import SqlRegistry
from tests.broker import PrivateBroker, free_port

__all__ = [
    "ONECARD",
    "ChaosBroker",
    "GatewayProcess",
    "Load",
    "Recorder",
    "ShiftedClock",
    "Site",
    "SiteConfig",
    "StatusWatcher",
]

log = logging.getLogger("onecard.chaos")

ONECARD = str(Path(sys.executable).parent / "onecard")
GATEWAY_USER = "gateway"
MONITOR_USER = "monitor"
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


# --------------------------------------------------------------------------- broker


class ChaosBroker(PrivateBroker):
    """The private broker, plus an optional second listener (``address``, ``port``) for a
    gateway in another network namespace. The global options (password file, ACL, limits)
    apply to every listener (``per_listener_settings false``)."""

    def __init__(self, *args: Any, extra_listener: tuple[str, int] | None = None, **kw: Any):
        self.extra_listener = extra_listener
        super().__init__(*args, **kw)

    def write_files(self) -> None:
        super().write_files()
        if self.extra_listener is not None:
            address, port = self.extra_listener
            with self.conf_path.open("a") as conf:
                conf.write(
                    f"\n# chaos: the gateway's network namespace\nlistener {port} {address}\n"
                    "use_username_as_clientid true\n"
                )

    def rss_mib(self) -> float:
        """Resident memory of the broker process (0 when it is not running)."""
        if not self.running:
            return 0.0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return 0.0
        return 0.0


# --------------------------------------------------------------------------- gateway


class GatewayProcess:
    """``onecard serve`` as operators run it: a TOML file, SIGKILL-able, restartable."""

    def __init__(
        self,
        directory: Path,
        *,
        db: Path,
        mqtt_host: str,
        mqtt_port: int,
        password: str,
        keepalive_s: int,
        netns: str | None = None,
        http_host: str = "127.0.0.1",
    ) -> None:
        self.directory = directory
        self.netns = netns
        self.http_host = http_host
        self.http_port = free_port()
        self.config_path = directory / "onecard.toml"
        self.log_path = directory / "gateway.log"
        self.config_path.write_text(
            f'db = "{db}"\nlog_level = "WARNING"\nscheduler_interval_s = 5.0\n'
            f'[mqtt]\nhost = "{mqtt_host}"\nport = {mqtt_port}\n'
            f'username = "{GATEWAY_USER}"\npassword = "{password}"\nkeepalive_s = {keepalive_s}\n'
            f'[http]\nhost = "{"0.0.0.0" if netns else "127.0.0.1"}"\nport = {self.http_port}\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exit_codes: list[int] = []

    @property
    def url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait for ``/readyz``; returns the seconds it took."""
        if self.alive:
            return 0.0
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")}
        argv = [ONECARD, "serve", "--config", str(self.config_path)]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with self.log_path.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1
        self.wait_ready(timeout)
        return time.monotonic() - started

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                self._reaped()
                raise RuntimeError(f"the gateway exited at start-up:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"gateway not ready after {timeout} s:\n{self.log_tail()}")

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=2) as resp:
                return str(resp.read().decode())
        except (OSError, urllib.error.URLError):
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reaped()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: drain, retained ``offline``), SIGKILL if it hangs."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return self._reaped()

    def _reaped(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = proc.wait(10)
        self.exit_codes.append(code)
        return code

    def exited(self) -> int | None:
        """The exit code if the process ended on its own (and reap it), else None."""
        if self.proc is not None and self.proc.poll() is not None:
            return self._reaped()
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- terminals


class ShiftedClock:
    """A terminal clock ``offset_s`` away from real time (both wall and monotonic)."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + int(self.offset_s * 1000)


@dataclass(slots=True)
class Recorder:
    """Every result every terminal reported, with the monotonic time it was reported."""

    results: list[tuple[float, TapResult]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, result: TapResult) -> None:
        self.results.append((time.monotonic(), result))

    def between(self, start: float, end: float) -> list[tuple[float, TapResult]]:
        return [(t, r) for t, r in self.results if start <= t < end]


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """How big the campus is and how the terminals behave."""

    students: int = 200
    #: Terminals seeded (``fleet_plan``: 60 % POS, 20 % doors, 15 % water, 5 % kiosks).
    terminals: int = 40
    #: Terminals started (all kinds, in seeding order; the POS among them carry the load).
    started: int | None = None
    keepalive_s: int = 5
    request_timeout_s: float = 2.0
    retries: int = 1
    heartbeat_s: float = 10.0
    registry_dir: Path | None = None
    netns: str | None = None
    #: (address, port) of the broker's listener for a gateway in ``netns``.
    gateway_listener: tuple[str, int] | None = None
    netns_address: str | None = None


class Site:
    """Registry + broker + gateway process + terminals; ``async with Site(...)``."""

    def __init__(self, root: Path, config: SiteConfig, *, seed: int = 1) -> None:
        self.root = root
        self.config = config
        self.rng = random.Random(seed)
        root.mkdir(parents=True, exist_ok=True)
        self.db = (config.registry_dir or root) / "onecard.sqlite3"
        self.recorder = Recorder()
        self.terminals: list[Terminal] = []
        self.creds: list[Credentials] = []
        self.cards: list[dict[str, Any]] = []
        self.gateway_password = bf.new_password()
        self.broker: ChaosBroker | None = None
        self.gateway: GatewayProcess | None = None

    # --- set-up --------------------------------------------------------------------------
    async def _seed(self) -> None:
        registry = await SqlRegistry.open(self.db, migrate=True)
        try:
            center = CardCenter.build(Context(registry=registry, clock=SystemClock()))
            actor = Actor(name="chaos-seed", permissions=frozenset(Permission))
            seeded = await seed_campus(
                center,
                actor,
                students=self.config.students,
                staff=0,
                visitors=0,
                terminals=self.config.terminals,
                password_hash=bf.mosquitto_password_hash,
                new_password=bf.new_password,
            )
        finally:
            await registry.close()
        self.cards = seeded.cards
        self.creds = [Credentials.from_dict(t) for t in seeded.terminals]

    async def __aenter__(self) -> Self:
        try:
            await self._seed()
            users = {GATEWAY_USER: self.gateway_password, MONITOR_USER: bf.new_password()}
            users.update({c.id: c.password for c in self.creds})
            self.broker = ChaosBroker(
                self.root / "broker",
                users=users,
                gateway_users=(GATEWAY_USER,),
                monitor_users=(MONITOR_USER,),
                persistence=True,
                extra_listener=self.config.gateway_listener,
            )
            self.broker.start()
            host, port = self.config.gateway_listener or (self.broker.host, self.broker.port)
            self.gateway = GatewayProcess(
                self.root,
                db=self.db,
                mqtt_host=host,
                mqtt_port=port,
                password=self.gateway_password,
                keepalive_s=self.config.keepalive_s,
                netns=self.config.netns,
                http_host=self.config.netns_address or "127.0.0.1",
            )
            await asyncio.to_thread(self.gateway.start)
            chosen = self.creds[: self.config.started or len(self.creds)]
            for creds in chosen:
                await self.add_terminal(creds)
            await self.wait_synced(self.terminals, 30)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def add_terminal(
        self, creds: Credentials, *, clock: Clock | Any = None, start: bool = True
    ) -> Terminal:
        assert self.broker is not None
        terminal = make_terminal(
            creds,
            self.broker.host,
            self.broker.port,
            state_dir=self.root / "terminal-state",
            request_timeout_s=self.config.request_timeout_s,
            retries=self.config.retries,
            heartbeat_interval_s=self.config.heartbeat_s,
            seed=self.rng.randrange(2**32),
            observer=self.recorder.record,
            clock=clock,
        )
        self.terminals.append(terminal)
        if start:
            await terminal.start()
        return terminal

    @staticmethod
    async def wait_synced(terminals: Iterable[Terminal], within_s: float) -> None:
        await asyncio.gather(*(t.wait_synced(within_s) for t in terminals))

    async def close(self) -> None:
        for terminal in self.terminals:
            with contextlib.suppress(Exception):
                await terminal.stop()
        if self.gateway is not None:
            await asyncio.to_thread(self.gateway.stop)
        if self.broker is not None:
            self.broker.stop()

    # --- views ---------------------------------------------------------------------------
    @property
    def pos(self) -> list[Pos]:
        return [t for t in self.terminals if isinstance(t, Pos)]

    def unused_pos(self) -> list[Credentials]:
        started = {t.id for t in self.terminals}
        return [c for c in self.creds if c.kind is TerminalKind.POS and c.id not in started]

    @property
    def card_uids(self) -> list[str]:
        return [str(c["uid"]).upper() for c in self.cards]

    # --- the counter ---------------------------------------------------------------------
    async def report_loss(
        self, serial: str, *, presented_id: str, at: datetime | None = None
    ) -> None:
        """LOSS-1 at the counter (the holder shows their student number), on the registry the
        gateway uses, through another connection."""
        registry = await SqlRegistry.open(self.db)
        try:
            clock = FixedClock(at) if at is not None else SystemClock()
            center = CardCenter.build(Context(registry=registry, clock=clock))
            actor = Actor(name="chaos-counter", permissions=frozenset(Permission))
            await center.cards.report_loss(actor, serial, presented_id=presented_id)
        finally:
            await registry.close()

    async def settle(self, within_s: float = 60.0) -> list[str]:
        """Wait until no terminal has a request in doubt or an offline sale not uploaded;
        returns the terminals still unsettled after ``within_s``."""
        deadline = time.monotonic() + within_s

        def unsettled() -> list[str]:
            out = [t.id for t in self.terminals if t.in_doubt]
            out += [p.id for p in self.pos if p.backlog and p.id not in out]
            return out

        while time.monotonic() < deadline:
            if not unsettled():
                return []
            # nudge idle terminals (hello, retries, upload), also those in a sync back-off
            # after the fault answered their hello `unavailable`
            for terminal in self.terminals:
                if terminal.in_doubt or getattr(terminal, "backlog", None):
                    terminal._poke(sync=True)
            await asyncio.sleep(0.25)
        return unsettled()


# --------------------------------------------------------------------------- load


class Load:
    """POS terminals selling in a closed loop: ``think_s`` between a result and the next tap,
    ``offline_think_s`` after a sale decided offline (customers queue at the speed of the till,
    not of the gateway: an offline POS at 20 sales/s would pile up backlogs no canteen has)."""

    def __init__(
        self,
        terminals: list[Pos],
        cards: list[str],
        *,
        think_s: float = 0.05,
        offline_think_s: float = 1.0,
        amounts: tuple[int, int] = (10, 90),
        seed: int = 7,
    ) -> None:
        self.terminals = terminals
        self.cards = cards
        self.think_s = think_s
        self.offline_think_s = offline_think_s
        self.amounts = amounts
        self.rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.crashes: list[str] = []

    async def _loop(self, pos: Pos, rng: random.Random) -> None:
        while not self._stop.is_set():
            card = rng.choice(self.cards)
            think = self.think_s
            try:
                result = await pos.sale(card, rng.randint(*self.amounts))
                if result.mode is Mode.OFFLINE:
                    think = self.offline_think_s
            except Exception as exc:  # a simulator bug must show, not end the run
                self.crashes.append(f"{pos.id}: {type(exc).__name__}: {exc}")
                think = 0.5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), think * (0.5 + rng.random()))

    def start(self) -> None:
        for pos in self.terminals:
            rng = random.Random(self.rng.randrange(2**32))
            self._tasks.append(asyncio.create_task(self._loop(pos, rng), name=f"load-{pos.id}"))

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
        self._tasks.clear()


# --------------------------------------------------------------------------- gateway status


class StatusWatcher:
    """Subscribes (as the read-only ``monitor`` account) to the retained gateway status and
    records every state it is told, reconnecting whenever the broker goes away."""

    def __init__(self, broker: PrivateBroker) -> None:
        self.broker = broker
        self.events: list[tuple[float, str]] = []
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str | None:
        return self.events[-1][1] if self.events else None

    def state_at(self, at: float) -> str | None:
        state = None
        for t, s in self.events:
            if t > at:
                break
            state = s
        return state

    def first(self, state: str, after: float) -> float | None:
        return next((t for t, s in self.events if t >= after and s == state), None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="status-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    username=MONITOR_USER,
                    password=self.broker.password(MONITOR_USER),
                    identifier=MONITOR_USER,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    socket_options=NODELAY,
                    keepalive=5,
                ) as client:
                    await client.subscribe(GATEWAY_STATUS_TOPIC, qos=1)
                    self.connected = True
                    async for message in client.messages:
                        self._seen(message.payload)
            except aiomqtt.MqttError:
                self.connected = False
                await asyncio.sleep(0.2)

    def _seen(self, payload: Any) -> None:
        state = "absent"
        if isinstance(payload, bytes | bytearray) and payload:
            try:
                state = str(json.loads(payload).get("state", "?"))
            except (ValueError, AttributeError):
                state = "garbled"
        self.events.append((time.monotonic(), state))


# --------------------------------------------------------------------------- timeline


def online(result: TapResult) -> bool:
    """The gateway answered (approved or declined), now or late."""
    return result.mode in (Mode.ONLINE, Mode.LATE)


def timed(
    results: Iterable[tuple[float, TapResult]], keep: Callable[[TapResult], bool]
) -> list[float]:
    return [t for t, r in results if keep(r)]
