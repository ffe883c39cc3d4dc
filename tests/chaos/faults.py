"""Faults the chaos scenarios inject, each one torn down by its context manager even on failure.

FIELD-NOTES ("Measured 2026-11-29"): ``kill -9`` works; network namespaces + veth + ``nft`` drop
rules give real partitions; ``tc netem`` does not load on these kernels. All of these need root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker import PrivateBroker

__all__ = [
    "Flooder",
    "FullDisk",
    "LockHolder",
    "Netns",
    "fault_tools_missing",
]

PREFIX = "occ"
_QUIET = logging.getLogger("onecard.chaos.flooder")
_QUIET.setLevel(
    logging.ERROR
)  # aiomqtt warns about every pending publish: that is the point  # onecard chaos: every namespace, interface and nft table we create


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def fault_tools_missing() -> list[str]:
    """What this machine lacks for the scenarios (root, ``ip``, ``nft``, tmpfs mounts)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    missing += [t for t in ("ip", "nft", "mount", "umount") if shutil.which(t) is None]
    return missing


class Netns:
    """A network namespace joined to the host by a veth pair (``10.231.N.1`` host side,
    ``10.231.N.2`` inside). :meth:`partition` drops every packet between the two ends with
    nftables rules inside the namespace; :meth:`heal` deletes them. :meth:`close` deletes the
    namespace (and with it the veth pair and the rules)."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or f"{os.getpid() % 100000}{random.randrange(100):02d}"
        self.name = f"{PREFIX}{tag}"
        self.host_if = f"{PREFIX}{tag}h"[:15]
        self.ns_if = f"{PREFIX}{tag}n"[:15]
        octet = random.randrange(1, 250)
        self.host_address = f"10.231.{octet}.1"
        self.ns_address = f"10.231.{octet}.2"
        self.partitioned = False
        self.created = False

    def __enter__(self) -> Self:
        try:
            _run("ip", "netns", "add", self.name)
            self.created = True
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run("ip", "-n", self.name, "addr", "add", f"{self.ns_address}/30", "dev", self.ns_if)
            _run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def partition(self) -> None:
        """Drop both directions, inside the namespace (no reset: TCP just goes silent)."""
        rules = (
            f"table inet {PREFIX}chaos {{\n"
            "  chain in { type filter hook input priority 0; policy accept; "
            f"ip saddr {self.host_address} drop; }}\n"
            "  chain out { type filter hook output priority 0; policy accept; "
            f"ip daddr {self.host_address} drop; }}\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.partitioned = True

    def heal(self) -> None:
        if self.partitioned:
            _run(
                "ip", "netns", "exec", self.name, "nft", "delete", "table", "inet", f"{PREFIX}chaos"
            )
            self.partitioned = False

    def close(self) -> None:
        """Delete the namespace and the host end of the pair; safe to call twice."""
        if self.created:
            _run("ip", "netns", "del", self.name, check=False)
            self.created = False
        _run("ip", "link", "del", self.host_if, check=False)
        self.partitioned = False

    @staticmethod
    def leftovers() -> list[str]:
        """Namespaces named like ours that still exist (a test asserts there are none)."""
        out = _run("ip", "netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


class FullDisk:
    """A small tmpfs for the registry, and a filler file that takes every free byte of it.

    :meth:`fill` writes zeros until ``ENOSPC``; :meth:`free` deletes the filler. :meth:`close`
    unmounts (lazily if something still holds a file) and removes the mount point."""

    def __init__(self, mountpoint: Path, size_mib: int = 64) -> None:
        self.mountpoint = mountpoint
        self.size_mib = size_mib
        self.filler = mountpoint / "filler.bin"
        self.mounted = False

    def __enter__(self) -> Self:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        _run(
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={self.size_mib}m,mode=0700",
            "tmpfs",
            str(self.mountpoint),
        )
        self.mounted = True
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Take all free space (unbuffered writes until ``ENOSPC``); returns the bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 12, 1):
                piece = b"\0" * size
                while True:
                    try:
                        written += os.write(fd, piece)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def close(self) -> None:
        if self.mounted:
            done = _run("umount", str(self.mountpoint), check=False)
            if done.returncode != 0:
                _run("umount", "-l", str(self.mountpoint), check=False)
            self.mounted = False
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()


_LOCK_SCRIPT = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


class LockHolder:
    """A counter transaction that holds the SQLite write lock: ``BEGIN IMMEDIATE`` in another
    process, ``hold_s`` seconds, then ``COMMIT``."""

    def __init__(self, db: Path, hold_s: float) -> None:
        self.db = db
        self.hold_s = hold_s
        self.proc: subprocess.Popen[str] | None = None
        self.locked_at: float | None = None
        self.released_at: float | None = None

    async def hold(self) -> None:
        """Take the lock (returns once it is held), hold it, release it; all in one call."""
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; reads go to a thread
            [sys.executable, "-c", _LOCK_SCRIPT, str(self.db), str(self.hold_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            out = self.proc.stdout
            assert out is not None
            line = await asyncio.to_thread(out.readline)
            if line.strip() != "locked":
                raise RuntimeError(f"the lock holder did not get the lock: {line!r}")
            self.locked_at = time.monotonic()
            line = await asyncio.to_thread(out.readline)
            self.released_at = time.monotonic()
            await asyncio.to_thread(self.proc.wait, 10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


class Flooder:
    """One terminal (its real credentials) publishing on its own ``req/`` topic as fast as the
    broker takes it: valid purchases, garbage and big payloads (up to ``big_mib`` MiB), with
    ``in_flight`` QoS 1 publishes outstanding; one in ``over_every`` is ``over_mib`` MiB, above
    the broker's ``max_packet_size`` (8 MiB as rendered), so the broker should disconnect it.
    Reconnects when the broker drops it.

    Safety valve for the machine: while the broker's resident memory is above ``rss_cap_mib``
    (it queues for the gateway what the gateway has not taken), big payloads pause."""

    def __init__(
        self,
        broker: PrivateBroker,
        terminal_id: str,
        password: str,
        *,
        big_mib: float = 4.0,
        big_every: int = 20,
        over_mib: float = 9.0,
        over_every: int = 2000,
        in_flight: int = 32,
        rss_cap_mib: float = 2048.0,
    ) -> None:
        self.broker = broker
        self.tid = terminal_id
        self.password = password
        self.big_bytes = int(big_mib * (1 << 20))
        self.big_every = big_every
        self.over_bytes = int(over_mib * (1 << 20))
        self.over_every = over_every
        self.over_sent = 0
        self.in_flight = in_flight
        self.rss_cap_mib = rss_cap_mib
        self.sent = 0
        self.sent_bytes = 0
        self.big_sent = 0
        self.disconnects = 0
        self.peak_rss_mib = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random(99)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flooder")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await self._task
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    def _payload(self, n: int) -> bytes:
        if self.over_every and n % self.over_every == 0 and self._rss() < self.rss_cap_mib:
            self.over_sent += 1  # above the broker's max_packet_size: it must drop us
            return b'{"v":1,"request_id":"flood-%d","data":{"card":"' % n + b"B" * self.over_bytes
        kind = n % self.big_every
        if kind == 0 and self._rss() < self.rss_cap_mib:
            size = self._rng.randint(self.big_bytes // 4, self.big_bytes)
            head = b'{"v":1,"request_id":"flood-%d","data":{"card":"' % n
            return head + b"A" * size + b'","amount_fen":1}}'
        if kind % 3 == 1:
            return b"\xff\x00not json" * self._rng.randint(1, 100)
        return (
            b'{"v":1,"request_id":"flood-%d","data":{"card":"04FFFFFFFFFF%02X","amount_fen":1}}'
            % (n, n % 256)
        )

    def _rss(self) -> float:
        rss = getattr(self.broker, "rss_mib", lambda: 0.0)()
        self.peak_rss_mib = max(self.peak_rss_mib, rss)
        return float(rss)

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    username=self.tid,
                    password=self.password,
                    identifier=self.tid,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    max_queued_outgoing_messages=self.in_flight * 4,
                    logger=_QUIET,
                    timeout=30,
                ) as client:
                    slots = asyncio.Semaphore(self.in_flight)
                    lost = asyncio.Event()
                    pending: set[asyncio.Task[None]] = set()

                    async def one(
                        body: bytes,
                        c: aiomqtt.Client = client,
                        lost: asyncio.Event = lost,
                        slots: asyncio.Semaphore = slots,
                    ) -> None:
                        try:
                            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                            props.ResponseTopic = f"onecard/v1/t/{self.tid}/resp/purchase"
                            await c.publish(
                                f"onecard/v1/t/{self.tid}/req/purchase",
                                body,
                                qos=1,
                                properties=props,
                                timeout=1,
                            )
                            self.sent += 1
                            self.sent_bytes += len(body)
                            if 1 << 20 < len(body) < self.over_bytes:
                                self.big_sent += 1
                        except (aiomqtt.MqttError, TimeoutError):
                            lost.set()  # the broker dropped us: reconnect
                        finally:
                            slots.release()

                    while not (self._stop.is_set() or lost.is_set()):
                        await slots.acquire()
                        n += 1
                        task = asyncio.create_task(one(self._payload(n)))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    for task in list(pending):
                        task.cancel()
                    if lost.is_set():
                        raise aiomqtt.MqttError("flooder: connection lost")
            except aiomqtt.MqttError:
                self.disconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.2)
