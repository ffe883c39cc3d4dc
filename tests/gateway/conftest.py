"""pcscd fixtures for the ``pcsc`` tests (real pcscd + vsmartcard vpcd, no mocks).

Behaviour (FIELD-NOTES "PC/SC with a virtual card"):

- pcscd is started by hand: ``pcscd --foreground --info --config DIR``, where DIR is a temporary
  reader.conf.d holding one vpcd entry on a free base port P (vpcd then opens "Virtual PCD 00 00"
  on P and "Virtual PCD 00 01" on P+1, listening on 0.0.0.0). Ready when its log says
  "daemon ready".
- Only one pcscd can run per mount namespace (it owns ``/run/pcscd/pcscd.comm`` and ignores
  ``PCSCLITE_CSOCK_NAME``). Before starting, the fixture stops a *stray* pcscd left behind by an
  earlier test run (recognised by our ``--config`` directory prefix in its command line). Any
  other running pcscd (a system one, a developer's) makes the fixture fail with a clear message,
  unless ``ONECARD_PCSC_KILL_STRAY=1`` allows stopping it too. Zombies are ignored.
- The daemon is session-scoped; tests may stop and restart it (:meth:`Pcscd.stop`,
  :meth:`Pcscd.start`); the function-scoped ``pcscd`` fixture makes sure it runs for each test.
  At the end of the session it is stopped with SIGTERM (SIGKILL after 5 s) and reaped.
- Its log goes to ``pcscd-N.log`` in the session's temp dir (N counts restarts);
  ``ONECARD_PCSCD_DEBUG=1`` makes it log at debug level with APDUs.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFIG_PREFIX = "onecard-pcscd-"
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READY_LINE = "daemon ready"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pick_base_port() -> int:
    """A base port P with P and P+1 free, below the Linux ephemeral range (32768+)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000, 2)
        if _port_free(port) and _port_free(port + 1):
            return port
    raise RuntimeError("no free port pair for vpcd")


def _running_pcscds() -> list[tuple[int, str]]:
    """(pid, cmdline) of every live pcscd in this namespace."""
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "pcscd":
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p != pid for p, _ in _running_pcscds()):
            return True
        time.sleep(0.05)
    return False


def stop_stray_pcscd() -> None:
    """Stop pcscds left by earlier runs (our config prefix), or refuse to touch foreign ones."""
    allow_any = os.environ.get("ONECARD_PCSC_KILL_STRAY") == "1"
    for pid, cmdline in _running_pcscds():
        if CONFIG_PREFIX not in cmdline and not allow_any:
            pytest.fail(
                f"a pcscd not started by the tests is running (pid {pid}: {cmdline!r}); only one "
                "pcscd can run per mount namespace. Stop it, or set ONECARD_PCSC_KILL_STRAY=1."
            )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)


class Pcscd:
    """A private pcscd with the vpcd driver on :attr:`base_port` and :attr:`base_port` + 1."""

    reader_names = ("Virtual PCD 00 00", "Virtual PCD 00 01")

    def __init__(self, workdir: Path, base_port: int) -> None:
        self.workdir = workdir
        self.base_port = base_port
        self.config_dir = workdir / "reader.conf.d"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{base_port:04X}\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            f"CHANNELID    0x{base_port:04X}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def ports(self) -> tuple[int, int]:
        return self.base_port, self.base_port + 1

    def port_of(self, reader: str) -> int:
        return self.base_port + self.reader_names.index(reader)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"pcscd-{self.starts}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        stop_stray_pcscd()
        self.starts += 1
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [_pcscd_binary(), "--foreground", *_log_flags(), "--config", str(self.config_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        output = self.log_path.read_text(errors="replace")
        self.stop()
        pytest.fail(f"pcscd did not become ready:\n{output}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop (SIGTERM by default) and reap; SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _log_flags() -> list[str]:
    """``--info`` prints "daemon ready"; ONECARD_PCSCD_DEBUG=1 adds debug and APDU logs."""
    if os.environ.get("ONECARD_PCSCD_DEBUG") == "1":
        return ["--debug", "--apdu"]
    return ["--info"]


def _pcscd_binary() -> str:
    found = shutil.which("pcscd") or (
        "/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None
    )
    if found is None or not VPCD_DRIVER.exists():
        pytest.fail(
            "pcscd or the vpcd driver is missing: run deploy/ci/install-pcsc.sh .venv "
            "(apt: pcscd libpcsclite-dev swig vsmartcard-vpcd pcsc-tools)"
        )
    return found


@pytest.fixture(scope="session")
def pcscd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    workdir = Path(tmp_path_factory.mktemp(CONFIG_PREFIX, numbered=True))
    daemon = Pcscd(workdir, _pick_base_port())
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def pcscd(pcscd_session: Pcscd) -> Pcscd:
    """The session's pcscd, (re)started if an earlier test stopped it."""
    pcscd_session.start()
    return pcscd_session
